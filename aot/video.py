"""Uniform frame sampling and decoding with PyAV.

The sampling rule is the one lmms-eval uses for LLaVA-OneVision (its default
``decord`` backend, ``Llava_OneVision.load_video``)::

    np.linspace(0, total_frame_num - 1, max_frames_num, dtype=int)

so the first and the last frame are always kept and the indices in between are
floored, not rounded.  Matching it exactly means the frames we compress are the
frames an lmms-eval run would have fed the model.  A video with fewer frames than
asked gives every frame once (``frame_indices``), never repeats; still images are
refused.

PyAV is imported inside the functions, so ``import aot`` works without it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["VideoFrames", "VideoInfo", "frame_indices", "sample_indices", "probe_video", "read_frames",
           "check_frame_memory", "FrameMemoryError", "max_frame_bytes", "MAX_FRAME_BYTES"]

# decoded RGB frames a run may hold (bytes); AOT_MAX_FRAME_BYTES overrides. 795 frames of 768x576 are 1.06 GB as
# uint8 and took 3.8 GB by the time a processor had converted them: refused before decoding, with the numbers
MAX_FRAME_BYTES = 1_000_000_000

# containers FFmpeg uses for single pictures; such a file is a still image whatever it decodes to
_IMAGE_FORMATS = ("image2", "image2pipe")
_VIDEO_HINT = "aot needs a video with at least 2 frames (e.g. .mp4, .mkv, .avi, .webm, .mov)"


class VideoInfo(NamedTuple):
    """What :func:`probe_video` reads from the header, without decoding."""

    total_frames: int  # frames in the first video stream (header count, else demuxed packets), >= 2
    fps: float  # average frame rate of the stream, 0.0 when the container does not say
    width: int = 0  # coded frame size of the stream (0: unknown)
    height: int = 0


class VideoFrames(NamedTuple):
    """Frames decoded by :func:`read_frames`."""

    frames: np.ndarray  # (F, H, W, 3) uint8 RGB, F = min(requested, total_frames)
    indices: np.ndarray  # (F,) int64, position of each frame in the decoded stream, strictly increasing
    fps: float  # average frame rate of the stream, 0.0 when the container does not say
    total_frames: int  # frames the indices were sampled from
    requested: int  # frames asked for; more than F when the video is shorter
    errors: int = 0  # errors the decoder reported (FFmpeg error messages, packets that failed to decode)
    corrupt: int = 0  # decoded frames FFmpeg flagged corrupt (damaged data, concealed or not)
    skipped: int = 0  # frames the header counts that never decoded (damaged packets dropped)

    @property
    def damage(self) -> str | None:
        """One sentence on what the decoder reported while decoding the frames up to the last sampled
        one, or None for a clean decode."""
        parts = []
        if self.errors:
            parts.append(f"{self.errors} decoder error(s)")
        if self.corrupt:
            parts.append(f"{self.corrupt} frame(s) decoded damaged (concealed)")
        if self.skipped:
            parts.append(f"{self.skipped} frame(s) could not be decoded")
        return "; ".join(parts) if parts else None

    @property
    def sampling(self) -> str:
        """What was done, in one sentence, e.g. "video has 68 frames; sampled all 68 (asked for 500)"."""
        return describe_sampling(self.total_frames, self.requested)


def describe_sampling(total_frames: int, requested: int) -> str:
    """One sentence saying which frames :func:`frame_indices` takes from a video."""
    if requested < total_frames:
        return f"video has {total_frames} frames; sampled {requested} uniformly (lmms-eval's rule)"
    if requested == total_frames:
        return f"video has {total_frames} frames; sampled all {total_frames}"
    return f"video has {total_frames} frames; sampled all {total_frames} (asked for {requested})"


def _check_count(value, name: str, minimum: int) -> int:
    # bool is an int subclass; True frames is almost certainly a bug
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def frame_indices(total_frames: int, num_frames: int) -> list[int]:
    """The frames to decode: lmms-eval's uniform rule, every frame at most once.

    ``num_frames <= total_frames``: ``np.linspace(0, total_frames - 1, num_frames, dtype=int)``,
    both ends kept, interior positions floored; distinct because the step is >= 1.
    ``num_frames > total_frames``: every frame once, ``range(total_frames)``; the caller gets
    fewer frames than asked (repeating frames would only cost encoding time and tell the
    compressor nothing; lmms-eval's PyAV loader clamps the same way).

    Returns ``min(num_frames, total_frames)`` strictly increasing ints. This is the rule the demo
    and the model adapters share.
    """
    total_frames = _check_count(total_frames, "total_frames", 1)
    num_frames = _check_count(num_frames, "num_frames", 1)
    if num_frames >= total_frames:
        return list(range(total_frames))
    return [int(i) for i in np.linspace(0, total_frames - 1, num_frames, dtype=int)]


def sample_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """lmms-eval's raw formula ``np.linspace(0, total_frames - 1, num_frames, dtype=int)`` as int64.

    Unlike :func:`frame_indices` it repeats frames when ``num_frames > total_frames`` (e.g. 3
    frames, 5 wanted -> ``[0, 0, 1, 1, 2]``, like lmms-eval's decord backend). Kept for code that
    needs exactly ``num_frames`` indices over a range known to be long enough.

    Returns an int64 array of shape ``(num_frames,)``.
    """
    total_frames = _check_count(total_frames, "total_frames", 1)
    num_frames = _check_count(num_frames, "num_frames", 1)
    # dtype=int is platform dependent (int32 on Windows); fix it to int64
    return np.linspace(0, total_frames - 1, num_frames, dtype=int).astype(np.int64)


def _not_a_video(path: Path, reason: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a readable video: {reason}")


def _still_image(path: Path, reason: str) -> ValueError:
    return ValueError(f"{str(path)!r} is a still image ({reason}); {_VIDEO_HINT}")


def _ffmpeg_reason(err: BaseException) -> str:
    """FFmpeg's message without the raw errno ("[Errno 1094995529] ...")."""
    return getattr(err, "strerror", None) or str(err)


def _frame_size(path: Path) -> tuple[int, int]:
    """(width, height) of the first video stream from its header, (0, 0) when it does not say."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return 0, 0
        ctx = container.streams.video[0].codec_context
        return int(ctx.width or 0), int(ctx.height or 0)


def _count_frames(path: Path) -> tuple[int, float]:
    """(frame count, fps) of the first video stream; the count is from the header when present.

    Raises ValueError for a file without a video stream and for a still image (an image
    container such as JPEG or PNG).
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise _not_a_video(path, "it has no video stream")
        fmt = container.format.name
        if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
            raise _still_image(path, f"FFmpeg reads it as an image, format {fmt}")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.frames > 0:
            return int(stream.frames), fps
        # Some containers (webm, mkv, raw streams) store no frame count: count the
        # packets instead.  Size-0 packets are the demuxer's end-of-stream flush.
        count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        return count, fps


def _checked_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    if not path.is_file():
        raise _not_a_video(path, "it is not a regular file")
    return path


@contextlib.contextmanager
def _ffmpeg_errors(path: Path):
    """Turn FFmpeg's errors into ours: which file, what was expected, no raw errno."""
    import av

    try:
        yield
    except PermissionError as err:
        raise PermissionError(f"cannot read {str(path)!r}: {_ffmpeg_reason(err)}") from None
    except av.FFmpegError as err:
        # FFmpeg's own message (e.g. "Invalid data found when processing input") is kept as the
        # cause; ours says which file and what was expected.
        raise _not_a_video(path, _ffmpeg_reason(err)) from err


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count and rate of a video from its header, without decoding (cheap: run it first).

    Raises FileNotFoundError if ``path`` does not exist, PermissionError if it cannot be read,
    ValueError if it is not a video (not a media file, no video stream, no frames) or is a still
    image (an image format, or a single frame).
    """
    path = _checked_path(path)
    with _ffmpeg_errors(path):
        total, fps = _count_frames(path)
    if total < 1:
        raise _not_a_video(path, "its video stream has no frames")
    if total == 1:
        raise _still_image(path, "a single frame")
    with _ffmpeg_errors(path):
        width, height = _frame_size(path)
    return VideoInfo(total, fps, width, height)


def max_frame_bytes() -> int:
    """The limit on decoded frames in bytes: ``AOT_MAX_FRAME_BYTES`` if set, else :data:`MAX_FRAME_BYTES`."""
    raw = os.environ.get("AOT_MAX_FRAME_BYTES")
    if raw is None:
        return MAX_FRAME_BYTES
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"AOT_MAX_FRAME_BYTES must be a number of bytes >= 1, got {raw!r}")
    return value


class FrameMemoryError(ValueError):
    """The frames asked for would take more memory than :func:`max_frame_bytes` allows (a setting,
    not a fault of the video)."""


def _size(n: int) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def check_frame_memory(info: VideoInfo, num_frames: int, path=None) -> int:
    """Bytes the sampled frames take decoded (``min(num_frames, total) * width * height * 3``); a
    ValueError with the numbers when that exceeds :func:`max_frame_bytes`."""
    n = min(int(num_frames), int(info.total_frames))
    per = int(info.width) * int(info.height) * 3
    need = n * per
    limit = max_frame_bytes()
    if need > limit:
        where = f"{str(path)!r}: " if path is not None else ""
        raise FrameMemoryError(f"{where}{n} frames of {info.width}x{info.height} need {_size(need)} decoded "
                         f"(RGB uint8, before any preprocessing), above the limit of {_size(limit)}; ask for "
                         f"at most {max(1, limit // per)} frames, or raise AOT_MAX_FRAME_BYTES")
    return need


def _decode_wanted(path: Path, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int, int, int]:
    """Decode the stream in order, keeping only frames whose index is in ``wanted``.

    Returns ``({index: (H, W, 3) uint8}, frames decoded, decoder errors, frames flagged corrupt)``.
    Only the wanted frames are converted to RGB and kept, so memory is bounded by
    ``len(unique(wanted))`` frames whatever the video length. A packet that fails to decode is
    skipped and counted (the frames after it keep decoding), as are FFmpeg's error messages and the
    frames it flags corrupt (damaged data, concealed).
    """
    import av
    import av.logging

    wanted_set = set(int(i) for i in wanted)
    last = int(wanted.max())
    kept: dict[int, np.ndarray] = {}
    size: tuple[int, int] | None = None
    decoded = failed = corrupt = 0
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # FFmpeg's error messages reach the capture below
    try:
        with av.logging.Capture(local=False) as logs, av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threading; decoding order is unchanged
            done = False
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    failed += 1
                    continue
                for frame in frames:
                    index = decoded
                    decoded += 1
                    corrupt += bool(getattr(frame, "is_corrupt", False))
                    if index in wanted_set:
                        # A stream may change resolution mid-way; scale everything to the
                        # first kept frame's size so the frames stack into one array.
                        if size is None:
                            size = (frame.width, frame.height)
                        kept[index] = frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()
                    if index >= last:
                        done = True
                        break
                if done:
                    break
        errors = sum(1 for entry in logs if entry[0] <= av.logging.ERROR)
    finally:
        av.logging.set_level(level)
    return kept, decoded, max(errors, failed), corrupt


def read_frames(path: str | os.PathLike, num_frames: int = 32) -> VideoFrames:
    """Decode up to ``num_frames`` uniformly sampled RGB frames from a video file.

    The frame count comes from :func:`probe_video`; indices from :func:`frame_indices`, so a
    video shorter than ``num_frames`` gives every frame once (``result.sampling`` says so).
    Frames are decoded sequentially from the start (no seeking, so indices are exact even for
    streams with sparse keyframes) and only the sampled ones are kept.

    If the decoder yields fewer frames than counted (headers can over-count, e.g. a trailing
    packet that decodes to nothing), the count is clamped to the frames actually decoded and the
    indices are re-sampled over that range; this needs a second decoding pass, only in that case.

    Returns :class:`VideoFrames` with ``frames`` of shape ``(min(num_frames, total), H, W, 3)``.

    Raises ``FileNotFoundError`` if ``path`` does not exist, ``PermissionError`` if it cannot be
    read, ``ValueError`` if it is not a decodable video (no video stream, not a media file, no
    frame decodes), if it is a still image, or if ``num_frames < 1``.
    """
    num_frames = _check_count(num_frames, "num_frames", 1)
    info = probe_video(path)
    check_frame_memory(info, num_frames, path)
    total, fps = info.total_frames, info.fps
    path = Path(path)
    skipped = 0
    with _ffmpeg_errors(path):
        indices = np.asarray(frame_indices(total, num_frames), dtype=np.int64)
        kept, decoded, errors, corrupt = _decode_wanted(path, indices)
        if decoded < 1:
            raise _not_a_video(path, "no frame could be decoded")
        if decoded <= int(indices.max()):
            # Fewer frames than the header promised: sample over what exists.
            if decoded == 1:
                raise _still_image(path, "only one frame decodes")
            skipped = total - decoded if errors or corrupt else 0  # damage, not a header's over-count
            total = decoded
            indices = np.asarray(frame_indices(total, num_frames), dtype=np.int64)
            kept, _, errors, corrupt = _decode_wanted(path, indices)
            if any(int(i) not in kept for i in indices):
                raise _not_a_video(path, "decoding stopped at a different frame on a second pass")

    frames = np.stack([kept[int(i)] for i in indices])  # (F, H, W, 3)
    return VideoFrames(frames=frames, indices=indices, fps=fps, total_frames=total, requested=num_frames,
                       errors=errors, corrupt=corrupt, skipped=skipped)
