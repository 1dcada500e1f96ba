"""benchmarks/compress_speed.py: runs at the thread count asked, prints it, restores the caller's (issue 7)."""

import importlib.util
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compress_speed.py"
_spec = importlib.util.spec_from_file_location("compress_speed", _PATH)
compress_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compress_speed)


def test_thread_count_in_every_timing_column_and_restored(capsys, monkeypatch):
    seen = []
    real = compress_speed.aot.compress

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(compress_speed.aot, "compress", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compress_speed.main(["--shapes", "4x16x8", "--reps", "1", "--threads", "2", "--no-memory"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert set(seen) == {2}
    assert "| compress (ms, 2 threads) | dense matmul (ms, 2 threads) |" in out and ", 2 threads," in out


def test_set_overrides_reach_every_compress_call_and_bad_ones_fail_first(capsys, monkeypatch):
    configs = []
    real = compress_speed.aot.compress

    def spy(*args, **kwargs):
        configs.append(kwargs["config"])
        return real(*args, **kwargs)

    monkeypatch.setattr(compress_speed.aot, "compress", spy)
    compress_speed.main(["--shapes", "4x16x8", "--reps", "1", "--threads", "1", "--no-memory",
                         "--set", "keep_ref=keyframe", "--set", "unmatched_anchors=absorb", "--tol", "none"])
    want = compress_speed.aot.AOTConfig(retention=0.1, tol=None, keep_ref="keyframe", unmatched_anchors="absorb")
    assert configs and all(c == want for c in configs)
    assert "keep_ref=keyframe, unmatched_anchors=absorb" in capsys.readouterr().out
    configs.clear()
    compress_speed.main(["--shapes", "4x16x8", "--reps", "1", "--threads", "1", "--no-memory", "--set", "n_iters=20"])
    assert configs and all(c.n_iters == 20 for c in configs)  # taken, not overwritten by the script
    assert "(at most 20 iterations)" in capsys.readouterr().out
    configs.clear()
    for bad, named in (("keep_ref=sideways", "sideways"), ("nofield=1", "nofield"), ("keep_ref", "FIELD=VALUE"),
                       ("tol=0.5", "--tol"), ("retention=0.2", "fixed at 0.1")):
        try:
            compress_speed.main(["--shapes", "4x16x8", "--reps", "1", "--no-memory", "--set", bad])
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"--set {bad} was accepted")
        assert named in capsys.readouterr().err
    assert not configs  # rejected before any measurement
