"""Bad inputs and faults of ``aot run``, ``aot demo``, ``aot flops`` and ``aot.budget`` (issue 20):
every user mistake one line naming the value, exit code 2, raised before any model load (the
stand-in ``aot:dinov2-smollm2`` included: the loader is replaced by one that fails the test), FIFOs
refused instead of hanging, damaged frames reported, frame memory capped, and the benchmarks'
``torch.load`` calls safe."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("av")

import aot  # noqa: E402
import hf_tiny  # noqa: E402
from aot.cli import main  # noqa: E402
from aot.demo import sample_video  # noqa: E402
from faults_media import damaged_video, make_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STANDIN = "aot:dinov2-smollm2"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-run-faults")
    hf_tiny.model().save_pretrained(path)
    hf_tiny.processor().save_pretrained(path)
    return path


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: what it guards is checked before loading."""
    import aot.models.assembled
    import aot.run

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(aot.run, "load", refuse)
    monkeypatch.setattr(aot.models.assembled, "load_dinov2_smollm2", refuse)


def run_argv(model, *extra, video=None):
    return ["run", "--model", str(model), "--video", str(video or sample_video()), "--question", "what?",
            "--threads", "1", *extra]


def one_line_error(capsys, command: str = "run") -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"aot {command}: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------ 7: checked before the load


@pytest.mark.parametrize("model", [STANDIN, "checkpoint"])
def test_checks_before_the_load_for_every_model(checkpoint, tmp_path, capsys, no_load, model):
    model = checkpoint if model == "checkpoint" else model
    text = tmp_path / "clip.mp4"
    text.write_text("not a video\n")
    depth = 12 if model == STANDIN else 6
    cases = [
        (run_argv(model, video=text), "is not a readable video"),
        (run_argv(model, "--device", "tpu9"), "--device 'tpu9' is not a device"),
        (run_argv(model, "--layers", f"1,{depth}"), f"vision layer {depth} is out of range: the tower has {depth}"),
        (run_argv(model, "--layers", f"-{depth + 1},1"), f"layer -{depth + 1} is out of range"),
        (run_argv(model, "--set", "retention=0.5"), "--set retention=0.5: set the retention with --retention"),
    ]
    if model == STANDIN:  # the stand-in's grid (14x14) is known without weights
        cases.append((run_argv(model, "--method", "dycoke", "--retention", "0.1"), "DyCoke keeps the first frame"))
    for argv, msg in cases:
        assert main(argv) == 2, argv
        assert msg in one_line_error(capsys), argv


def test_cuda_without_a_gpu_is_one_line(capsys, no_load):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(run_argv(STANDIN, "--device", "cuda")) == 2
    assert "--device 'cuda': no CUDA GPU is available here" in one_line_error(capsys)


def test_paths_are_named_for_what_they_are(tmp_path, capsys, no_load):
    (tmp_path / "clips").mkdir()
    assert main(run_argv(STANDIN, video=tmp_path / "clips")) == 2
    assert "is a folder" in one_line_error(capsys)
    assert main(run_argv("./no-such/checkpoint")) == 2  # path-like: no hub lookup, no retries
    assert "--model './no-such/checkpoint': no such folder" in one_line_error(capsys)
    assert main(run_argv(tmp_path / "typo-ckpt")) == 2
    assert "no such folder" in one_line_error(capsys)


def test_frame_memory_limit_before_the_load(capsys, no_load, monkeypatch):
    monkeypatch.setenv("AOT_MAX_FRAME_BYTES", str(10**8))  # 100 MB: 32 frames of 1280x720 are 88 MB
    assert main(run_argv(STANDIN, "--frames", "100")) == 2
    err = one_line_error(capsys)
    assert "100 frames of 1280x720 need 276.48 MB" in err and "at most 36 frames" in err


# ------------------------------------------------------------------------------------ 11: FIFOs


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("argv", [["run", "--model", STANDIN, "--video", "V", "--question", "q", "--json", "FIFO"],
                                  ["demo", "--png", "FIFO"], ["demo", "--png", "none", "--json", "FIFO"]])
def test_output_fifo_is_refused_at_once(tmp_path, argv):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    argv = [str(fifo) if a == "FIFO" else str(sample_video()) if a == "V" else a for a in argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "aot", *argv], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a regular file" in res.stderr and "Traceback" not in res.stderr, res.stderr


# ------------------------------------------------------------------------------------ 13: damaged frames


def test_run_reports_damaged_frames(checkpoint, tmp_path, capsys):
    bugy = damaged_video(tmp_path / "bugy.mp4")
    assert main(run_argv(checkpoint, "--frames", "8", "--max-new-tokens", "2", "--layers", "1,-2",
                         "--json", str(tmp_path / "r.json"), video=bugy)) == 0
    err = capsys.readouterr().err
    assert "aot run: warning:" in err and "decoder error(s)" in err and "frame(s) decoded damaged" in err
    clean = make_video(tmp_path / "clean.mp4", frames=12, size=64)
    assert main(run_argv(checkpoint, "--frames", "8", "--max-new-tokens", "2", "--layers", "1,-2", video=clean)) == 0
    assert "warning" not in capsys.readouterr().err


def test_read_frames_counts_the_damage(tmp_path):
    from aot.video import read_frames

    clip = read_frames(damaged_video(tmp_path / "bugy.mp4"), 8)
    assert clip.errors > 0 and clip.corrupt > 0 and clip.damage
    clean = read_frames(sample_video(), 8)
    assert (clean.errors, clean.corrupt, clean.skipped, clean.damage) == (0, 0, 0, None)


# ------------------------------------------------------------------------------------ 12: budgets


def test_budget_refuses_impossible_counts():
    for frames, tokens in [(-4, 16), (0, 16), (4, 0), (2.0, 16), (True, 16)]:
        with pytest.raises(ValueError, match="must be an int >= 1"):
            aot.budget(0.1, frames, tokens)
    assert aot.budget(0.1, 4, 16) == 6  # round(6.4)
    import numpy as np

    assert aot.budget(0.1, np.int64(4), 16) == 6  # shapes and counts from numpy still work


def test_flops_refuses_a_budget_of_zero_tokens(capsys, tmp_path):
    assert main(["flops", "--frames", "1", "--tokens-per-frame", "1", "--retention", "0.1"]) == 2
    assert "--retention 0.1 keeps 0 of 1 visual tokens" in one_line_error(capsys, "flops")
    assert main(["flops", "--frames", "1", "--tokens-per-frame", "1"]) == 0  # the defaults: refused ones left out
    res = capsys.readouterr()
    assert "| 100% | 1 |" in res.out and "| 10% |" not in res.out and "left out" in res.err
    bad = tmp_path / "cfg.json"
    for content, msg in [("[1, 2]", "holds a JSON list"), ("\xff\xfe", "is not a JSON file"), ("{", "is not a JSON")]:
        bad.write_text(content, encoding="latin-1")
        assert main(["flops", "--config", str(bad)]) == 2
        assert msg in one_line_error(capsys, "flops")


# ------------------------------------------------------------------------------------ 15: torch.load


def test_benchmarks_load_tensors_with_weights_only():
    calls = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((f"{path.name}:{node.lineno}", ok))
    assert calls, "no torch.load call found: the test looks in the wrong place"
    assert [c for c, ok in calls if not ok] == []
