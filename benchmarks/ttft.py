"""Time to first token of a real-weights video LLM, split by stage: vanilla vs compressed.

    python benchmarks/ttft.py [--frames 32] [--retention 0.1,0.15,0.2,0.25] [--methods aot,visionzip,fastvid]
                              [--llm-methods fastv,pdrop] [--llm-retention 0.5,0.2]
                              [--threads 1] [--device cpu] [--json out.json]
    python benchmarks/ttft.py --model qwen2.5-vl-shape [--frames 16] [--max-pixels 129024]
                              [--qwen-llm-layers 9] [--qwen-vit-depth 8] [--methods aot,visionzip] ...
    python benchmarks/ttft.py --model qwen3-vl-shape [--frames 16] [--qwen-llm-layers 7] [--qwen-vit-depth 8] ...

The model is aot.models.assembled's LLaVA-OneVision-shaped stand-in (real DINOv2 ViT-S/14 tower,
real SmolLM2-135M language model, random projector), on the bundled Big Buck Bunny sample. Each
row runs the whole pipeline once: the video is decoded and preprocessed once (shared by every row),
then generate() with one new token; the tower, score, compression and prefill times come from the
patch's own timers and hooks on the tower and the language model. Vanilla is the unpatched model.
Rows are measured side by side in one process, with the thread count printed: compare ratios.

``--model qwen2.5-vl-shape``: a Qwen2_5_VLForConditionalGeneration with **random weights** (timing
only: no trained Qwen2.5-VL weights are available here) and Qwen2.5-VL-3B's shapes per block: the
ViT of the 3B/7B models (hidden 1280, 16 heads, FFN 3420, 14-px patches, 112-px windows, 2x2
merger, 2-frame temporal patches) with ``--qwen-vit-depth`` blocks (the real one has 32, every 8th
full-attention; here every 4th, so the default score blocks, the first and last full-attention
one, differ) and the 3B LLM's layer (hidden 2048, FFN 11008, 16 query / 2 KV heads, vocabulary
151,936, tied embeddings) with ``--qwen-llm-layers`` of its 36 layers. Frames go through
transformers' own Qwen2VLVideoProcessor (``--max-pixels`` per frame); the prompt is the video block
and a few text tokens written as ids (there is no tokenizer without the hub). The shapes are printed
and saved with the results.

``--model qwen3-vl-shape``: a Qwen3VLForConditionalGeneration with **random weights** and Qwen3-VL-2B's
shapes per block (its published config.json, not readable here: the tower 1024 wide, 16 heads, FFN
4096, 16-px patches, 2x2 merger, 2-frame slices, full attention in every block, 24 blocks with
DeepStack taps at 5/11/17; the LLM layer 2048 wide, FFN 6144, 16 query / 8 KV heads of 128, q/k
norms, vocabulary 151,936, tied embeddings, 28 layers) with ``--qwen-vit-depth`` blocks (taps at the
same fractions of depth: 2/4/6 of 8) and ``--qwen-llm-layers`` layers. Frames go through
transformers' own Qwen3VLVideoProcessor; the prompt is, per temporal slice, 5 text ids standing for
the ``<t seconds>`` timestamp, ``<|vision_start|>``, the slice's pads and ``<|vision_end|>``, then 16
text ids. Its score blocks are the adapter's default (the first DeepStack tap and the last block).

In-LLM methods (``--llm-methods``: FastV, PDrop) get every visual token into the language model and
prune inside it, at each of ``--llm-retention`` (FastV: share kept after layer K = 1 - R; PDrop: lambda
per stage) and, with ``--llm-match aot@0.25``, FastV also at the retention whose LLM prefill FLOPs (its per-layer
schedule) come closest to that pre-LLM row's (searched over every kept count). PDrop's stages are
``--pdrop-layers``: by default its published 8/16/24 on the stand-in and, on the Qwen-shaped model,
8/16/24 of the 3B's 36 layers at the same fractions of depth in ``--qwen-llm-layers`` (2/4/6 of 9;
the Qwen3-VL-shaped one: 7/14/21 of 28, PDrop's quarters, i.e. 2/4/5 of 7);
FastV keeps K = 2. Their "compression" column is the pruner's ranking and gathering (inside the prefill
time too), their "visual tokens" column the count after the last stage, and the "LLM prefill
TFLOPs" column (paper Eq. 17 per layer, the model's LLM, visual tokens only) lets rows of equal prefill
FLOPs be compared; the last column gives the visual tokens each LLM layer sees.
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
from aot.efficiency import PeakMemory, model_stages, stage_times  # noqa: E402
from aot.models.assembled import load_dinov2_smollm2, preprocess_frames, video_prompt  # noqa: E402
from aot.run import module_timer  # noqa: E402
from aot.video import read_frames  # noqa: E402


QWEN = "qwen2.5-vl-shape"
QWEN3 = "qwen3-vl-shape"
STANDIN = "aot:dinov2-smollm2"


def qwen_shaped(llm_layers: int, vit_depth: int, dtype, seed: int = 0):
    """A random-weight Qwen2.5-VL with 3B shapes per block (see the module doc) and its shape summary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if vit_depth < 4 or vit_depth % 4:
        raise SystemExit(f"--qwen-vit-depth must be a multiple of 4 (every 4th block is full attention), got {vit_depth}")
    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=llm_layers,
                num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                tie_word_embeddings=True)
    vision = dict(depth=vit_depth, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=2048,
                  fullatt_block_indexes=list(range(3, vit_depth, 4)), tokens_per_second=2)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                           vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()  # transformers' own random init
    model.generation_config.pad_token_id = 151643
    model.generation_config.eos_token_id = None
    shapes = (f"Qwen2.5-VL-3B-shaped, random weights: ViT {vit_depth} of 32 blocks x (1280 wide, 16 heads, FFN 3420), "
              f"full attention at {vision['fullatt_block_indexes']}, 112-px windows, 14-px patches, 2x2 merger; "
              f"LLM {llm_layers} of 36 layers x (2048 wide, FFN 11008, 16/2 heads), vocabulary 151936")
    return model, shapes


