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
