"""Frame sampling and PyAV decoding (aot.video)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from aot import video  # noqa: E402
from aot.demo import sample_video  # noqa: E402
from aot.video import frame_indices, probe_video, read_frames, sample_indices  # noqa: E402

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
    clip = read_frames(sample_video(), 32)  # ships in aot/assets: never skipped
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


def test_more_frames_than_the_video_has_gives_every_frame_once(tmp_path):
    path = write_gray_video(tmp_path / "gray.mp4", 3)
    clip = read_frames(path, 5)
    np.testing.assert_array_equal(clip.indices, [0, 1, 2])
    np.testing.assert_array_equal(gray_levels(clip.frames), [0, 1, 2])
    assert clip.requested == 5 and clip.total_frames == 3
    assert clip.sampling == "video has 3 frames; sampled all 3 (asked for 5)"


def test_sampling_sentence():
    clip = read_frames(sample_video(), 32)
    assert clip.requested == 32 and clip.sampling.startswith("video has 132 frames; sampled 32 uniformly")
    assert read_frames(sample_video(), 500).sampling == "video has 132 frames; sampled all 132 (asked for 500)"


# --------------------------------------------------------------------------- frame_indices


@pytest.mark.parametrize("total", [1, 2, 3, 7, 68, 132, 1000])
@pytest.mark.parametrize("num", [1, 2, 5, 32, 68, 500])
def test_frame_indices_is_linspace_or_every_frame_once(total, num):
    got = frame_indices(total, num)
    assert isinstance(got, list) and all(type(i) is int for i in got)
    if num <= total:
        assert got == np.linspace(0, total - 1, num, dtype=int).tolist()
    else:
        assert got == list(range(total))
    assert len(got) == min(num, total) and len(set(got)) == len(got) and got == sorted(got)


def test_frame_indices_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_frames must be >= 1, got 0"):
        frame_indices(10, 0)
    with pytest.raises(TypeError, match="num_frames"):
        frame_indices(10, 2.5)


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


def test_still_images_are_refused(tmp_path):
    from PIL import Image

    for name in ("photo.jpg", "photo.png"):
        path = tmp_path / name
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
        for call in (probe_video, read_frames):
            with pytest.raises(ValueError, match="is a still image") as info:
                call(path)
            assert name in str(info.value) and "needs a video with at least 2 frames" in str(info.value)


def test_one_frame_video_is_a_still_image(tmp_path):
    path = write_gray_video(tmp_path / "one.mp4", 1)
    with pytest.raises(ValueError, match=r"one.mp4' is a still image \(a single frame\)"):
        read_frames(path, 32)


def test_unreadable_file_message_has_no_raw_errno(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(ValueError) as info:
        read_frames(path)
    msg = str(info.value)
    assert "garbage.mp4" in msg and "not a readable video" in msg
    assert "Errno" not in msg and "1094995529" not in msg


def test_permission_error_is_reworded(tmp_path, monkeypatch):
    av_error = av.error.PermissionError(13, "Permission denied", str(tmp_path / "x.mp4"))

    def refuse(path):
        raise av_error

    path = write_gray_video(tmp_path / "x.mp4", 3)
    monkeypatch.setattr(video, "_count_frames", refuse)
    with pytest.raises(PermissionError, match="cannot read .*x.mp4.*Permission denied") as info:
        read_frames(path)
    assert "Errno" not in str(info.value)


def test_num_frames_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        read_frames(tmp_path / "whatever.mp4", 0)