def qwen_inputs(model, clip, max_pixels: int, dtype):
    """Transformers' own Qwen2VLVideoProcessor on the frames; the prompt as ids: <|vision_start|>,
    the video placeholders, <|vision_end|>, 16 text ids."""
    from transformers import Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    vp = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2,
                               merge_size=2, do_sample_frames=False, cap_pixels_per_frame=True)
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    v = vp(videos=[clip.frames], video_metadata=[meta], return_tensors="pt")
    thw = v["video_grid_thw"]
    n = int(thw.prod()) // 4
    cfg = model.config
    text = list(range(1000, 1016))
    ids = torch.tensor([[cfg.vision_start_token_id, *[cfg.video_token_id] * n, cfg.vision_end_token_id, *text]])
    fps = len(clip.indices) / clip.total_frames * clip.fps
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": 2 * (ids == cfg.video_token_id).long(),
            "pixel_values_videos": v["pixel_values_videos"].to(dtype), "video_grid_thw": thw,
            "second_per_grid_ts": torch.tensor([2.0 / fps])}, n


def scaled_taps(depth: int, full: int = 24, taps=(5, 11, 17)) -> list[int]:
    """Qwen3-VL-2B's DeepStack taps (5/11/17 of 24 blocks) at the same fractions of ``depth`` blocks."""
    out = [int(t * depth / full + 0.5) for t in taps]
    if out != sorted(set(out)) or out[-1] >= depth:
        raise SystemExit(f"--qwen-vit-depth {depth}: the DeepStack taps {taps} of {full} scale to {out}; use >= 6 blocks")
    return out


