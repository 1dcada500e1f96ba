"""The plain scaling route of the Sinkhorn solver (aot.ot._sinkhorn_plain, issue 17: 4 operators an
iteration) against POT's ot.sinkhorn, the log-domain route, its own stop-group logic, and the
renormalised route's stopping behaviour."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import ot
import pytest
import torch

from aot.ot import _PLAIN_EXP, _sinkhorn_log, plain_bound, sinkhorn_, static_bound

_spec = importlib.util.spec_from_file_location("launches", Path(__file__).resolve().parents[1] / "benchmarks" / "launches.py")
launches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launches)


def _subset_marginals(g, p, m, n, dtype=torch.float64):
    """uniform over a random nonempty subset of each problem's rows / columns (AOT's marginals)."""
    rows = torch.rand(p, m, generator=g) < 0.8
    cols = torch.rand(p, n, generator=g) < 0.8
    rows[:, 0] = cols[:, 0] = True
    return (rows / rows.sum(-1, keepdim=True)).to(dtype), (cols / cols.sum(-1, keepdim=True)).to(dtype)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("reg", [0.1, 0.2])
def test_plain_route_matches_pot(seed, reg):
    g = torch.Generator().manual_seed(seed)
    p, m, n = 3, 7 + seed, 11 + 2 * seed
    cost = torch.rand(p, m, n, generator=g, dtype=torch.float64) * 2
    a, b = _subset_marginals(g, p, m, n)
    got = sinkhorn_(cost.clone(), reg, 50, a, b, None, plain=plain_bound(reg, m, n))
    for i in range(p):
        r, c = a[i] > 0, b[i] > 0  # POT on the support (zero-mass rows and columns are exactly zero here)
        ref = ot.sinkhorn(a[i][r].numpy(), b[i][c].numpy(), cost[i][r][:, c].numpy(), reg, numItermax=50, stopThr=0,
                          warn=False)
        np.testing.assert_allclose(got[i][r][:, c].numpy(), ref, rtol=1e-9, atol=1e-13)
        assert (got[i][~r] == 0).all() and (got[i][:, ~c] == 0).all()
    got32 = sinkhorn_(cost.float(), reg, 50, a.float(), b.float(), None, plain=plain_bound(reg, m, n))
    torch.testing.assert_close(got32.double(), got, rtol=1e-4, atol=1e-7)


def test_plain_route_stays_finite_at_its_limit():
    """The worst case plain_bound allows in float32: a reg at which the bound is just under the limit,
    a cost at both ends of [0, 2] in blocks (the kernel spans e^-2/reg), 729 columns: every plan entry
    finite, rows summing to a, and the log-domain route's plan."""
    m, n = 200, 729
    reg = 6.0 / (_PLAIN_EXP[torch.float32] - math.log(m) - math.log(n) - 0.5)  # 3 * 2 / reg + logs = limit - 0.5
    assert plain_bound(reg, m, n) <= _PLAIN_EXP[torch.float32]
    g = torch.Generator().manual_seed(0)
    cost = torch.zeros(2, m, n)
    cost[:, : m // 2, n // 3:] = 2.0  # half the rows far from two thirds of the columns
    cost[1] = torch.where(torch.rand(m, n, generator=g) < 0.5, cost[1], 2.0 - cost[1])
    a = torch.full((2, m), 1 / m)
    b = torch.full((2, n), 1 / n)
    plan = sinkhorn_(cost.clone(), reg, 100, a, b, None, plain=plain_bound(reg, m, n))
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.double().sum(-1), a.double(), rtol=1e-4, atol=1e-9)
    log = _sinkhorn_log(cost.double(), reg, 100, a.double(), b.double(), None)
    torch.testing.assert_close(plan.double(), log, rtol=2e-3, atol=1e-9)


