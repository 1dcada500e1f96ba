"""benchmarks/count_probe.py: the tracer channels measure how much of each needle showing an output row holds."""

import importlib.util
import sys
from pathlib import Path

import torch

import aot.methods as M

_ROOT = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_ROOT))
_spec = importlib.util.spec_from_file_location("count_probe", _ROOT / "count_probe.py")
count_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(count_probe)


def _video(f=8, n=16, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, d, generator=g) + 0.1 * torch.randn(f, n, d, generator=g)
    return x, torch.rand(f, n, generator=g)


def test_identity_holds_each_showing_whole_in_its_own_rows():
    x, s = _video()
    frames = torch.tensor([1, 6])
    cells = torch.zeros(2, 16, dtype=torch.bool)
    cells[0, [2, 3]] = True
    cells[1, [9]] = True
    m = M.get("aot")
    out, w = count_probe.needle_weights(m, m.config(retention=1.0), x, s, s, (4, 4), frames, cells)
    want = torch.zeros(8 * 16, 2)
    want[1 * 16 + 2, 0] = want[1 * 16 + 3, 0] = want[6 * 16 + 9, 1] = 1.0
    torch.testing.assert_close(w, want)
    assert out.tokens.shape == (8 * 16, 12 + 2)


def test_weights_of_averaging_methods_are_convex_and_match_the_assignment():
    x, s = _video(seed=1)
    frames = torch.tensor([2])
    cells = torch.zeros(1, 16, dtype=torch.bool)
    cells[0, [5, 6, 9, 10]] = True
    for name in ("aot", "pooling", "aot-no-ot"):
        m = M.get(name)
        out, w = count_probe.needle_weights(m, m.config(retention=0.25), x, s, s, (4, 4), frames, cells)
        assert (w >= -1e-5).all() and (w <= 1 + 1e-5).all(), name
        # a row holds needle only if some needle token was assigned to it or folded into it
        rows = set(out.assignment[2 * 16 + torch.tensor([5, 6, 9, 10])].tolist()) - {-1}
        assert rows or name == "aot-no-ot", name
        if name == "pooling":  # plain averages: the weight is the needle's share of the pooled cells
            for r in rows:
                members = (out.assignment == r).sum()
                needle = sum(int(out.assignment[2 * 16 + c] == r) for c in (5, 6, 9, 10))
                torch.testing.assert_close(w[r, 0], torch.tensor(needle / float(members)))
        if name == "aot-no-ot":  # no merging: needle rows are needle tokens, the rest hold none
            assert set(torch.nonzero(w[:, 0] > 1e-6).flatten().tolist()) == rows
            assert all(abs(float(w[r, 0]) - 1.0) < 1e-5 for r in rows)