def qwen3_shaped(llm_layers: int, vit_depth: int, dtype, seed: int = 0):
    """A random-weight Qwen3-VL with 2B shapes per block (see the module doc) and its shape summary."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    taps = scaled_taps(vit_depth)
    if llm_layers < len(taps):
        raise SystemExit(f"--qwen-llm-layers must be >= {len(taps)} (one per DeepStack level), got {llm_layers}")
    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=llm_layers,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True}, tie_word_embeddings=True)
    vision = dict(depth=vit_depth, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048, num_position_embeddings=2304,
                  deepstack_visual_indexes=taps)
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                        vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg).to(dtype).eval()
    model.generation_config.pad_token_id = 151643
    model.generation_config.eos_token_id = None
    shapes = (f"Qwen3-VL-2B-shaped, random weights: ViT {vit_depth} of 24 blocks x (1024 wide, 16 heads, FFN 4096), "
              f"full attention in every block, DeepStack taps {taps}, 16-px patches, 2x2 merger; "
              f"LLM {llm_layers} of 28 layers x (2048 wide, FFN 6144, 16/8 heads of 128), vocabulary 151936")
    return model, shapes


def qwen3_inputs(model, clip, max_pixels: int, dtype):
    """Transformers' own Qwen3VLVideoProcessor on the frames (about ``max_pixels`` a frame); the prompt
    as ids, per temporal slice: 5 timestamp ids, <|vision_start|>, its pads, <|vision_end|>; then 16 text ids."""
    from transformers import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    n_frames = len(clip.frames)
    vc = model.config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    vp = Qwen3VLVideoProcessor(size={"shortest_edge": 4 * factor * factor, "longest_edge": max_pixels * n_frames},
                               patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size,
                               merge_size=vc.spatial_merge_size, do_sample_frames=False, cap_pixels_per_frame=True)
    meta = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=list(clip.indices))
    v = vp(videos=[clip.frames], video_metadata=[meta], return_tensors="pt")
    thw = v["video_grid_thw"]
    t, h, w = (int(x) for x in thw[0])
    cfg = model.config
    special = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
    plain = [i for i in range(1000, 1100) if i not in special]
    plain = [i % cfg.text_config.vocab_size for i in plain]  # a tiny test vocabulary wraps around
    plain = [i for i in plain if i not in special]
    ids = []
    for f in range(t):
        ids += [plain[20 + f % 50], *plain[:4]]  # stands for "<1.5 seconds>"
        ids += [cfg.vision_start_token_id, *[cfg.video_token_id] * (h * w // 4), cfg.vision_end_token_id]
    ids = torch.tensor([ids + plain[4:20]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": 2 * (ids == cfg.video_token_id).long(),
            "pixel_values_videos": v["pixel_values_videos"].to(dtype), "video_grid_thw": thw}, t * h * w // 4


PDROP_PUBLISHED = (8, 16, 24)  # PDrop's stages; aot.methods' default, run unchanged on the 36-layer 3B
QWEN_3B_LAYERS = 36


def scaled_pdrop_layers(n_layers: int, full: int = QWEN_3B_LAYERS, published=PDROP_PUBLISHED) -> tuple[int, ...]:
    """PDrop's stage layers at the same fractions of depth in an ``n_layers``-deep LLM as ``published``
    in a ``full``-deep one (8/16/24 of the 3B's 36 -> 2/4/6 of 9), rounded to the nearest layer."""
    layers = tuple(int(l * n_layers / full + 0.5) for l in published)
    if layers[0] < 1 or list(layers) != sorted(set(layers)) or layers[-1] >= n_layers:
        raise SystemExit(f"PDrop's layers {published} of {full} scale to {layers} in {n_layers} layers, which is "
                         f"not a valid schedule; pass --pdrop-layers")
    return layers


def llm_config(method: str, retention: float, pdrop_layers=None):
    """The config of an in-LLM method's row: ``retention``; PDrop's ``layers`` when given."""
    m = aot.methods.get(method)
    extra = {"layers": tuple(pdrop_layers)} if method == "pdrop" and pdrop_layers else {}
    return m.config(retention=retention, **extra)


def llm_prefill_flops(spec, method: str | None, config, n_tokens: int, n_visual: int) -> int:
    """LLM prefill FLOPs over the visual tokens (Eq. 17): ``n_tokens`` in every layer for a pre-LLM
    row or vanilla (``method`` None), the per-layer counts of its schedule on ``n_visual`` for an in-LLM one."""
    if method is not None and aot.methods.get(method).in_llm:
        m = aot.methods.get(method)
        return flops.schedule_prefill_flops(spec, flops.inllm_tokens_per_layer(m, config, n_visual, spec.layers))
    return flops.prefill_flops(spec, n_tokens)


def equal_flops_retention(spec, method: str, n_visual: int, target: int, pdrop_layers=None) -> float:
    """The retention k / n_visual (k = 1..n_visual kept after the first stage, so ``budget`` keeps
    exactly k) whose LLM prefill FLOPs on ``n_visual`` visual tokens are closest to ``target``."""
    best = None
    for k in range(1, n_visual + 1):
        r = k / n_visual
        f = llm_prefill_flops(spec, method, llm_config(method, r, pdrop_layers), 0, n_visual)
        if best is None or abs(f - target) < best[0]:
            best = (abs(f - target), r)
    return best[1]


def schedule_text(spec, method: str | None, config, n_tokens: int, n_visual: int) -> str:
    """Visual tokens per layer as 'N from layer i, ...' (one entry for a pre-LLM row)."""
    if method is None or not aot.methods.get(method).in_llm:
        return f"{n_tokens} in all {spec.layers}"
    tokens = flops.inllm_tokens_per_layer(aot.methods.get(method), config, n_visual, spec.layers)
    return ", ".join(f"{t} from {i}" for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1])


