"""The lmms-eval (0.7) models ``aot_llava_onevision`` (LLaVA-OneVision / LLaVA-Video) and
``aot_qwen2_5_vl`` (Qwen2.5-VL) through transformers, patched with any registered compression method.

    python -m lmms_eval --model aot_llava_onevision \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,method=aot,retention=0.1,frames=32 \\
        --tasks mvbench --batch_size 4 --log_samples --output_path logs/
    python -m lmms_eval --model aot_qwen2_5_vl \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=aot,retention=0.1,frames=32 \\
        --tasks mvbench --batch_size 4 --log_samples --output_path logs/

Both load with ``aot.run.load`` (the checkpoint's class and its own processor and chat template);
each refuses a checkpoint of the other family, naming the model to use.

Registered through the ``lmms_eval.models`` entry-point group (``aot.eval.lmms_entry``; lmms-eval's
``ModelRegistryV2.load_entrypoint_manifests``) and, deprecated but still read by lmms-eval 0.7,
``LMMS_EVAL_PLUGINS=aot`` (``aot.models.AVAILABLE_MODELS``).

Model args: ``pretrained`` (hub id, local folder or, for ``aot_llava_onevision``, ``aot:dinov2-smollm2``),
``method`` (a registry name, or ``vanilla`` for the unpatched model), ``frames`` (sampled with
lmms-eval's rule; alias ``max_frames_num``), ``local_layer``, ``global_layer`` (default: LLaVA 5, -2;
Qwen2.5-VL the first and last full-attention block of its tower), ``dtype``, ``device``,
``threads``, and every field of the method's config by name
(``retention=0.1,n_iters=50,windows=3x3,tol=none``), parsed to the field's type; an unknown name is
an error listing the fields. LLaVA only: ``video_layout`` (``onevision`` | ``llava-video``),
``positions`` (Qwen2.5-VL keeps its own layout and 3-D M-RoPE ids; other values are refused).

Every answer is returned as a ``GenerationResult`` whose token counts carry, besides the prompt
and output lengths, an ``aot`` entry: method, full config, frames, layout and the visual tokens the
LLM received for that sample (the processor's placeholder count for ``vanilla``); with ``--log_samples`` it is written into each sample's record,
beside its score (``token_counts[0].aot``). The full config is also logged once at start.

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

from .engine import collate, config_dict, generate_batch, method_config, pad_token_id

__all__ = ["AOTLlavaOneVision", "AOTQwen2_5_VL", "AOTTokenCounts"]


@dataclass
class AOTTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus what the compression did (written with the sample)."""

    aot: dict | None = None

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.aot is not None:
            d["aot"] = self.aot
        return d


