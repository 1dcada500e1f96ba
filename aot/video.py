"""Uniform frame sampling and decoding with PyAV.

The sampling rule is the one lmms-eval uses for LLaVA-OneVision (its default
``decord`` backend, ``Llava_OneVision.load_video``)::

    np.linspace(0, total_frame_num - 1, max_frames_num, dtype=int)

so the first and the last frame are always kept and the indices in between are
floored, not rounded.  Matching it exactly means the frames we compress are the
frames an lmms-eval run would have fed the model.

PyAV is imported inside the functions, so ``import aot`` works without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["VideoFrames", "sample_indices", "read_frames"]


class VideoFrames(NamedTuple):
    """Frames decoded by :func:`read_frames`."""

    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    indices: np.ndarray  # (F,) int64, position of each frame in the decoded stream
    fps: float  # average frame rate of the stream, 0.0 when the container does not say
    total_frames: int  # frames the indices were sampled from


def _check_count(value, name: str, minimum: int) -> int:
    # bool is an int subclass; True frames is almost certainly a bug
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def sample_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Uniformly spaced frame indices, exactly as lmms-eval's LLaVA-OneVision loader.

    ``np.linspace(0, total_frames - 1, num_frames, dtype=int)``: both ends
    included, positions floored by the int cast.

    When ``num_frames > total_frames`` the indices repeat (e.g. 3 frames, 5
    wanted -> ``[0, 0, 1, 1, 2]``), like lmms-eval's default decord backend; its
    PyAV backend instead clamps ``num_frames`` to ``total_frames``.  Repeating
    keeps the output length fixed at ``num_frames``, which the compression code
    downstream relies on.

    Returns an int64 array of shape ``(num_frames,)``.
    """
    total_frames = _check_count(total_frames, "total_frames", 1)
    num_frames = _check_count(num_frames, "num_frames", 1)
    # dtype=int is platform dependent (int32 on Windows); fix it to int64
    return np.linspace(0, total_frames - 1, num_frames, dtype=int).astype(np.int64)


def _not_a_video(path: Path, reason: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a readable video: {reason}")


def _count_frames(path: Path) -> tuple[int, float]:
    """(frame count, fps) of the first video stream; the count is from the header when present."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise _not_a_video(path, "it has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.frames > 0:
            return int(stream.frames), fps
        # Some containers (webm, mkv, raw streams) store no frame count: count the
        # packets instead.  Size-0 packets are the demuxer's end-of-stream flush.
        count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        return count, fps


def _decode_wanted(path: Path, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """Decode the stream in order, keeping only frames whose index is in ``wanted``.

    Returns ``({index: (H, W, 3) uint8}, number of frames decoded)``.  Only the
    wanted frames are converted to RGB and kept, so memory is bounded by
    ``len(unique(wanted))`` frames whatever the video length.
    """
    import av

    wanted_set = set(int(i) for i in wanted)
    last = int(wanted.max())
    kept: dict[int, np.ndarray] = {}
    size: tuple[int, int] | None = None
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threading; decoding order is unchanged
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            if index in wanted_set:
                # A stream may change resolution mid-way; scale everything to the
                # first kept frame's size so the frames stack into one array.
                if size is None:
                    size = (frame.width, frame.height)
                kept[index] = frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()
            if index >= last:
                break
    return kept, decoded


def read_frames(path: str | os.PathLike, num_frames: int = 32) -> VideoFrames:
    """Decode ``num_frames`` uniformly sampled RGB frames from a video file.

    The frame count is the stream header's ``frames`` when positive, otherwise
    the number of demuxed video packets.  Indices come from
    :func:`sample_indices`.  Frames are decoded sequentially from the start
    (no seeking, so indices are exact even for streams with sparse keyframes)
    and only the sampled ones are kept.

    If the decoder yields fewer frames than counted (headers can over-count,
    e.g. a trailing packet that decodes to nothing), the count is clamped to
    the frames actually decoded and the indices are re-sampled over that
    range; this needs a second decoding pass, only in that case.

    Returns :class:`VideoFrames` with ``frames`` of shape ``(num_frames, H, W, 3)``.

    Raises ``FileNotFoundError`` if ``path`` does not exist, ``ValueError`` if
    it is not a decodable video (no video stream, not a media file, no frame
    decodes) or if ``num_frames < 1``.
    """
    import av

    num_frames = _check_count(num_frames, "num_frames", 1)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    if not path.is_file():
        raise _not_a_video(path, "it is not a regular file")

    try:
        total, fps = _count_frames(path)
        if total < 1:
            raise _not_a_video(path, "its video stream has no frames")
        indices = sample_indices(total, num_frames)
        kept, decoded = _decode_wanted(path, indices)
        if decoded < 1:
            raise _not_a_video(path, "no frame could be decoded")
        if decoded <= int(indices.max()):
            # Fewer frames than the header promised: sample over what exists.
            total = decoded
            indices = sample_indices(total, num_frames)
            kept, _ = _decode_wanted(path, indices)
            if any(int(i) not in kept for i in indices):
                raise _not_a_video(path, "decoding stopped at a different frame on a second pass")
    except (PermissionError, FileNotFoundError):
        raise  # access problems are not about the content; keep their own type
    except av.FFmpegError as err:
        # FFmpeg's own message (e.g. "Invalid data found when processing input")
        # is kept as the cause; ours says which file and what was expected.
        raise _not_a_video(path, str(err)) from err

    frames = np.stack([kept[int(i)] for i in indices])  # (F, H, W, 3)
    return VideoFrames(frames=frames, indices=indices, fps=fps, total_frames=total)
