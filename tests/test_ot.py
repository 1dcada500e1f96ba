"""aot.sinkhorn against POT's ot.sinkhorn, a per-problem loop, and its own log-domain route."""

import numpy as np
import ot
import pytest
import torch

import aot
from aot.ot import _sinkhorn_log, _sinkhorn_scaling


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("reg", [0.05, 0.1, 0.3, 1.0])
def test_matches_pot_uniform(seed, reg):
    g = torch.Generator().manual_seed(seed)
    m, n = torch.randint(1, 40, (2,), generator=g).tolist()
    iters = int(torch.randint(1, 120, (1,), generator=g))
    cost = torch.rand(m, n, generator=g, dtype=torch.float64) * 2
    ref = ot.sinkhorn(np.full(m, 1 / m), np.full(n, 1 / n), cost.numpy(), reg,
                      numItermax=iters, stopThr=0, warn=False)
    got = aot.sinkhorn(cost, reg, iters)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)
    got32 = aot.sinkhorn(cost.float(), reg, iters)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_matches_pot_weighted_marginals(seed):
    rng = np.random.default_rng(seed)
    m, n = rng.integers(2, 30, 2)
    a, b = rng.random(m) + 0.1, rng.random(n) + 0.1
    a, b = a / a.sum(), b / b.sum()
    cost = rng.random((m, n)) * 2
    ref = ot.sinkhorn(a, b, cost, 0.1, numItermax=100, stopThr=0, warn=False)
    got = aot.sinkhorn(torch.tensor(cost), 0.1, 100, a=torch.tensor(a), b=torch.tensor(b))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_batched_equals_loop():
    cost = torch.rand(3, 4, 9, 11, dtype=torch.float64) * 2
    a = torch.rand(3, 4, 9, dtype=torch.float64) + 0.1
    a = a / a.sum(-1, keepdim=True)
    batched = aot.sinkhorn(cost, 0.1, 60, a=a)
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(batched[i, j], aot.sinkhorn(cost[i, j], 0.1, 60, a=a[i, j]))


def test_log_and_scaling_routes_agree():
    cost = torch.rand(5, 12, 17, dtype=torch.float64) * 2
    a = torch.full((5, 12), 1 / 12, dtype=torch.float64)
    b = torch.full((5, 17), 1 / 17, dtype=torch.float64)
    for reg in (0.05, 0.5):
        torch.testing.assert_close(_sinkhorn_log(cost, reg, 80, a, b, None),
                                   _sinkhorn_scaling(cost, reg, 80, a, b, None))


def test_small_reg_takes_log_route_and_stays_finite():
    # float32 with cost range / reg = 400: the scaling route would underflow, the log route must not
    cost = torch.rand(6, 8) * 2
    plan = aot.sinkhorn(cost, 0.005, 200)
    assert torch.isfinite(plan).all()
    ref = ot.bregman.sinkhorn_log(np.full(6, 1 / 6), np.full(8, 1 / 8), cost.double().numpy(), 0.005,
                          numItermax=200, stopThr=0, warn=False)
    np.testing.assert_allclose(plan.double().numpy(), ref, atol=2e-5)


def test_zero_marginals_mask_rows_and_columns():
    cost = torch.rand(7, 9, dtype=torch.float64) * 2
    a = torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.float64) / 5
    b = torch.tensor([1, 0, 1, 1, 1, 1, 1, 1, 0], dtype=torch.float64) / 7
    plan = aot.sinkhorn(cost, 0.1, 100, a=a, b=b)
    assert (plan[a == 0] == 0).all() and (plan[:, b == 0] == 0).all()
    reduced = aot.sinkhorn(cost[a > 0][:, b > 0], 0.1, 100)
    torch.testing.assert_close(plan[a > 0][:, b > 0], reduced)


def test_half_precision_in_float32_out():
    cost = (torch.rand(4, 30, 50) * 2).to(torch.bfloat16)
    plan = aot.sinkhorn(cost, 0.1, 100)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(-1), torch.full((4, 30), 1 / 30))


