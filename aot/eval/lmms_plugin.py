"""The lmms-eval (0.7) models ``aot_llava_onevision`` (LLaVA-OneVision / LLaVA-Video),
``aot_qwen2_5_vl`` (Qwen2.5-VL), ``aot_qwen3_vl`` (Qwen3-VL, dense and MoE) and ``aot_qwen3_5``
(Qwen3.5, dense and MoE) through transformers, patched with any registered compression method. One
model class per family of ``aot.families`` (the table names them), made from that table.

    python -m lmms_eval --model aot_llava_onevision \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,method=aot,retention=0.1,frames=32 \\
        --tasks mvbench --batch_size 4 --log_samples --output_path logs/
    python -m lmms_eval --model aot_qwen2_5_vl \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=aot,retention=0.1,frames=32 \\
        --tasks mvbench --batch_size 4 --log_samples --output_path logs/

All load with ``aot.run.load`` (the checkpoint's class and its own processor and chat template);
each refuses a checkpoint of another family, naming the model to use.

Registered through the ``lmms_eval.models`` entry-point group (``aot.eval.lmms_entry``; lmms-eval's
``ModelRegistryV2.load_entrypoint_manifests``) and, deprecated but still read by lmms-eval 0.7,
``LMMS_EVAL_PLUGINS=aot`` (``aot.models.AVAILABLE_MODELS``).

Model args: ``pretrained`` (hub id, local folder or, for ``aot_llava_onevision``, ``aot:dinov2-smollm2``),
``method`` (a registry name, or ``vanilla`` for the unpatched model), ``frames`` (sampled with
lmms-eval's rule; alias ``max_frames_num``), ``local_layer``, ``global_layer`` (default: LLaVA 5, -2;
the Qwen families their adapter's rule, ``aot.families``), ``dtype``, ``device``,
``threads``, ``conv_template``, and every field of the method's config by name
(``retention=0.1,n_iters=50,windows=3x3,tol=none``), parsed to the field's type; an unknown name is
an error listing the fields. LLaVA only: ``video_layout`` (``onevision`` | ``llava-video``),
``positions`` (the Qwen families keep their own layout and 3-D M-RoPE ids; other values are refused).
Qwen3.5 refuses the in-LLM methods (FastV, PDrop) at start, saying why.

Prompts: ``aot_llava_onevision`` with ``conv_template=qwen_1_5`` (its default) builds the prompt
lmms-eval's own ``llava_onevision`` model builds with the LLaVA repo's ``qwen_1_5`` conversation, the
paper's protocol: a system turn "You are a helpful assistant.", then the video placeholder and the
question in the user turn (``qwen_1_5_prompt``). ``conv_template=chat_template`` uses the
checkpoint's own chat template instead (the llava-hf checkpoints' has no system turn); it is the only
choice of the Qwen models, as lmms-eval's own ``qwen2_5_vl`` / ``qwen3_vl`` models use the processor's
chat template. The stand-in builds its own prompt.

``loglikelihood`` (multiple-choice-perplexity tasks such as ``egoschema_subset_mcppl``) scores a
continuation after the prompt, with the video compressed, and returns lmms-eval's
``llava_onevision`` convention: (mean negative log-likelihood per continuation token, whether
greedy decoding gives the continuation). Lower is more likely; those tasks pick the lowest.

Every answer is returned as a ``GenerationResult`` whose token counts carry, besides the prompt
and output lengths, an ``aot`` entry: method, full config, frames, layout and the visual tokens the
LLM received for that sample (the processor's placeholder count for ``vanilla``; for the in-LLM
methods FastV and PDrop, the tokens left after their last pruning layer, as ``aot eval`` and ``aot
run``'s ``video_tokens_out``), newlines excluded and counted in ``newline_tokens``
(``aot.efficiency``, docs/efficiency.md), and ``visual_tokens_in`` (the processor's placeholders, the tokens that
enter the LLM); with ``--log_samples`` it is written into each sample's record,
beside its score (``token_counts[0].aot``). In-LLM methods need the same number of video tokens in
every row of a ``generate`` call: a batch mixing counts runs as sub-batches of equal count. The full
config is also logged once at start.

Data parallel: ``accelerate launch --num_processes N -m lmms_eval ...``: each process loads the
model on its own device (``cuda:LOCAL_RANK``, or the CPU without CUDA) and answers its shard.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger

from ..families import FAMILIES
from ..efficiency import visual_tokens_text
from .engine import collate, config_dict, generate_batch, method_config, pad_token_id, sub_batches

__all__ = [f.lmms_class for f in FAMILIES.values()] + ["AOTTokenCounts"]


@dataclass
class AOTTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus what the compression did (written with the sample)."""

    aot: dict | None = None

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.aot is not None:
            d["aot"] = self.aot
        return d


