"""The demo picture: bounded size, a title clear of the frames, singular labels (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from aot.viz import MAX_FRAMES_SHOWN, draw_tokens, token_figure  # noqa: E402


def _tokens(f: int, n: int = 16):
    frame_ids = np.repeat(np.arange(f), 2)
    positions = frame_ids * n + np.tile([0, 5], f)
    dynamic = np.tile([False, True], f)
    return frame_ids, positions, dynamic


def _layout(fig):
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.images]
    titles = [ax.title.get_text() for ax in fig.axes if ax.images]
    size = fig.get_size_inches() * fig.dpi
    plt.close(fig)
    return title, boxes, titles, size


@pytest.mark.parametrize("f", [1, 8, 100])
def test_title_never_overlaps_the_frames_and_size_is_bounded(f):
    frames = np.zeros((f, 72, 128, 3), np.uint8)
    fig = token_figure(frames, *_tokens(f), (4, 4), title="aot at 10% retention: 1 of 2 tokens (x.mp4)")
    title, boxes, titles, size = _layout(fig)
    assert len(boxes) == min(f, MAX_FRAMES_SHOWN)
    assert all(not title.overlaps(b) for b in boxes)
    assert size[1] <= 1200 / 110 * fig.dpi and size[0] <= 2000 / 110 * fig.dpi
    if f > MAX_FRAMES_SHOWN:
        assert f"showing {MAX_FRAMES_SHOWN} of {f} frames" in fig._suptitle.get_text()
        assert titles[0].startswith("frame 0:") and titles[-1].startswith(f"frame {f - 1}:")


def test_one_token_label_is_singular(tmp_path):
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    fig = token_figure(frames, [0, 1, 1], [0, 17, 18], [False, False, True], (4, 4))
    _, _, titles, _ = _layout(fig)
    assert titles == ["frame 0: 1 token", "frame 1: 2 tokens"]


def test_png_of_many_large_frames_is_small(tmp_path):
    f = 68
    frames = np.random.default_rng(0).integers(0, 255, (f, 360, 640, 3), dtype=np.uint8)
    path = draw_tokens(frames, *_tokens(f), (4, 4), tmp_path / "a.png", title="t")
    assert path.stat().st_size < 3_000_000
