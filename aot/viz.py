"""Draw a compression on the sampled frames: clip anchors and kept dynamic tokens (matplotlib, Agg).

The picture stays small whatever the frame count: at most ``MAX_FRAMES_SHOWN`` frames (chosen
with the same uniform rule as the video sampling), 2.2 inches per frame at 110 dpi, and a
constrained layout that reserves room for the two-line title above the frames.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["draw_tokens", "token_figure", "MAX_FRAMES_SHOWN"]

ANCHOR_COLOR = "#ffd400"  # clip anchors, drawn on their clip's first frame
DYNAMIC_COLOR = "#00e5ff"  # tokens kept because they changed
MAX_FRAMES_SHOWN = 32  # more frames are subsampled uniformly (the title says so)
PANEL_INCHES = 2.2
DPI = 110


def _tokens(k: int) -> str:
    return f"{k} token" if k == 1 else f"{k} tokens"


def token_figure(frames: np.ndarray, frame_ids, positions, dynamic, grid: tuple[int, int], *, title: str = "",
                 columns: int = 8, clip_starts=None, max_frames: int = MAX_FRAMES_SHOWN):
    """A matplotlib Figure of the frames (F, H, W, 3) uint8 with one box per output token.

    frame_ids, positions, dynamic: (R,) from ``aot.compress`` (positions are flat f * N + n);
    grid: (h, w) token grid laid over each frame. clip_starts marks the clips' first frames.
    At most ``max_frames`` frames are drawn, uniformly chosen (``aot.video.frame_indices``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from .video import frame_indices

    frame_ids, positions, dynamic = (np.asarray(a) for a in (frame_ids, positions, dynamic))
    f, height, width = frames.shape[:3]
    shown = frame_indices(f, max_frames)
    h, w = grid
    n = h * w
    cols = min(columns, len(shown))
    rows = math.ceil(len(shown) / cols)
    aspect = min(max(height / width, 0.25), 4.0)  # keep panels drawable for extreme shapes
    title_inches = 0.7
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(PANEL_INCHES * cols, (PANEL_INCHES * aspect + 0.3) * rows + title_inches))
    cell_h, cell_w = height / h, width / w
    starts = set(clip_starts or [])
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        ax.imshow(frames[i])
        sel = frame_ids == i
        for is_dyn, color in ((False, ANCHOR_COLOR), (True, DYNAMIC_COLOR)):
            cells = positions[sel & (dynamic == is_dyn)] % n
            boxes = [Rectangle(((c % w) * cell_w, (c // w) * cell_h), cell_w, cell_h) for c in cells]
            ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=color, linewidth=0.8))
        mark = " (clip start)" if i in starts else ""
        ax.set_title(f"frame {i}: {_tokens(int(sel.sum()))}{mark}", fontsize=7)
    subset = f" (showing {len(shown)} of {f} frames)" if len(shown) < f else ""
    fig.suptitle(f"{title}{subset}\nyellow: clip anchors (OT-aggregated), cyan: kept dynamic tokens", fontsize=9)
    return fig


def draw_tokens(frames: np.ndarray, frame_ids, positions, dynamic, grid: tuple[int, int], path,
                *, title: str = "", columns: int = 8, clip_starts=None, max_frames: int = MAX_FRAMES_SHOWN) -> Path:
    """Save :func:`token_figure` as a PNG at ``path`` and return the path."""
    import matplotlib.pyplot as plt

    fig = token_figure(frames, frame_ids, positions, dynamic, grid, title=title, columns=columns,
                       clip_starts=clip_starts, max_frames=max_frames)
    path = Path(path)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path
