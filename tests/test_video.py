"""Frame sampling and PyAV decoding (aot.video)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from aot import video  # noqa: E402
from aot.video import read_frames, sample_indices  # noqa: E402

# CI clones the repo next to ../shared, which holds the real test videos.
VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def real_video(name: str) -> Path:
    path = VIDEOS / name
    if not path.is_file():
        pytest.skip(f"test video {path} not available")
    return path


def write_gray_video(path: Path, num_frames: int, codec: str = "mpeg4") -> Path:
    """A 32x32 clip whose frame i is uniformly gray at level 20 * i, so a decoded frame tells its index."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def gray_levels(frames: np.ndarray) -> np.ndarray:
    """Index of each gray frame, recovered from its mean level (the codec is lossy by a few levels)."""
    return np.rint(frames.reshape(len(frames), -1).mean(axis=1) / 20).astype(int)


# --------------------------------------------------------------------------- sample_indices


def test_sample_indices_is_lmms_eval_linspace():
    for total, num in [(132, 32), (270, 32), (1000, 8), (32, 32), (7, 1)]:
        expected = np.linspace(0, total - 1, num, dtype=int)
        got = sample_indices(total, num)
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == np.int64 and got.shape == (num,)
    # hand-checked: ends kept, interior floored
    np.testing.assert_array_equal(sample_indices(10, 4), [0, 3, 6, 9])


def test_sample_indices_repeats_when_asking_for_more_frames_than_exist():
    np.testing.assert_array_equal(sample_indices(3, 5), [0, 0, 1, 1, 2])


@pytest.mark.parametrize("total, num", [(0, 4), (5, 0), (-1, 3)])
def test_sample_indices_rejects_counts_below_one(total, num):
    with pytest.raises(ValueError, match="must be >= 1"):
        sample_indices(total, num)


def test_sample_indices_rejects_non_integers():
    with pytest.raises(TypeError, match="num_frames"):
        sample_indices(10, 2.5)


# --------------------------------------------------------------------------- real videos


def test_bigbuckbunny_32_of_132_frames():
    clip = read_frames(real_video("bigbuckbunny.mp4"), 32)
    assert clip.total_frames == 132
    np.testing.assert_array_equal(clip.indices, np.linspace(0, 131, 32, dtype=int))
    assert clip.frames.shape == (32, 720, 1280, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(25.0)
    # sampled frames differ from each other (not one frame repeated)
    assert not np.array_equal(clip.frames[0], clip.frames[-1])


def test_megamind_avi():
    clip = read_frames(real_video("Megamind.avi"), 8)
    assert clip.total_frames == 270
    assert clip.frames.shape == (8, 528, 720, 3)
    np.testing.assert_array_equal(clip.indices, sample_indices(270, 8))


def test_header_overcount_is_clamped_on_a_real_file():
    # box.mp4's header says 456 frames; the bundled FFmpeg decodes 455 of them.
    clip = read_frames(real_video("box.mp4"), 16)
    assert clip.total_frames in (455, 456)
    np.testing.assert_array_equal(clip.indices, sample_indices(clip.total_frames, 16))
    assert clip.frames.shape == (16, 480, 640, 3)


def test_single_frame():
    clip = read_frames(real_video("carphone_pristine.mp4"), num_frames=1)
    np.testing.assert_array_equal(clip.indices, [0])
    assert clip.frames.shape == (1, 144, 176, 3)


# --------------------------------------------------------------------------- synthetic videos


def test_decoded_frames_are_the_sampled_ones(tmp_path):
    path = write_gray_video(tmp_path / "gray.mp4", 12)
    clip = read_frames(path, 5)
    np.testing.assert_array_equal(clip.indices, [0, 2, 5, 8, 11])
    np.testing.assert_array_equal(gray_levels(clip.frames), clip.indices)


def test_counts_packets_when_the_header_has_no_frame_count(tmp_path):
    path = write_gray_video(tmp_path / "gray.mkv", 12)  # Matroska stores no frame count
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    clip = read_frames(path, 4)
    assert clip.total_frames == 12
    np.testing.assert_array_equal(gray_levels(clip.frames), sample_indices(12, 4))


def test_fewer_decoded_frames_than_counted(tmp_path, monkeypatch):
    path = write_gray_video(tmp_path / "gray.mp4", 12)
    monkeypatch.setattr(video, "_count_frames", lambda p: (20, 10.0))  # header claims 20
    clip = read_frames(path, 6)
    assert clip.total_frames == 12
    np.testing.assert_array_equal(clip.indices, sample_indices(12, 6))
    np.testing.assert_array_equal(gray_levels(clip.frames), clip.indices)


def test_more_frames_than_the_video_has_repeats(tmp_path):
    path = write_gray_video(tmp_path / "gray.mp4", 3)
    clip = read_frames(path, 5)
    np.testing.assert_array_equal(clip.indices, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(gray_levels(clip.frames), [0, 0, 1, 1, 2])


# --------------------------------------------------------------------------- errors


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a video\n" * 10)
    with pytest.raises(ValueError, match="not a readable video") as info:
        read_frames(path)
    assert str(path) in str(info.value)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(ValueError, match="no video stream") as info:
        read_frames(path)
    assert str(path) in str(info.value)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(ValueError, match="not a readable video"):
        read_frames(tmp_path)


def test_missing_file(tmp_path):
    path = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_frames(path)


def test_num_frames_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        read_frames(tmp_path / "whatever.mp4", 0)