def test_early_stop_meets_tolerance():
    cost = torch.rand(16, 24, dtype=torch.float64) * 2
    plan = aot.sinkhorn(cost, 0.1, 1000, tol=1e-6)
    assert (plan.sum(0) - 1 / 24).abs().sum() < 1e-6
    torch.testing.assert_close(plan, aot.sinkhorn(cost, 0.1, 2000), atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(cost=[[0.0]]), TypeError, "torch.Tensor"),
        (dict(cost=torch.ones(3, 3, dtype=torch.long)), TypeError, "floating"),
        (dict(cost=torch.ones(3)), ValueError, "(..., m, n)"),
        (dict(cost=torch.tensor([[0.0, float("nan")]])), ValueError, "NaN"),
        (dict(cost=torch.ones(2, 2), reg=0.0), ValueError, "reg"),
        (dict(cost=torch.ones(2, 2), n_iters=0), ValueError, "n_iters"),
        (dict(cost=torch.ones(2, 2), a=torch.tensor([0.5, 0.5]), b=torch.tensor([1.0, 1.0])), ValueError, "equal totals"),
        (dict(cost=torch.ones(2, 2), a=torch.tensor([1.0, 0.0, 0.0])), ValueError, "last dimension 2"),
        (dict(cost=torch.ones(2, 2), a=torch.tensor([-1.0, 2.0])), ValueError, "nonnegative"),
    ],
)
def test_bad_input(kwargs, exc, words):
    with pytest.raises(exc, match=None) as info:
        aot.sinkhorn(**kwargs)
    assert words in str(info.value)


@pytest.fixture
def no_scalar_reads_of_graph_tensors(monkeypatch):
    """float()/item() of a tensor that requires grad is what makes torch warn (once per process,
    so a warning filter alone cannot see it in a long test session): make it an error."""
    for name in ("__float__", "item"):
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name):
            if self.requires_grad:
                raise AssertionError(f"{_name} of a tensor that requires grad")
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, guarded)


def test_requires_grad_input_no_warning_same_plan_and_gradients(recwarn, no_scalar_reads_of_graph_tensors):
    # issue 7: a cost with requires_grad made float() on it warn; the plan must not change
    cost = torch.rand(3, 6, 5)
    plain = aot.sinkhorn(cost, reg=0.1, n_iters=50)
    tracked = cost.clone().requires_grad_()
    plan = aot.sinkhorn(tracked, reg=0.1, n_iters=50, tol=1e-9)
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]
    torch.testing.assert_close(plan.detach(), aot.sinkhorn(cost, reg=0.1, n_iters=50, tol=1e-9), rtol=0, atol=0)
    torch.testing.assert_close(aot.sinkhorn(tracked, reg=0.1, n_iters=50).detach(), plain, rtol=0, atol=0)
    plan.sum().backward()  # no in-place op breaks the graph
    assert tracked.grad is not None and torch.isfinite(tracked.grad).all()
    assert torch.equal(tracked.detach(), cost)  # the caller's tensor is untouched


@pytest.mark.parametrize("scale", [1.0, 100.0])  # scaling route, log route
def test_sinkhorn_gradient_is_correct(scale):
    cost = (torch.rand(2, 3, 4, dtype=torch.float64) * scale).requires_grad_()
    a = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: aot.sinkhorn(c, reg=0.5, n_iters=20, a=a), (cost,))


def test_compress_with_requires_grad_input_does_not_warn(recwarn, no_scalar_reads_of_graph_tensors):


    x = torch.randn(8, 49, 16)
    scores = torch.rand(8, 49)
    ref = aot.compress(x, scores, config=aot.AOTConfig(retention=0.2))
    out = aot.compress(x.clone().requires_grad_(), scores, config=aot.AOTConfig(retention=0.2))
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]
    torch.testing.assert_close(out.tokens.detach(), ref.tokens, rtol=0, atol=0)
