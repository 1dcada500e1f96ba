"""Synthetic bad media for the fault tests (tests/test_faults_*.py): tiny videos written with PyAV,
damaged copies, files that only look like videos."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np


def make_video(path: Path, frames: int = 6, seed: int = 0, size: int = 32) -> Path:
    """A tiny MPEG-4 video of random frames (``seed`` changes every pixel)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def damaged_video(path: Path, frames: int = 60, size: int = 64) -> Path:
    """A video whose middle has 6 runs of 64 random bytes: its header reads, some frames decode
    damaged (FFmpeg conceals them) and some do not decode at all, like the held-out Megamind_bugy.avi."""
    make_video(path, frames=frames, size=size)
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for k in range(6):
        off = int(len(data) * (0.3 + 0.1 * k))
        for j in range(64):
            data[off + j] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return path