def one_row(model, inputs, device, method=None, retention=1.0, config=None, peak: dict | None = None):
    """Stage times (s; ``aot.efficiency``'s vision tower, scores, compression, prefill) and visual tokens
    of one generate(max_new_tokens=1) call (``config``: the method's config, default
    ``config(retention=retention)``); ``peak``: filled with the call's peak memory (bytes, kind)."""
    inner = model.model
    qwen = hasattr(inner, "visual")
    if method is not None:
        m = aot.methods.get(method)
        aot.patch(model, config if config is not None else m.config(retention=retention), method=method)
    try:
        with PeakMemory(device) as pm, module_timer(inner.language_model, device) as lm, \
                module_timer(inner.visual if qwen else inner.vision_tower, device) as tower, torch.inference_mode():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        if peak is not None:
            peak.update(bytes=pm.bytes, kind=pm.kind)
        last = model._aot.last if method is not None else None
        t = model_stages(last, lm)  # in-LLM methods: their pruning taken out of the prefill
        del t["decoding"]  # one new token: no decoding step
        if method is None:  # unpatched: the tower's hook times it
            n = (int(inputs["video_grid_thw"].prod()) // 4 if qwen else inputs["pixel_values_videos"].shape[1] * 196)
            return {**t, "vision tower": sum(tower)}, n
        return t, last["tokens_out"]
    finally:
        if method is not None:
            aot.unpatch(model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=STANDIN, choices=(STANDIN, QWEN, QWEN3))
    ap.add_argument("--frames", type=int, default=None, help="default: 32 (stand-in), 16 (Qwen-shaped)")
    ap.add_argument("--max-pixels", type=int, default=448 * 252, help="Qwen-shaped: pixels per frame at most")
    ap.add_argument("--qwen-llm-layers", type=int, default=None,
                    help="Qwen-shaped: LLM layers (default 9 of Qwen2.5-VL-3B's 36, 7 of Qwen3-VL-2B's 28)")
    ap.add_argument("--qwen-vit-depth", type=int, default=8, help="Qwen-shaped: ViT blocks (3B: 32, Qwen3-VL-2B: 24)")
    ap.add_argument("--retention", default="0.1,0.15,0.2,0.25")
    ap.add_argument("--methods", default="aot,visionzip,fastvid")
    ap.add_argument("--llm-methods", default="", help="in-LLM methods (fastv,pdrop), none by default")
    ap.add_argument("--llm-retention", default="0.5,0.2", help="their retentions (FastV: 1 - R; PDrop: lambda)")
    ap.add_argument("--llm-match", default="", metavar="METHOD@R",
                    help="also run FastV at the retention whose LLM prefill FLOPs (its per-layer schedule) are "
                         "closest to the pre-LLM METHOD's at retention R, e.g. aot@0.25")
    ap.add_argument("--pdrop-layers", default=None,
                    help="PDrop's stage layers, e.g. 8,16,24 (default: 8,16,24 on the stand-in; on the "
                         "Qwen-shaped model 8/16/24 of the 3B's 36 layers scaled to --qwen-llm-layers: 2,4,6 of 9)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: robust on a shared machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.frames is None:
        args.frames = 16 if args.model in (QWEN, QWEN3) else 32
    if args.qwen_llm_layers is None:
        args.qwen_llm_layers = 7 if args.model == QWEN3 else 9
    retentions = [float(r) for r in args.retention.split(",")]
    methods = [n for n in args.methods.split(",") if n]
    llm_methods = [n for n in args.llm_methods.split(",") if n]
    llm_retentions = [float(r) for r in args.llm_retention.split(",")]
    match = None
    if args.llm_match:
        try:
            match_name, match_r = args.llm_match.split("@")
            match = (match_name, float(match_r))
        except ValueError:
            raise SystemExit(f"--llm-match takes METHOD@R, e.g. aot@0.25; got {args.llm_match!r}") from None
        if aot.methods.get(match[0]).in_llm or not 0 < match[1] <= 1:
            raise SystemExit(f"--llm-match: {match[0]} must be a pre-LLM method and R in (0, 1]")
    if args.pdrop_layers:
        pdrop_layers = tuple(int(v) for v in args.pdrop_layers.split(","))
    elif args.model == QWEN:
        pdrop_layers = scaled_pdrop_layers(args.qwen_llm_layers)
    elif args.model == QWEN3:
        pdrop_layers = scaled_pdrop_layers(args.qwen_llm_layers, full=28, published=(7, 14, 21))
    else:
        pdrop_layers = None  # aot.methods' default, 8/16/24
    for name in methods + llm_methods:  # a typo fails now, not after the model loads
        if aot.methods.get(name).in_llm != (name in llm_methods):
            raise SystemExit(f"{name}: pass pre-LLM methods with --methods, in-LLM ones (fastv, pdrop) with "
                             f"--llm-methods")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    t_build = time.perf_counter()
    if args.model == QWEN:
        model, shapes = qwen_shaped(args.qwen_llm_layers, args.qwen_vit_depth, dtype)
    elif args.model == QWEN3:
        model, shapes = qwen3_shaped(args.qwen_llm_layers, args.qwen_vit_depth, dtype)
    else:
        model, tok = load_dinov2_smollm2(dtype=dtype)
        shapes = "DINOv2 ViT-S/14 + SmolLM2-135M (aot.models.assembled)"
    model.to(args.device)
    t_build = time.perf_counter() - t_build
    t0 = time.perf_counter()
    clip = read_frames(sample_video(), args.frames)
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.model in (QWEN, QWEN3):
        make = qwen_inputs if args.model == QWEN else qwen3_inputs
        inputs, _ = make(model, clip, args.max_pixels, dtype)
        grid = [int(v) for v in inputs["video_grid_thw"][0]]
    else:
        inputs = {**video_prompt(tok, "What happens in the video?", len(clip.frames)),
                  "pixel_values_videos": preprocess_frames(clip.frames).unsqueeze(0).to(dtype)}
        grid = None
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    t_pre = time.perf_counter() - t0
    print(f"built {args.model} in {t_build:.1f} s; warming up", file=sys.stderr, flush=True)
    if args.model in (QWEN, QWEN3):  # warm-up on the first 2 frames (allocator, kernels), not reported
        warm, _ = make(model, clip._replace(frames=clip.frames[:2], indices=clip.indices[:2]), args.max_pixels, dtype)
        one_row(model, {k: v.to(args.device) for k, v in warm.items()}, args.device)
    else:
        one_row(model, inputs, args.device)  # warm-up (allocator, kernels), not reported

    rows, peaks = [], []  # peaks[i]: row i's peak memory (aot.efficiency.PeakMemory)
    times, n = one_row(model, inputs, args.device, peak=(pk := {}))
    rows.append(("vanilla", 1.0, n, times))
    peaks.append(pk)
    for name in methods:
        for r in retentions:
            print(f"{name} {r}", file=sys.stderr, flush=True)
            times, n = one_row(model, inputs, args.device, name, r, peak=(pk := {}))
            rows.append((name, r, n, times))
            peaks.append(pk)
    spec = flops.spec_from_config(model.config.to_dict()["text_config"]).llm
    n_visual = rows[0][2]
    for name in llm_methods:
        rs = list(llm_retentions)
        if match is not None and name == "fastv":  # its retention of equal LLM prefill FLOPs to METHOD at R
            target = flops.prefill_flops(spec, aot.budget(match[1], 1, n_visual))
            rs.append(equal_flops_retention(spec, name, n_visual, target, pdrop_layers))
        for r in rs:
            print(f"{name} {r:.4g}", file=sys.stderr, flush=True)
            times, n = one_row(model, inputs, args.device, name, r, config=llm_config(name, r, pdrop_layers),
                               peak=(pk := {}))
            rows.append((name, r, n, times))
            peaks.append(pk)

    def config_of(name, r):
        return None if name == "vanilla" or not aot.methods.get(name).in_llm else llm_config(name, r, pdrop_layers)

    def tflops(name, r, n):  # LLM prefill over the visual tokens, per layer for in-LLM methods
        return llm_prefill_flops(spec, None if name == "vanilla" else name, config_of(name, r), n, n_visual) / 1e12

    base_prefill = rows[0][3]["prefill"]
    video = (f"{len(clip.frames)} frames" + (f" -> {grid[0]} temporal slices of {grid[1]}x{grid[2]} patches "
                                              f"({grid[1] * grid[2] // 4} LLM tokens a slice)" if grid else ""))
    print(f"model: {shapes}, {args.dtype}; video: bundled sample, "
          f"{video}; device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"decode {t_decode * 1e3:.0f} ms and preprocess {t_pre * 1e3:.0f} ms (once, counted in every TTFT)\n")
    head = ["method", "retention", "visual tokens", "vision tower (ms)", "scores (ms)", "compression (ms)",
            "prefill (ms)", "TTFT (ms)", "prefill speed-up", "compression / TTFT", "LLM prefill TFLOPs",
            "visual tokens from LLM layer"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    out = []
    for (name, r, n, t), pk in zip(rows, peaks):
        ttft = t_decode + t_pre + sum(t.values())
        sched = schedule_text(spec, None if name == "vanilla" else name, config_of(name, r), n, n_visual)
        cells = [name, f"{r * 100:.4g}%", str(n), *(f"{t[k] * 1e3:.1f}" for k in ("vision tower", "scores", "compression",
                                                                        "prefill")),
                 f"{ttft * 1e3:.0f}", f"{base_prefill / t['prefill']:.1f}x", f"{t['compression'] / ttft:.2%}",
                 f"{tflops(name, r, n):.3f}", sched]
        print("| " + " | ".join(cells) + " |")
        out.append({"method": name, "retention": r, "visual_tokens": n, "times_s": t, "ttft_s": ttft,
                    "llm_prefill_tflops": tflops(name, r, n), "llm_schedule": sched,
                    "config": (config_of(name, r).__dict__ if config_of(name, r) is not None else None),
                    "decode_s": t_decode, "preprocess_s": t_pre,
                    # the protocol of aot.efficiency (load: building the model, once; decoding: none)
                    "stages_s": stage_times(load=t_build, decode=t_decode, preprocess=t_pre,
                                            **{k.replace(" ", "_"): v for k, v in t.items()}),
                    "peak_memory_bytes": pk.get("bytes"), "memory_kind": pk.get("kind")})
    print("\nvisual tokens: newlines excluded (aot.efficiency; the stand-in's LLM also gets +1 newline); peak "
          "memory per row in --json (" + (peaks[0].get("kind") or "?") + ")")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "shapes": shapes, "dtype": args.dtype,
                                               "frames": len(clip.frames), "grid_thw": grid,
                                               "llm_match": args.llm_match or None,
                                               "pdrop_layers": list(pdrop_layers) if pdrop_layers else None,
                                               "threads": torch.get_num_threads(), "device": args.device,
                                               "torch": torch.__version__, "machine": platform.machine(),
                                               "rows": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