CONV_TEMPLATES = ("qwen_1_5", "chat_template")
QWEN_1_5_SYSTEM = "You are a helpful assistant."
QWEN_1_5_END = "<|im_end|>\n"  # closes every turn, the scored answer's too


def qwen_1_5_prompt(context: str, placeholder: str = "<video>") -> str:
    """The LLaVA repo's ``qwen_1_5`` conversation (ChatML with a system turn) for one video and
    ``context``, as lmms-eval's ``llava_onevision`` builds it: the visual placeholder on its own line
    before the text, the assistant turn open. LLaVA's ``<image>`` becomes the HF ``<video>`` token."""
    return (f"<|im_start|>system\n{QWEN_1_5_SYSTEM}{QWEN_1_5_END}"
            f"<|im_start|>user\n{placeholder}\n{context}{QWEN_1_5_END}<|im_start|>assistant\n")


def continuation_nll(model, inputs: dict, n_tokens: int) -> tuple[float, bool]:
    """(mean -log p, greedy) of the last ``n_tokens`` of ``inputs["input_ids"]`` given everything
    before them, from one forward pass (patched or not: compression shortens the video, never the
    text after it, so the continuation's logits are the last ones)."""
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if inputs.get("pixel_values_videos") is not None:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    target = inputs["input_ids"][0, -n_tokens:]
    with torch.inference_mode():
        logits = model(**inputs).logits[0, -n_tokens - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)
    return float(-logp.mean()), bool((logits.argmax(-1) == target).all())


@dataclass
class LoglikelihoodResult(GenerationResult):
    """One loglikelihood answer: unpacks as lmms-eval's (value, greedy) pair, and is a
    ``GenerationResult`` so that lmms-eval 0.7.3's evaluator keeps the pair (it turns any other
    non-string output, a plain tuple included, into its ``str``, which its mc-ppl scoring cannot
    read) and logs the token counts, the ``aot`` entry included, with the sample."""

    def __iter__(self):
        return iter(self.text)

    def __getitem__(self, i):
        return self.text[i]

    def __len__(self) -> int:
        return len(self.text)


