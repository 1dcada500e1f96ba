"""aot demo: checks before the expensive steps, frame sampling, threads, one full readout (issue 7).

The ViT is replaced by a fake encoder (random tokens on a 14x14 grid), so these run in seconds;
the real encoder runs in test_cli.py's end-to-end tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

import aot.demo  # noqa: E402
import aot.fidelity  # noqa: E402
import aot.models.dinov2 as dinov2  # noqa: E402
import aot.video  # noqa: E402
from aot.cli import main  # noqa: E402
from aot.demo import VIT_LAYERS, VIT_PATCH, check_layers, plan_demo, run_demo, token_grid  # noqa: E402


def write_video(path, num_frames: int):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (10 * i) % 250, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture
def fake_vit(monkeypatch):
    """load_dinov2/encode_video replaced: random (F, 196, 32) tokens; records the frames and threads seen."""
    seen = {}

    def encode(model, frames, *, layers, image_size, progress, **_):
        f = len(frames)
        seen.update(frames=f, threads=torch.get_num_threads())
        g = torch.Generator().manual_seed(f)
        h, w = token_grid(image_size)
        return dinov2.Encoded(torch.randn(f, h * w, 32, generator=g), torch.rand(f, h * w, generator=g),
                              torch.rand(f, h * w, generator=g), (h, w))

    monkeypatch.setattr(dinov2, "load_dinov2", lambda: None)
    monkeypatch.setattr(dinov2, "encode_video", encode)
    return seen


@pytest.fixture
def no_expensive_steps(monkeypatch):
    """Decoding, loading or encoding fails the test: the checks must have refused the run before."""

    def boom(*args, **kwargs):
        raise AssertionError("an expensive step ran before the checks refused the arguments")

    monkeypatch.setattr(aot.video, "read_frames", boom)
    monkeypatch.setattr(aot.video, "_decode_wanted", boom)
    monkeypatch.setattr(dinov2, "load_dinov2", boom)
    monkeypatch.setattr(dinov2, "encode_video", boom)


def test_asking_more_frames_than_the_video_has(tmp_path, fake_vit, capsys):
    video = write_video(tmp_path / "short.mp4", 20)
    js = tmp_path / "r.json"
    assert main(["demo", "--video", str(video), "--frames", "100", "--retention", "0.1,0.25", "--png", "none",
                 "--json", str(js), "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "video has 20 frames; sampled all 20 (asked for 100)" in out
    assert fake_vit["frames"] == 20  # each frame encoded once, not 100 repeated frames
    result = json.loads(js.read_text())
    assert result["frames"] == 20 and result["frames_requested"] == 100
    for row in result["rows"]:  # 20 frames -> clips of 13 / 5 (10% / 25%): the anchor share 0.5 is honoured
        assert row["tokens_in"] == 20 * 196
        assert abs(row["anchors"] / row["tokens_out"] - 0.5) < 0.02


@pytest.mark.parametrize("argv, message", [
    (["--method", "dycoke"], "use retention >= 0.25"),
    (["--method", "dycoke", "--retention", "0.3,0.2"], "DyCoke keeps the first frame of every group of 4 whole"),
    (["--image-size", "14", "--clip-length", "2"], "below one token per clip"),  # 16 clips, 3 tokens
    (["--retention", "0.1,1.5"], "retention must be a number in (0.0, 1.0], got 1.5"),
    (["--json", "{tmp}/missing/r.json"], "the folder"),
    (["--png", "{tmp}/missing/a.png"], "does not exist"),
    (["--png", "{tmp}"], "is a folder, not a file name"),
    (["--png", "{tmp}/a.xyz"], "cannot draw a .xyz file; use one of"),
    (["--json", "/proc/aot-check/r.json"], "--json"),
    (["--video", "{tmp}/photo.png"], "is a still image"),
    (["--video", "{tmp}/nothing.mp4"], "video file not found"),
    (["--video", "{tmp}/garbage.mp4"], "Invalid data found"),
    (["--method", "aot-paper", "--lam-intra", "0.1"], "'aot-paper' fixes --lam-intra"),
    (["--method", "visionzip", "--anchor-share", "0.5"], "--anchor-share applies to AOT methods only"),
    (["--method", "fastv"], "'fastv' prunes inside the language model"),
])
def test_mistakes_are_refused_before_decoding(tmp_path, no_expensive_steps, capsys, argv, message):
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 50)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["demo", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("aot demo: error:"), err
    assert "Traceback" not in err and "Errno" not in err


@pytest.mark.parametrize("argv, message", [
    (["--layers", "20,5"], "each in -12..11"),
    (["--layers", "5"], "--layers needs two ints"),
    (["--image-size", "100"], "multiple of the ViT's 14 px patch"),
    (["--frames", "0"], "needs an int >= 1"),
    (["--threads", "0"], "needs an int >= 1"),
])
def test_bad_arguments_are_refused_when_parsed(no_expensive_steps, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["demo", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_negative_layer_indices_as_documented(no_expensive_steps, monkeypatch):
    seen = {}
    monkeypatch.setattr(aot.demo, "run_demo", lambda *a, **k: seen.update(k) or {})
    assert main(["demo", "--layers", "-2,5", "--png", "none"]) == 0  # README: [--layers -2,5]
    assert seen["layers"] == (-2, 5)
    assert main(["demo", "--layers", "-1,-12", "--png", "none"]) == 0
    assert seen["layers"] == (-1, -12)


def test_library_plan_checks_the_same(tmp_path, no_expensive_steps):
    with pytest.raises(ValueError, match="use retention >= 0.25"):
        plan_demo(method="dycoke", retentions=(0.1,))
    with pytest.raises(ValueError, match="each in -12..11"):
        plan_demo(layers=(-13, 5))
    with pytest.raises(ValueError, match="png"):
        run_demo(png=tmp_path / "missing" / "a.png")
    plan = plan_demo(frames=500)
    assert plan.total_frames == 132 and plan.frames == 132 and plan.grid == (14, 14)


def test_token_grid_and_layers():
    assert token_grid(378) == (14, 14) and token_grid(14) == (1, 1) and token_grid(392) == (14, 14)
    for bad in (0, 13, 100, 378.0, True):
        with pytest.raises(ValueError, match="multiple of"):
            token_grid(bad)
    assert check_layers([-2, 5]) == (-2, 5)
    for bad in ((12, 5), (-13, 0), (1,), ("a", 2)):
        with pytest.raises(ValueError, match="DEEP,SHALLOW"):
            check_layers(bad)


def test_vit_constants_match_the_model():
    pytest.importorskip("transformers")
    pytest.importorskip("onnx")
    try:
        model = dinov2.load_dinov2()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert len(model.encoder.layer) == VIT_LAYERS and model.config.patch_size == VIT_PATCH


def test_full_readout_computed_once(fake_vit, monkeypatch, capsys):
    calls = {"full": 0}
    original = aot.fidelity._readout

    def counting(q, kv, bias, chunk):
        calls["full"] += kv.shape[0] == q.shape[0]  # keys = every original token
        return original(q, kv, bias, chunk)

    monkeypatch.setattr(aot.fidelity, "_readout", counting)
    result = run_demo(frames=8, retentions=(0.1, 0.15, 0.2, 0.25), png=None, progress=False, echo=lambda s: None)
    assert calls["full"] == 1 and len(result["rows"]) == 4


def test_fidelity_with_precomputed_readout_is_identical():
    x = torch.randn(4, 16, 8)
    out = aot.compress(x, torch.rand(4, 16), config=aot.AOTConfig(retention=0.25))
    args = (x, out.tokens, out.sizes, out.assignment)
    assert aot.fidelity.fidelity(*args) == aot.fidelity.fidelity(*args, full=aot.fidelity.full_readout(x))
    with pytest.raises(ValueError, match="full-set readout"):
        aot.fidelity.fidelity(*args, full=torch.zeros(3, 8))


def test_threads_flag_applies_to_the_run_and_is_restored(fake_vit, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["demo", "--frames", "8", "--retention", "0.2", "--png", "none", "--no-progress",
                     "--threads", "1"]) == 0
        assert fake_vit["threads"] == 1  # the work ran at the requested count
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "stage times (1 thread)" in out and "| compress (ms, 1 thread) |" in out


def test_png_for_a_long_clip_stays_small(tmp_path, fake_vit):
    video = write_video(tmp_path / "long.mp4", 60)
    png = tmp_path / "a.png"
    run_demo(video, frames=60, retentions=(0.1,), png=png, progress=False, echo=lambda s: None)
    from PIL import Image

    with Image.open(png) as im:
        assert im.width <= 2000 and im.height <= 1200  # 32 of the 60 frames drawn


def test_output_names_the_encoder_and_counts_visual_tokens_as_everywhere(tmp_path, fake_vit, capsys):
    """Issue 21: the demo says which model it ran (the stand-in's real DINOv2 tower, no LLM, no answers),
    prints visual tokens in aot.efficiency's one form, and names its stages as the protocol does."""
    from aot.demo import DEMO_ENCODER, DEMO_NOTE

    js = tmp_path / "r.json"
    assert main(["demo", "--frames", "8", "--retention", "0.25", "--png", "none", "--no-progress",
                 "--threads", "1", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert f"encoder: {DEMO_ENCODER}" in out and f"note: {DEMO_NOTE}" in out
    assert "aot:dinov2-smollm2" in DEMO_ENCODER and "no LLM" in DEMO_NOTE
    assert f"visual tokens {8 * 196}:" in out and "| visual tokens in | visual tokens out |" in out
    result = json.loads(js.read_text())
    assert result["encoder"] == DEMO_ENCODER and result["note"] == DEMO_NOTE
    from aot.efficiency import STAGES

    assert set(result["timings_s"]) <= set(STAGES)