def test_plain_route_is_chosen_only_within_its_bound():
    assert plain_bound(0.1, 55, 196) <= _PLAIN_EXP[torch.float32] < plain_bound(0.05, 55, 196)
    cost = torch.rand(2, 5, 6) * 2
    a, b = torch.full((2, 5), 1 / 5), torch.full((2, 6), 1 / 6)
    # beyond the bound the renormalised route runs: the same plan as without the plain argument, bit for bit
    want = sinkhorn_(cost.clone(), 0.05, 30, a, b, None, bound=static_bound(0.05, 5, 6))
    got = sinkhorn_(cost.clone(), 0.05, 30, a, b, None, bound=static_bound(0.05, 5, 6), plain=plain_bound(0.05, 5, 6))
    assert torch.equal(got, want)


def test_rows_output_is_the_row_normalised_plan():
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(4, 6, 9, generator=g, dtype=torch.float64) * 2
    a, b = _subset_marginals(g, 4, 6, 9)
    plan = sinkhorn_(cost.clone(), 0.1, 40, a, b, None, plain=plain_bound(0.1, 6, 9))
    rows = sinkhorn_(cost.clone(), 0.1, 40, a, b, None, plain=plain_bound(0.1, 6, 9), rows=True)
    keep = a > 0
    torch.testing.assert_close(rows[keep], (plan / plan.sum(-1, keepdim=True))[keep], rtol=1e-12, atol=1e-15)


def test_blocks_stop_as_each_group_alone_and_read_once_per_check():
    """blocks=3: three stop groups one after the other along dim 0 (the videos of a batch) stop at
    different checks, each bit for bit as alone, and the call reads the device once per check."""
    g = torch.Generator().manual_seed(0)
    m, n = 6, 9
    cost = torch.rand(3, 4, m, n, generator=g) * 2
    cost[1] *= 0.05  # nearly flat costs converge in fewer iterations
    a, b = torch.full((3, 4, m), 1 / m), torch.full((3, 4, n), 1 / n)
    tol, pb = 1e-4, plain_bound(0.1, m, n)
    flat = lambda t: t.reshape(12, *t.shape[2:])  # noqa: E731
    together = sinkhorn_(flat(cost).clone(), 0.1, 200, flat(a), flat(b), tol, blocks=3, plain=pb).view(3, 4, m, n)
    reads = []
    for i in range(3):
        alone = sinkhorn_(cost[i].clone(), 0.1, 200, a[i], b[i], tol, plain=pb)
        assert torch.equal(together[i], alone)
        reads.append(launches.count(lambda: sinkhorn_(cost[i].clone(), 0.1, 200, a[i], b[i], tol, plain=pb))["reads"])
    assert len(set(reads)) > 1, reads  # the groups really stop at different checks
    c = launches.count(lambda: sinkhorn_(flat(cost).clone(), 0.1, 200, flat(a), flat(b), tol, blocks=3, plain=pb))
    assert c["reads"] == max(reads), (c, reads)


@pytest.mark.parametrize("seed", range(6))
def test_plain_route_stops_at_the_same_check_as_the_renormalised_one(seed):
    """Same stopping behaviour: the number of checks read (one per check until the stop) is the same
    on both routes, and the plans agree to float32 rounding."""
    g = torch.Generator().manual_seed(seed)
    m, n = 20 + seed, 50
    cost = torch.rand(8, m, n, generator=g) * (0.5 + seed / 3)
    a, b = _subset_marginals(g, 8, m, n, torch.float32)
    for tol in (1e-2, 1e-3, 1e-4):
        plain = lambda: sinkhorn_(cost.clone(), 0.1, 100, a, b, tol, plain=plain_bound(0.1, m, n))  # noqa: E731
        renorm = lambda: sinkhorn_(cost.clone(), 0.1, 100, a, b, tol, bound=static_bound(0.1, m, n))  # noqa: E731
        assert launches.count(plain)["reads"] == launches.count(renorm)["reads"], tol
        torch.testing.assert_close(plain(), renorm(), rtol=1e-5, atol=1e-9)