class _AOTVideoLMM(lmms):
    """What both plugin models share; a subclass names itself (``NAME``) and its family (``FAMILY``)."""

    is_simple = True
    NAME = ""
    FAMILY = ""

    def __init__(self, pretrained: str, method: str = "aot", frames: int = 32, max_frames_num: int | None = None,
                 video_layout: str = "onevision", positions: str = "contiguous", local_layer: int | None = None,
                 global_layer: int | None = None, dtype: str = "auto", device: str | None = None, batch_size=1,
                 max_batch_size=None, threads: int | None = None, **config_fields: Any) -> None:
        super().__init__()
        from accelerate import Accelerator

        from ..run import _dtype, family_options, load, patch_options

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
        family_options(self.FAMILY, video_layout=video_layout, positions=positions, layers=self.layers)  # pre-load
        self._model, self._make_inputs, self._decode = load(self.pretrained, dtype=_dtype(dtype, dev), device=dev,
                                                            family=self.FAMILY)
        self._pad = pad_token_id(self._model)
        self.config_json = config_dict(self._config)
        options = patch_options(self._model, video_layout=video_layout, positions=positions, layers=self.layers)
        if self._method is not None:  # layers and config checked now, not at the first batch
            from ..models.patch import patch, unpatch

            patch(self._model, self._config, method=self._method.name, **options)
            unpatch(self._model)
        logger.info(f"{self.NAME}: {self.pretrained} ({type(self._model).__name__}), method {self.method_name}, "
                    f"frames {self.frames}, "
                    f"{f'layout {video_layout}, positions {positions}, ' if self.FAMILY == 'llava_onevision' else ''}layers "
                    f"{self.layers or 'model default'}, config {json.dumps(self.config_json)}, "
                    f"device {dev}, rank {self._rank}/{self._world_size}")

    def _check_family(self) -> None:
        """A checkpoint of the other family is refused before its weights load, naming the model to use."""
        from ..run import FAMILIES, STANDIN, _checkpoint_family

        found = "llava_onevision" if self.pretrained == STANDIN else _checkpoint_family(self.pretrained, None)
        if found != self.FAMILY:
            other = next(c for c in _AOTVideoLMM.__subclasses__() if c.FAMILY == found)
            raise ValueError(f"pretrained={self.pretrained} is a {FAMILIES[found]} checkpoint, which {self.NAME} "
                             f"does not run; use --model {other.NAME}")

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

    def _summary(self, visual: int) -> dict:
        out = {"method": self.method_name, "config": self.config_json, "frames": self.frames}
        if self.FAMILY == "llava_onevision":  # Qwen2.5-VL has one layout and its own positions
            out.update(video_layout=self.video_layout, positions=self.positions)
        return {**out, "visual_tokens": visual}

    def _prepare(self, request) -> dict:
        from ..video import read_frames

        context, _, doc_to_visual, doc_id, task, split = request.args
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
        return self._make_inputs(clip.frames, context, clip)

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
        visual_total = n_done = 0
        t_start = time.perf_counter()
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=self.NAME)
        for idxs in groups.values():
            gen, until = self._gen_kwargs(requests[idxs[0]].args[1])
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                inputs = collate([self._prepare(requests[i]) for i in chunk], self._pad)
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
                                            aot=self._summary(res.visual_tokens[j]))
                    out[i] = GenerationResult(text=text, token_counts=counts)
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)
                    visual_total += res.visual_tokens[j]
                    n_done += 1
                bar.update(len(chunk))
        bar.close()
        if n_done:
            logger.info(f"{self.NAME} rank {self.rank}: {n_done} answers, method {self.method_name}, "
                        f"mean visual tokens {visual_total / n_done:.1f}, config {json.dumps(self.config_json)}, "
                        f"{time.perf_counter() - t_start:.1f} s")
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{getattr(self, 'NAME', 'aot')} implements generate_until only: use the generation "
                                  "variant of the task (mvbench, videomme, egoschema_subset, longvideobench_val_v), "
                                  "not a loglikelihood / multiple-choice-perplexity one (e.g. egoschema_subset_mcppl)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.NAME} does not implement multi-round generation")


class AOTLlavaOneVision(_AOTVideoLMM):
    """``aot_llava_onevision``: LLaVA-OneVision / LLaVA-Video checkpoints (or the stand-in)."""

    NAME = "aot_llava_onevision"
    FAMILY = "llava_onevision"

    def __init__(self, pretrained: str, method: str = "aot", frames: int = 32, max_frames_num: int | None = None,
                 video_layout: str = "onevision", positions: str = "contiguous", local_layer: int = 5,
                 global_layer: int = -2, dtype: str = "auto", device: str | None = None, batch_size=1,
                 max_batch_size=None, threads: int | None = None, **config_fields: Any) -> None:
        super().__init__(pretrained, method, frames, max_frames_num, video_layout, positions, local_layer,
                         global_layer, dtype, device, batch_size, max_batch_size, threads, **config_fields)


class AOTQwen2_5_VL(_AOTVideoLMM):
    """``aot_qwen2_5_vl``: Qwen2.5-VL checkpoints. Score blocks default to the tower's first and last
    full-attention block; ``video_layout`` / ``positions`` other than the defaults are refused."""

    NAME = "aot_qwen2_5_vl"
    FAMILY = "qwen2_5_vl"

    def __init__(self, pretrained: str, method: str = "aot", frames: int = 32, max_frames_num: int | None = None,
                 video_layout: str = "onevision", positions: str = "contiguous", local_layer: int | None = None,
                 global_layer: int | None = None, dtype: str = "auto", device: str | None = None, batch_size=1,
                 max_batch_size=None, threads: int | None = None, **config_fields: Any) -> None:
        super().__init__(pretrained, method, frames, max_frames_num, video_layout, positions, local_layer,
                         global_layer, dtype, device, batch_size, max_batch_size, threads, **config_fields)

