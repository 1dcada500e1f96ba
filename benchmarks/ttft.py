"""Time to first token of a real-weights video LLM, split by stage: vanilla vs compressed.

    python benchmarks/ttft.py [--frames 32] [--retention 0.1,0.15,0.2,0.25] [--methods aot,visionzip,fastvid]
                              [--llm-methods fastv,pdrop] [--llm-retention 0.5,0.2]
                              [--threads 1] [--device cpu] [--json out.json]

The model is aot.models.assembled's LLaVA-OneVision-shaped stand-in (real DINOv2 ViT-S/14 tower,
real SmolLM2-135M language model, random projector), on the bundled Big Buck Bunny sample. Each
row runs the whole pipeline once: the video is decoded and preprocessed once (shared by every row),
then generate() with one new token; the tower, score, compression and prefill times come from the
patch's own timers and hooks on the tower and the language model. Vanilla is the unpatched model.
Rows are measured side by side in one process, with the thread count printed: compare ratios.

In-LLM methods (``--llm-methods``: FastV, PDrop) get every visual token into the language model and
prune inside it, at each of ``--llm-retention`` (FastV: share kept after layer K = 1 - R; PDrop: lambda
per stage); their "compression" column is the pruner's ranking and gathering (inside the prefill
time too), their "visual tokens" column the count after the last stage, and the "LLM prefill
TFLOPs" column (paper Eq. 17 per layer, SmolLM2-135M, visual tokens only) lets rows of equal prefill
FLOPs be compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aot  # noqa: E402
import aot.methods  # noqa: E402
from aot import flops  # noqa: E402
from aot.demo import sample_video  # noqa: E402
from aot.models.assembled import load_dinov2_smollm2, preprocess_frames, video_prompt  # noqa: E402
from aot.run import module_timer  # noqa: E402
from aot.video import read_frames  # noqa: E402


def one_row(model, inputs, device, method=None, retention=1.0):
    """Stage times (s) and visual tokens of one generate(max_new_tokens=1) call."""
    inner = model.model
    if method is not None:
        m = aot.methods.get(method)
        aot.patch(model, m.config(retention=retention), method=method)
    try:
        with module_timer(inner.language_model, device) as lm, module_timer(inner.vision_tower, device) as tower, \
                torch.inference_mode():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        if method is None:
            return {"vision tower": sum(tower), "scores": 0.0, "compression": 0.0, "prefill": lm[0]}, \
                inputs["pixel_values_videos"].shape[1] * 196
        last = model._aot.last
        if last.get("stage") == "llm":  # pruned inside the prefill: its time is part of lm[0]
            return {"vision tower": last["times"]["vision"], "scores": 0.0, "compression": last["times"]["compress"],
                    "prefill": lm[0] - last["times"]["compress"]}, last["tokens_out"]
        t = last["times"]
        return {"vision tower": t["vision"], "scores": t.get("scores", 0.0), "compression": t["compress"],
                "prefill": lm[0]}, last["tokens_out"]
    finally:
        if method is not None:
            aot.unpatch(model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--retention", default="0.1,0.15,0.2,0.25")
    ap.add_argument("--methods", default="aot,visionzip,fastvid")
    ap.add_argument("--llm-methods", default="", help="in-LLM methods (fastv,pdrop), none by default")
    ap.add_argument("--llm-retention", default="0.5,0.2", help="their retentions (FastV: 1 - R; PDrop: lambda)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: robust on a shared machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    retentions = [float(r) for r in args.retention.split(",")]
    methods = [n for n in args.methods.split(",") if n]
    llm_methods = [n for n in args.llm_methods.split(",") if n]
    llm_retentions = [float(r) for r in args.llm_retention.split(",")]
    for name in methods + llm_methods:  # a typo fails now, not after the model loads
        if aot.methods.get(name).in_llm != (name in llm_methods):
            raise SystemExit(f"{name}: pass pre-LLM methods with --methods, in-LLM ones (fastv, pdrop) with "
                             f"--llm-methods")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    model, tok = load_dinov2_smollm2(dtype=dtype)
    model.to(args.device)
    t0 = time.perf_counter()
    clip = read_frames(sample_video(), args.frames)
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    inputs = {**video_prompt(tok, "What happens in the video?", len(clip.frames)),
              "pixel_values_videos": preprocess_frames(clip.frames).unsqueeze(0).to(dtype)}
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    t_pre = time.perf_counter() - t0
    one_row(model, inputs, args.device)  # warm-up (allocator, kernels), not reported

    rows = []
    times, n = one_row(model, inputs, args.device)
    rows.append(("vanilla", 1.0, n, times))
    for name in methods:
        for r in retentions:
            times, n = one_row(model, inputs, args.device, name, r)
            rows.append((name, r, n, times))
    for name in llm_methods:
        for r in llm_retentions:
            times, n = one_row(model, inputs, args.device, name, r)
            rows.append((name, r, n, times))
    spec = flops.spec_from_config(model.config.to_dict()["text_config"]).llm
    n_visual = rows[0][2]

    def tflops(name, r, n):  # LLM prefill over the visual tokens, per layer for in-LLM methods
        if name != "vanilla" and aot.methods.get(name).in_llm:
            m = aot.methods.get(name)
            return flops.schedule_prefill_flops(
                spec, flops.inllm_tokens_per_layer(m, m.config(retention=r), n_visual, spec.layers)) / 1e12
        return flops.prefill_flops(spec, n) / 1e12

    base_prefill = rows[0][3]["prefill"]
    print(f"model: DINOv2 ViT-S/14 + SmolLM2-135M (aot.models.assembled), {args.dtype}; video: bundled sample, "
          f"{len(clip.frames)} frames; device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"decode {t_decode * 1e3:.0f} ms and preprocess {t_pre * 1e3:.0f} ms (once, counted in every TTFT)\n")
    head = ["method", "retention", "visual tokens", "vision tower (ms)", "scores (ms)", "compression (ms)",
            "prefill (ms)", "TTFT (ms)", "prefill speed-up", "compression / TTFT", "LLM prefill TFLOPs"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    out = []
    for name, r, n, t in rows:
        ttft = t_decode + t_pre + sum(t.values())
        cells = [name, f"{r:.0%}", str(n), *(f"{t[k] * 1e3:.1f}" for k in ("vision tower", "scores", "compression",
                                                                        "prefill")),
                 f"{ttft * 1e3:.0f}", f"{base_prefill / t['prefill']:.1f}x", f"{t['compression'] / ttft:.2%}",
                 f"{tflops(name, r, n):.3f}"]
        print("| " + " | ".join(cells) + " |")
        out.append({"method": name, "retention": r, "visual_tokens": n, "times_s": t, "ttft_s": ttft,
                    "llm_prefill_tflops": tflops(name, r, n),
                    "decode_s": t_decode, "preprocess_s": t_pre})
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "device": args.device,
                                               "rows": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
