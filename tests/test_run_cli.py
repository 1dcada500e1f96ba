"""`aot run` end to end on a tiny local checkpoint (saved here, loaded back by path) and a real video."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torchvision")

import aot  # noqa: E402
import hf_tiny  # noqa: E402
from aot.cli import main  # noqa: E402
from aot.demo import sample_video  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava-ov")
    hf_tiny.model().save_pretrained(path)
    hf_tiny.processor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint4(tmp_path_factory):
    """A 4-layer LLM: room for an in-LLM method's pruning layers."""
    path = tmp_path_factory.mktemp("tiny4")
    hf_tiny.model(text_layers=4).save_pretrained(path)
    hf_tiny.processor().save_pretrained(path)
    return path


def test_run_answers_and_reports_costs(checkpoint, tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = main(["run", "--model", str(checkpoint), "--video", str(sample_video()), "--question", "what moves ?",
               "--frames", "8", "--retention", "0.25", "--layers", "1,-2", "--max-new-tokens", "3",
               "--json", str(out), "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out.read_text())
    assert res["video_tokens_in"] == 8 * 16 and res["video_tokens_out"] == aot.budget(0.25, 8, 16)
    assert res["llm_video_tokens"] == res["video_tokens_out"] + 1
    assert res["prompt_tokens_in"] - res["prompt_tokens_out"] == 8 * 16 - res["video_tokens_out"]
    assert res["new_tokens"] == 3 and res["threads"] == 1
    for stage in ("decode", "preprocess", "vision tower", "scores", "compression", "prefill", "decoding"):
        assert stage in text and res["times_s"][stage] >= 0
    # FLOPs: Eq. 17 by hand for the tiny LLM (2 layers, d 64, m 128) on the visual tokens
    d, m, layers = 64, 128, 2
    eq17 = lambda n: layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) / 1e12  # noqa: E731
    assert res["prefill_tflops_visual"]["vanilla"] == pytest.approx(eq17(128))
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(eq17(32))


def test_run_errors_without_traceback(checkpoint, tmp_path, capsys):
    base = ["--video", str(sample_video()), "--question", "hi", "--layers", "1,-2"]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    cases = [
        (["run", "--model", str(tmp_path), *base], "cannot load --model"),
        (["run", "--model", str(checkpoint), "--video", str(bad), "--question", "hi", "--layers", "1,-2"], "broken.mp4"),
        (["run", "--model", str(checkpoint), *base[:4], "--layers", "9,-2"], "out of range"),
        (["run", "--model", str(checkpoint), *base, "--retention", "0"], "--retention"),
        (["run", "--model", str(checkpoint), *base, "--method", "aotx"], "unknown method"),
        (["run", "--model", str(checkpoint), *base, "--json", str(tmp_path / "no" / "x.json")], "does not exist"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (argv, err)


def test_run_rejects_an_unsupported_model(tmp_path, capsys):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path)
    rc = main(["run", "--model", str(tmp_path), "--video", str(sample_video()), "--question", "hi"])
    err = capsys.readouterr().err
    assert rc == 2 and "Qwen2ForCausalLM" in err and "LlavaOnevisionForConditionalGeneration" in err


def test_run_on_a_video_shorter_than_the_frames_asked(checkpoint, tmp_path, capsys):
    """carphone has 120 frames: asking for 200 samples each of them once and says so."""
    from pathlib import Path

    video = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "carphone_pristine.mp4"
    out = tmp_path / "short.json"
    rc = main(["run", "--model", str(checkpoint), "--video", str(video), "--question", "what moves ?",
               "--frames", "200", "--retention", "0.1", "--layers", "1,-2", "--max-new-tokens", "1",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out.read_text())
    assert res["frames_sampled"] == 120 and res["video_tokens_in"] == 120 * 16
    assert "video has 120 frames; sampled all 120 (asked for 200)" in text


def test_run_checks_the_method_budget_before_decoding(checkpoint, capsys, monkeypatch):
    import aot.video

    def no_decoding(*a, **k):
        raise AssertionError("decoded before the budget check")

    monkeypatch.setattr(aot.video, "read_frames", no_decoding)
    rc = main(["run", "--model", str(checkpoint), "--video", str(sample_video()), "--question", "hi",
               "--frames", "8", "--method", "dycoke", "--retention", "0.1", "--layers", "1,-2"])
    err = capsys.readouterr().err
    assert rc == 2 and "DyCoke" in err and "use retention >= 0.25" in err, err


def test_run_in_llm_method_reports_its_layer_schedule(checkpoint4, tmp_path, capsys):
    """aot run --method fastv: the whole prompt reaches the LLM; FLOPs are counted per layer."""
    path = checkpoint4
    out = tmp_path / "run.json"
    rc = main(["run", "--model", str(path), "--video", str(sample_video()), "--question", "what moves ?",
               "--frames", "8", "--retention", "0.25", "--method", "fastv", "--max-new-tokens", "2",
               "--json", str(out), "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out.read_text())
    n, kept = 8 * 16 + 1, aot.budget(0.25, 1, 8 * 16 + 1)  # the video's placeholders, newline included
    assert res["video_tokens_in"] == n and res["video_tokens_out"] == kept and res["new_tokens"] == 2
    assert res["times_s"]["vision tower"] > 0 and res["times_s"]["compression"] > 0
    d, m = 64, 128
    layer = lambda t: (4 * t * d * d + 2 * t * t * d + 2 * t * d * m) / 1e12  # noqa: E731
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(2 * layer(n) + 2 * layer(kept))
    text_tokens = res["prompt_tokens_in"] - n
    assert res["prefill_tflops_prompt"]["compressed"] == pytest.approx(
        2 * layer(n + text_tokens) + 2 * layer(kept + text_tokens))


@pytest.mark.parametrize("retention", [0.1, 0.07])
def test_run_small_budget_that_fits_is_not_refused(checkpoint, tmp_path, capsys, retention):
    """2 frames at 10% (or 7%): 2 x 16 LLM tokens (the tiny checkpoint's 4x4 grid a frame) keep
    round(0.1 * 32) = 3 (7%: round(2.24) = 2, at least AOT's one token for its clip of 2 frames); the old up-front
    check counted 1 token a frame (round(0.2) = 0) and refused."""
    out = tmp_path / "small.json"
    rc = main(["run", "--model", str(checkpoint), "--video", str(sample_video()), "--question", "what moves ?",
               "--frames", "2", "--retention", str(retention), "--layers", "1,-2", "--max-new-tokens", "1",
               "--json", str(out), "--threads", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(out.read_text())
    side = hf_tiny.IMAGE // hf_tiny.PATCH  # the tower's patch grid; transformers' bilinear pooling halves it, rounding up
    per_frame = ((side + 1) // 2) ** 2
    assert per_frame == 16
    want = int(retention * 2 * per_frame + 0.5)  # round half up, by hand
    assert want == {0.1: 3, 0.07: 2}[retention]
    assert res["video_tokens_in"] == 2 * per_frame and res["video_tokens_out"] == want


@pytest.mark.parametrize("frames, retention, extra, msg", [
    (2, 0.01, [], "keeps 0 of 32 tokens"),
    (4, 0.02, ["--set", "clip_length=2"], "below one token per clip (2 clips)")])
def test_run_refuses_an_infeasible_budget_before_loading_weights(checkpoint, capsys, monkeypatch, frames,
                                                                 retention, extra, msg):
    """2 frames at 1% keep round(0.32) = 0 of 32 tokens; 4 frames at 2% keep round(1.28) = 1, fewer
    than 2 clips of 2 frames (set: the default anchor_density makes one 4-frame clip there): one
    error line, before the weights load (so before decoding and the vision tower)."""
    import transformers

    import aot.video

    def forbidden(*a, **k):
        raise AssertionError("loaded weights or decoded before the budget check")

    monkeypatch.setattr(transformers.LlavaOnevisionForConditionalGeneration, "from_pretrained", forbidden)
    monkeypatch.setattr(aot.video, "read_frames", forbidden)
    rc = main(["run", "--model", str(checkpoint), "--video", str(sample_video()), "--question", "hi",
               "--frames", str(frames), "--retention", str(retention), "--layers", "1,-2", *extra])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("aot run: error: "), err
    assert msg in err and "Traceback" not in err, err


def test_run_sets_config_fields_pdrop_layers(checkpoint4, tmp_path, capsys):
    """aot run --method pdrop --set layers=1x3 on a 4-layer LLM: the video enters whole, half stays after
    layer 1 and a quarter after layer 3 (round half up, by hand); FLOPs per layer by hand (Eq. 17)."""
    path = checkpoint4
    out = tmp_path / "run.json"
    rc = main(["run", "--model", str(path), "--video", str(sample_video()), "--question", "what moves ?",
               "--frames", "8", "--retention", "0.5", "--method", "pdrop", "--set", "layers=1x3",
               "--max-new-tokens", "1", "--json", str(out), "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out.read_text())
    n = 8 * 16 + 1  # the video's placeholders, newline included
    half, quarter = int(0.5 * n + 0.5), int(0.25 * n + 0.5)
    assert res["video_tokens_in"] == n and res["video_tokens_out"] == quarter
    d, m = 64, 128
    layer = lambda t: (4 * t * d * d + 2 * t * t * d + 2 * t * d * m) / 1e12  # noqa: E731
    assert res["prefill_tflops_visual"]["compressed"] == pytest.approx(layer(n) + 2 * layer(half) + layer(quarter))


@pytest.mark.parametrize("extra, msg", [(["--set", "foo=1"], "has no field 'foo'"),
                                        (["--set", "n_iters"], "--set needs FIELD=VALUE"),
                                        (["--set", "n_iters=-3"], "n_iters")])
def test_run_refuses_a_bad_config_field_in_one_line(checkpoint, capsys, monkeypatch, extra, msg):
    import aot.video

    def forbidden(*a, **k):
        raise AssertionError("decoded before the config was checked")

    monkeypatch.setattr(aot.video, "read_frames", forbidden)
    rc = main(["run", "--model", str(checkpoint), "--video", str(sample_video()), "--question", "hi", *extra])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("aot run: error: ") and msg in err, err
