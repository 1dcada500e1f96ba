"""Helpers shared by the comparison-method tests (test_methods_contract, _baselines, _peers)."""

import torch


def video(f, n, d=8, seed=0, dtype=torch.float32, still=0.0):
    """Random tokens; ``still`` > 0 mixes every frame towards frame 0 (so cells repeat over time)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(f, n, d, generator=g, dtype=torch.float64)
    x = still * x[:1] + (1 - still) * x
    return x.to(dtype), torch.rand(f, n, generator=g).to(dtype if dtype.is_floating_point else torch.float32)


def check_invariants(out, f, n, r):
    """The output contract of every method: exactly r rows, sizes = tokens absorbed, sorted positions."""
    a = out.assignment
    assert out.tokens.shape[0] == r and out.sizes.shape == (r,) and a.shape == (f * n,)
    assert torch.equal(torch.bincount(a[a >= 0], minlength=r), out.sizes)
    assert (out.positions.diff() > 0).all()  # sorted by (frame, position), one token per cell
    assert torch.equal(out.frames, out.positions // n)
    assert ((a >= -1) & (a < r)).all()
    assert torch.equal(a[out.positions], torch.arange(r))  # each output token sits on a cell it absorbed
