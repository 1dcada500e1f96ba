"""Draw a compression on the sampled frames: clip anchors and kept dynamic tokens (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["draw_tokens"]

ANCHOR_COLOR = "#ffd400"  # clip anchors, drawn on their clip's first frame
DYNAMIC_COLOR = "#00e5ff"  # tokens kept because they changed


def draw_tokens(frames: np.ndarray, frame_ids, positions, dynamic, grid: tuple[int, int], path,
                *, title: str = "", columns: int = 8, clip_starts=None) -> Path:
    """Save a PNG of the frames (F, H, W, 3) uint8 with one box per output token.

    frame_ids, positions, dynamic: (R,) from ``aot.compress`` (positions are flat f * N + n);
    grid: (h, w) token grid laid over each frame. clip_starts marks the clips' first frames.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    frame_ids, positions, dynamic = (np.asarray(a) for a in (frame_ids, positions, dynamic))
    f, height, width = frames.shape[:3]
    h, w = grid
    n = h * w
    cols = min(columns, f)
    rows = math.ceil(f / cols)
    aspect = height / width
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * aspect * rows + 0.6), squeeze=False)
    cell_h, cell_w = height / h, width / w
    starts = set(clip_starts or [])
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= f:
            continue
        ax.imshow(frames[i])
        sel = frame_ids == i
        for is_dyn, color in ((False, ANCHOR_COLOR), (True, DYNAMIC_COLOR)):
            cells = positions[sel & (dynamic == is_dyn)] % n
            boxes = [Rectangle(((c % w) * cell_w, (c // w) * cell_h), cell_w, cell_h) for c in cells]
            ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=color, linewidth=0.8))
        mark = " (clip start)" if i in starts else ""
        ax.set_title(f"frame {i}: {int(sel.sum())} tokens{mark}", fontsize=7)
    fig.suptitle(f"{title}\nyellow: clip anchors (OT-aggregated), cyan: kept dynamic tokens", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
