"""Which Qwen2.5-VL vision blocks should score AOT's anchors: a short measurement on real frames.

No Qwen2.5-VL weights are available here, so the tower is randomly initialised with the real
geometry of Qwen2.5-VL-3B/7B/72B's ViT (32 blocks, full attention in 7/15/23/31, 14-px patches,
112-px windows, 2x2 merger, 2 frames a slice; the width is reduced to 128 to run on a CPU). What
such a tower can show is what the architecture does to the scores, not what trained weights
attend to. Frames: 8 from each video in ../shared/data/videos through transformers' own
Qwen2VLVideoProcessor (336x448 -> a 12x16 LLM grid, 3x4 windows of 4x4 cells, 4 slices).

Per block, averaged over slices and videos:
- ``window_share``: share of the score variance across the LLM grid that is between Qwen's
  windows (variance of the window means / total). A window-attention block attends only inside
  its window, so every full window receives the same total (its queries' attention), and it
  cannot say that one window matters more than another: its window_share is ~0, and top-K over
  regions that straddle windows (AOT's global anchors, its 3x3 local windows) compares numbers
  that are not comparable.
- ``top10_vs_last``: overlap (|A & B| / |A|) of the top-10% cells with those of the last block.

The frame reader and the per-slice statistics below are shared with qwen3_score_blocks.py.

    python benchmarks/qwen_score_blocks.py [--videos DIR] [--frames 8]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VIDEOS = Path(__file__).resolve().parents[2] / "shared/data/videos"


# --- shared with qwen3_score_blocks.py --------------------------------------------------------

def video_names(folder) -> list[str]:
    """The videos of ``folder`` in name order (hidden files skipped)."""
    names = sorted(p for p in os.listdir(folder) if not p.startswith("."))
    if not names:
        raise FileNotFoundError(f"no videos in {folder}")
    return names


def frames_at(path, count: int, size: tuple[int, int]) -> Tensor:
    """``count`` frames of a video, uniformly sampled, resized (bilinear) to ``size`` = (H, W):
    (count, 3, H, W) uint8, what a video processor takes."""
    from aot.video import read_frames

    frames = read_frames(path, count).frames  # (F, h, w, 3) uint8
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear").round().clamp(0, 255).byte()


def region_index(h: int, w: int, side: int) -> Tensor:
    """(h * w,) index of the side x side region of each cell of an (h, w) grid, row-major."""
    across = (w + side - 1) // side
    return (torch.arange(h)[:, None] // side * across + torch.arange(w)[None] // side).flatten()


def between_share(s: Tensor, region: Tensor) -> Tensor:
    """Share of the variance of each row of ``s`` (S, N) that lies between the regions ``region``
    (N,) (variance of the region means spread over their cells / total variance): (S,)."""
    n = int(region.max()) + 1
    means = torch.zeros(s.shape[0], n, dtype=s.dtype).index_add_(1, region, s) / torch.bincount(region, minlength=n)
    return means[:, region].var(-1) / s.var(-1)


def top_overlap(a: Tensor, b: Tensor, frac: float = 0.1) -> Tensor:
    """Per row of a, b (S, N): |top(a) & top(b)| / k over the top k = max(1, floor(N * frac)) cells: (S,)."""
    k = max(1, int(a.shape[-1] * frac))
    ta, tb = a.topk(k, dim=-1).indices, b.topk(k, dim=-1).indices
    return torch.tensor([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(ta, tb)])


def top_share(s: Tensor, frac: float = 0.01) -> Tensor:
    """Share of each row's total (S, N) held by its top ceil(N * frac) cells: (S,); uniform = ~frac."""
    k = max(1, math.ceil(s.shape[-1] * frac))
    return s.topk(k, dim=-1).values.sum(-1) / s.sum(-1)


def entropy(s: Tensor) -> Tensor:
    """Entropy of each row of ``s`` (S, N) as a distribution, over log N: (S,) in [0, 1]; 1 = uniform."""
    p = s / s.sum(-1, keepdim=True)
    return -(p * p.clamp_min(1e-30).log()).sum(-1) / math.log(s.shape[-1])


# --- Qwen2.5-VL ---------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", default=str(VIDEOS))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import Qwen2VLVideoProcessor
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from aot.models.qwen2_5_vl import _to_llm_grid, score_hook

    torch.manual_seed(args.seed)
    cfg = Qwen2_5_VLVisionConfig(depth=32, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=128,
                                 fullatt_block_indexes=[7, 15, 23, 31])
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).eval()
    proc = Qwen2VLVideoProcessor(do_sample_frames=False, size={"shortest_edge": 336 * 448, "longest_edge": 336 * 448})
    names = video_names(args.videos)
    stats = {b: {"window_share": [], "top10_vs_last": []} for b in range(32)}
    for name in names:
        enc = proc(videos=[frames_at(os.path.join(args.videos, name), args.frames, (336, 448))], return_tensors="pt")
        thw = enc["video_grid_thw"]
        rec = {b: [] for b in range(32)}
        hooks = [tower.blocks[b].attn.register_forward_pre_hook(score_hook(rec[b], 256, {}), with_kwargs=True)
                 for b in range(32)]
        with torch.no_grad():
            tower(enc["pixel_values_videos"], grid_thw=thw)
        for h in hooks:
            h.remove()
        t, gh, gw = thw[0].tolist()
        h, w = gh // 2, gw // 2
        win = region_index(h, w, cfg.window_size // cfg.spatial_merge_size // cfg.patch_size)
        grids = {b: _to_llm_grid(rec[b][0], thw, tower)[0] for b in range(32)}  # (t, h * w)
        for b, s in grids.items():
            stats[b]["window_share"].append(between_share(s, win).mean().item())
            stats[b]["top10_vs_last"].append(top_overlap(s, grids[31]).mean().item())
    print(f"videos: {', '.join(names)}; {args.frames} frames each -> {t} slices of {h}x{w} LLM cells")
    print("| block | attention | window_share | top10_vs_last |\n|---|---|---|---|")
    for b in range(32):
        kind = "full" if b in cfg.fullatt_block_indexes else "window"
        ws = sum(stats[b]["window_share"]) / len(names)
        ov = sum(stats[b]["top10_vs_last"]) / len(names)
        print(f"| {b} | {kind} | {ws:.3f} | {ov:.2f} |")


if __name__ == "__main__":
    main()
