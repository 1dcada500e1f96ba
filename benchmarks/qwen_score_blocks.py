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

    python benchmarks/qwen_score_blocks.py [--videos DIR] [--frames 8]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", default=str(Path(__file__).resolve().parents[2] / "shared/data/videos"))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import Qwen2VLVideoProcessor
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from aot.models.qwen2_5_vl import _score_hook, _to_llm_grid
    from aot.video import read_frames

    torch.manual_seed(args.seed)
    cfg = Qwen2_5_VLVisionConfig(depth=32, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=128,
                                 fullatt_block_indexes=[7, 15, 23, 31])
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).eval()
    proc = Qwen2VLVideoProcessor(do_sample_frames=False, size={"shortest_edge": 336 * 448, "longest_edge": 336 * 448})
    names = sorted(p for p in os.listdir(args.videos) if not p.startswith("."))
    stats = {b: {"window_share": [], "top10_vs_last": []} for b in range(32)}
    for name in names:
        frames = read_frames(os.path.join(args.videos, name), args.frames).frames  # (F, H, W, 3) uint8
        frames = torch.nn.functional.interpolate(torch.as_tensor(frames).permute(0, 3, 1, 2).float(),
                                                 size=(336, 448), mode="bilinear").round().clamp(0, 255).byte()
        enc = proc(videos=[frames], return_tensors="pt")
        thw = enc["video_grid_thw"]
        rec = {b: [] for b in range(32)}
        hooks = [tower.blocks[b].attn.register_forward_pre_hook(_score_hook(rec[b], 256, {}), with_kwargs=True)
                 for b in range(32)]
        with torch.no_grad():
            tower(enc["pixel_values_videos"], grid_thw=thw)
        for h in hooks:
            h.remove()
        t, gh, gw = thw[0].tolist()
        h, w = gh // 2, gw // 2
        side = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size
        win = (torch.arange(h)[:, None] // side * ((w + side - 1) // side) + torch.arange(w)[None] // side).flatten()
        grids = {b: _to_llm_grid(rec[b][0], thw, tower)[0] for b in range(32)}  # (t, h * w)
        k = max(1, h * w // 10)
        last_top = grids[31].topk(k, dim=-1).indices
        for b, s in grids.items():
            means = torch.zeros(s.shape[0], int(win.max()) + 1).index_add_(1, win, s) / torch.bincount(win)
            between = means[:, win].var(-1)
            stats[b]["window_share"].append((between / s.var(-1)).mean().item())
            top = s.topk(k, dim=-1).indices
            overlap = [len(set(a.tolist()) & set(c.tolist())) / k for a, c in zip(top, last_top)]
            stats[b]["top10_vs_last"].append(sum(overlap) / len(overlap))
    print(f"videos: {', '.join(names)}; {args.frames} frames each -> {t} slices of {h}x{w} LLM cells")
    print("| block | attention | window_share | top10_vs_last |\n|---|---|---|---|")
    for b in range(32):
        kind = "full" if b in cfg.fullatt_block_indexes else "window"
        ws = sum(stats[b]["window_share"]) / len(names)
        ov = sum(stats[b]["top10_vs_last"]) / len(names)
        print(f"| {b} | {kind} | {ws:.3f} | {ov:.2f} |")


if __name__ == "__main__":
    main()