class _AOTVideoLMM(lmms):
    """What every plugin model shares; a subclass names itself (``NAME``) and its family (``FAMILY``,
    a key of ``aot.families.FAMILIES``)."""

    is_simple = True
    NAME = ""
    FAMILY = ""
    CONV_TEMPLATES: tuple = ()  # the first is the default

    def __init__(self, pretrained: str, method: str = "aot", frames: int = 32, max_frames_num: int | None = None,
                 video_layout: str = "onevision", positions: str = "contiguous", local_layer: int | None = None,
                 global_layer: int | None = None, dtype: str = "auto", device: str | None = None, batch_size=1,
                 max_batch_size=None, threads: int | None = None, conv_template: str | None = None,
                 **config_fields: Any) -> None:
        super().__init__()
        from accelerate import Accelerator

        from ..checks import plugin_layers, plugin_preflight
        from ..families import family_options, get, patch_options
        from ..run import STANDIN, _dtype, load

        self.family = get(self.FAMILY)

        plugin_preflight(self.NAME, pretrained=pretrained, frames=frames, max_frames_num=max_frames_num,
                         threads=threads, dtype=dtype, device=device, local_layer=local_layer,
                         global_layer=global_layer, standin=STANDIN)  # one-line errors, before any load
        conv_template = self.CONV_TEMPLATES[0] if conv_template is None else conv_template
        if conv_template not in self.CONV_TEMPLATES:
            raise ValueError(f"{self.NAME}: conv_template must be one of {', '.join(self.CONV_TEMPLATES)}, "
                             f"got {conv_template!r}")
        self.conv_template = conv_template
        self._paper_prompt = conv_template == "qwen_1_5" and str(pretrained) != STANDIN

        self.method_name = str(method)
        # every config field by name; retention too (None: the method's own default)
        self._method, self._config = method_config(self.method_name, config_fields.pop("retention", None),
                                                   config_fields)
        self.frames = int(max_frames_num if max_frames_num is not None else frames)
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if video_layout not in ("onevision", "llava-video"):
            raise ValueError(f"video_layout must be onevision or llava-video, got {video_layout!r}")
        if positions not in ("contiguous", "original"):
            raise ValueError(f"positions must be contiguous or original, got {positions!r}")
        if self._method is None and (video_layout != "onevision" or positions != "contiguous"):
            raise ValueError("method=vanilla runs the unpatched model: video_layout and positions need a method "
                             "(use e.g. method=aot,retention=1.0 for LLaVA-Video's layout uncompressed)")
        self.video_layout, self.positions = video_layout, positions
        default = self.family.default_layers
        if default is not None:  # a fixed default (LLaVA 5, -2): either layer may be given alone
            local_layer = default[0] if local_layer is None else local_layer
            global_layer = default[1] if global_layer is None else global_layer
        if (local_layer is None) != (global_layer is None):
            raise ValueError(f"{self.NAME}: give both local_layer and global_layer, or neither (the model's default)")
        self.layers = None if local_layer is None else (int(local_layer), int(global_layer))
        bs = str(batch_size)
        if not bs.isdigit() or int(bs) < 1:
            raise ValueError(f"batch_size must be an int >= 1 (no 'auto'), got {batch_size!r}")
        self.batch_size_per_gpu = int(bs)
        if threads is not None:
            torch.set_num_threads(int(threads))

        accelerator = Accelerator()
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            dev = f"cuda:{accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        else:
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._rank, self._world_size = 0, 1
        self._device = torch.device(dev)
        self.pretrained = str(pretrained)
        self._check_family()
        plugin_layers(self.NAME, pretrained=pretrained, local_layer=local_layer, global_layer=global_layer,
                      standin=STANDIN)  # the tower's depth from the config, before the weights
        family_options(self.FAMILY, video_layout=video_layout, positions=positions, layers=self.layers)  # pre-load
        self._check_stage()
        self._model, self._make_inputs, self._decode = load(self.pretrained, dtype=_dtype(dtype, dev), device=dev,
                                                            family=self.FAMILY)
        self._pad = pad_token_id(self._model)
        self.config_json = config_dict(self._config)
        options = patch_options(self._model, video_layout=video_layout, positions=positions, layers=self.layers)
        self._options = options
        if self._method is not None:  # layers and config checked now, not at the first batch
            from ..models.patch import patch, unpatch

            patch(self._model, self._config, method=self._method.name, **options)
            unpatch(self._model)
        logger.info(f"{self.NAME}: {self.pretrained} ({type(self._model).__name__}), method {self.method_name}, "
                    f"frames {self.frames}, "
                    f"{f'layout {video_layout}, positions {positions}, ' if self.family.layout_options else ''}layers "
                    f"{self.layers or 'model default'}, conv_template {conv_template}, "
                    f"config {json.dumps(self.config_json)}, "
                    f"device {dev}, rank {self._rank}/{self._world_size}")

    def _check_family(self) -> None:
        """A checkpoint of another family is refused before its weights load, naming the model to use."""
        from ..families import LLAVA
        from ..run import STANDIN, _checkpoint_family

        found = LLAVA if self.pretrained == STANDIN else _checkpoint_family(self.pretrained, None)
        if found != self.FAMILY:
            other = FAMILIES[found]
            raise ValueError(f"pretrained={self.pretrained} is a {other.label} checkpoint, which {self.NAME} "
                             f"does not run; use --model {other.lmms_model}")

    def _check_stage(self) -> None:
        """A method the family refuses (Qwen3.5: in-LLM pruning) fails before the weights load."""
        from ..families import refusal

        why = None if self._method is None else refusal(self.family, self._method.stage)
        if why is not None:
            raise ValueError(f"{self.NAME}: method {self.method_name} prunes inside the language model, which "
                             f"{self.family.label} does not allow: {why}")

    # lmms-eval's accessors
    @property
    def model(self):
        return self._model

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def _summary(self, visual: int, visual_in: int, last: dict | None = None) -> dict:
        """The ``aot`` entry of a sample: ``visual`` video tokens the LLM received, newlines counted apart
        (``aot.efficiency``: ``visual_tokens`` + ``newline_tokens``; ``last``: the adapter's report)."""
        from ..efficiency import newline_tokens

        out = {"method": self.method_name, "config": self.config_json, "frames": self.frames}
        if self.family.layout_options:  # the Qwen families have one layout and their own positions
            out.update(video_layout=self.video_layout, positions=self.positions)
        nl = newline_tokens(self.FAMILY, last, visual)
        return {**out, "visual_tokens": visual - nl, "newline_tokens": nl, "visual_tokens_in": visual_in}

    def _prepare(self, request) -> dict:
        return self._inputs(self._frames(request), request.args[0])

    def _prompt(self, context: str) -> str | None:
        """The whole prompt text for ``context`` (None: the stand-in builds its own)."""
        if self._paper_prompt:
            return qwen_1_5_prompt(context)
        prompt_text = getattr(self._make_inputs, "prompt_text", None)
        return prompt_text(context) if prompt_text is not None else None

    def _inputs(self, clip, context: str, continuation: str | None = None) -> dict:
        """Processor inputs for ``clip`` (``aot.video.VideoFrames``) and ``context`` (+ ``continuation``)."""
        prompt = self._prompt(context)
        if prompt is None and continuation is None:
            return self._make_inputs(clip.frames, context, clip)
        if continuation is None:
            return self._make_inputs(clip.frames, context, clip, prompt=prompt)
        if prompt is None:
            raise NotImplementedError(f"loglikelihood needs a checkpoint with a processor, not {self.pretrained}")
        end = QWEN_1_5_END if self._paper_prompt else ""
        return self._make_inputs(clip.frames, context, clip, prompt=prompt + continuation + end)

    def _frames(self, request):
        """The request's one video, sampled (``aot.video.VideoFrames``)."""
        from ..video import read_frames

        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        flat = []
        for v in visuals if isinstance(visuals, (list, tuple)) else [visuals]:
            flat.extend(v if isinstance(v, (list, tuple)) else [v])
        videos = [v for v in flat if isinstance(v, str)]
        if len(videos) != 1 or len(flat) != 1:
            kinds = ", ".join(sorted({type(v).__name__ for v in flat})) or "nothing"
            raise NotImplementedError(f"{self.NAME} answers questions about one video (a path); "
                                      f"{task} doc {doc_id} gives {len(flat)} visual(s) ({kinds})")
        clip = read_frames(videos[0], self.frames)
        if clip.damage:  # e.g. damaged packets the decoder concealed or dropped
            logger.warning(f"{self.NAME}: {videos[0]}: {clip.damage} ({task} doc {doc_id})")
        return clip

    @staticmethod
    def _gen_kwargs(raw: dict) -> tuple[dict, list[str]]:
        kw = dict(raw)
        until = kw.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        do_sample = bool(kw.get("do_sample", False)) or float(kw.get("temperature", 0) or 0) > 0
        gen = {"max_new_tokens": int(kw.get("max_new_tokens", 1024)), "do_sample": do_sample,
               "num_beams": int(kw.get("num_beams", 1) or 1)}
        if do_sample:
            gen["temperature"] = float(kw.get("temperature", 1.0))
            if kw.get("top_p") is not None:
                gen["top_p"] = float(kw["top_p"])
        return gen, until

    def generate_until(self, requests) -> list:
        from tqdm import tqdm

        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):  # batch only requests with the same task and generation settings
            _, gk, _, _, task, split = req.args
            groups[json.dumps([task, split, gk], sort_keys=True, default=str)].append(i)
        out: list = [None] * len(requests)
        visual_total = newline_total = n_done = 0
        t_start = time.perf_counter()
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=self.NAME)
        for idxs in groups.values():
            gen, until = self._gen_kwargs(requests[idxs[0]].args[1])
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                chunk, items = self._prepare_or_record(chunk, requests, out)  # a bad video: an error answer
                if not chunk:
                    continue
                for group in sub_batches(self._model, self._method, items):  # in-LLM: equal video tokens
                    self._generate([chunk[g] for g in group], [items[g] for g in group], requests, gen, until, out)
                    visual_total += sum(out[chunk[g]].token_counts.aot["visual_tokens"] for g in group)
                    newline_total += sum(out[chunk[g]].token_counts.aot["newline_tokens"] for g in group)
                    n_done += len(group)
                bar.update(len(chunk))
        bar.close()
        if n_done:
            logger.info(f"{self.NAME} rank {self.rank}: {n_done} answers, method {self.method_name}, "
                        f"mean {visual_tokens_text(visual_total / n_done, newline_total / n_done)}, config {json.dumps(self.config_json)}, "
                        f"{time.perf_counter() - t_start:.1f} s")
        return out

    def _prepare_or_record(self, chunk: list[int], requests, out: list) -> tuple[list[int], list[dict]]:
        """(the requests of ``chunk`` whose video decodes, their inputs); a request whose video cannot
        be read gets an empty answer whose ``aot`` entry says why (logged), so the task goes on."""
        kept, items = [], []
        for i in chunk:
            try:
                items.append(self._prepare(requests[i]))
                kept.append(i)
            except (ValueError, OSError) as err:
                logger.warning(f"{self.NAME}: request {i} ({requests[i].args[4]} doc {requests[i].args[3]}): {err}; "
                               f"answered with an empty string and recorded as an error")
                out[i] = GenerationResult(text="", token_counts=AOTTokenCounts(
                    input_tokens=0, output_tokens=0, aot={**self._summary(0, 0), "error": str(err)}))
        return kept, items

    def _generate(self, chunk: list[int], items: list[dict], requests, gen: dict, until: list[str], out: list) -> None:
        """One ``generate`` call over ``requests[chunk]`` (processor outputs ``items``), answers into ``out``."""
        inputs = collate(items, self._pad)
        res = generate_batch(self._model, inputs, self._decode, method=self._method, config=self._config,
                             gen_kwargs=gen, video_layout=self.video_layout, positions=self.positions,
                             layers=self.layers)
        for j, i in enumerate(chunk):
            text = res.texts[j]
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            text = text.strip()
            counts = AOTTokenCounts(input_tokens=res.prompt_tokens[j], output_tokens=res.new_tokens[j],
                                    aot=self._summary(res.visual_tokens[j], res.visual_tokens_in[j], res.last))
            out[i] = GenerationResult(text=text, token_counts=counts)
            self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)

    def loglikelihood(self, requests) -> list[LoglikelihoodResult]:
        """(mean -log p of the continuation's tokens, greedy?) for every request, compressed as configured.

        A request's args: (context, continuation, doc_to_visual, doc_id, task, split); the continuation
        is a string (multiple_choice tasks: target delimiter + option) or doc_to_target (loglikelihood
        tasks). As lmms-eval's llava_onevision: the continuation is the assistant's answer, closed like
        every turn (``<|im_end|>\\n`` with qwen_1_5), and its tokens are those of prompt + answer past
        the prompt's own length. One request per forward pass; a video read once for its options.
        Each answer unpacks as ``value, greedy`` (``LoglikelihoodResult``).
        """
        from tqdm import tqdm

        from ..models.patch import patch, unpatch

        out: list[LoglikelihoodResult] = []
        last_doc, clip = None, None
        for req in tqdm(requests, disable=self.rank != 0, desc=f"{self.NAME} loglikelihood"):
            context, target, _, doc_id, task, split = req.args
            if (task, split, doc_id) != last_doc:
                last_doc, clip = (task, split, doc_id), self._frames(req)
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            full = self._inputs(clip, context, continuation=str(continuation))
            n = full["input_ids"].shape[1] - self._inputs(clip, context)["input_ids"].shape[1]
            if n < 1:
                raise ValueError(f"{task} doc {doc_id}: the continuation {continuation!r} adds no token")
            if self._method is not None:
                patch(self._model, self._config, method=self._method.name, **self._options)
            try:
                pair = continuation_nll(self._model, full, n)
                last = dict(self._model._aot.last) if self._method is not None else None
                visual = (int(self._model._aot.last["llm_video_tokens"][0]) if self._method is not None
                          else int((full["input_ids"] == self._model.config.video_token_id).sum()))
            finally:
                if self._method is not None:
                    unpatch(self._model)
            placeholders = int((full["input_ids"] == self._model.config.video_token_id).sum())
            counts = AOTTokenCounts(input_tokens=int(full["input_ids"].shape[1]) - placeholders + visual,
                                    output_tokens=0, aot=self._summary(visual, placeholders, last))
            out.append(LoglikelihoodResult(text=pair, token_counts=counts))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), pair)
        return out

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.NAME} does not implement multi-round generation")


def _model_class(fam) -> type:
    """The lmms-eval model class of one family of ``aot.families`` (its name, family, prompt choices)."""
    doc = (f"``{fam.lmms_model}``: {fam.label} checkpoints ({', '.join(fam.classes)}); score layers by default: "
           f"{fam.layers_rule}.")
    return type(fam.lmms_class, (_AOTVideoLMM,), {"__doc__": doc, "__module__": __name__, "NAME": fam.lmms_model,
                                                  "FAMILY": fam.name, "CONV_TEMPLATES": fam.conv_templates})


for _fam in FAMILIES.values():  # AOTLlavaOneVision, AOTQwen2_5_VL, AOTQwen3VL, AOTQwen3_5
    globals()[_fam.lmms_class] = _model_class(_fam)
