"""Intra-frame OT aggregation (Eq. 9-12) against a plain loop with POT, and hand-made cases."""

import numpy as np
import ot
import pytest
import torch

from aot.intra import aggregate_intra


def _loop_reference(x, anchors, reg, iters, lam, mass):
    """Per frame, numpy: gather the unanchored tokens, POT plan on 1 - cos, Eq. 10-11 by loops."""
    out, owners = [], []
    for f in range(x.shape[0]):
        xf = x[f].double().numpy()
        idx = anchors[f].tolist()
        rest = [i for i in range(xf.shape[0]) if i not in idx]
        a, u = xf[idx], xf[rest]
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        un = u / np.linalg.norm(u, axis=1, keepdims=True)
        cost = 1 - an @ un.T
        m = len(idx)
        plan = ot.sinkhorn(np.full(m, 1 / m), np.full(len(rest), 1 / len(rest)), cost, reg,
                           numItermax=iters, stopThr=0, warn=False)
        if mass == "unit":
            plan = plan * m
        new = np.empty_like(a)
        for j in range(m):
            received = sum(plan[j, i] for i in range(len(rest)))
            ctx = sum(plan[j, i] * u[i] for i in range(len(rest)))
            new[j] = (a[j] + lam * ctx) / (1 + lam * received)
        owner = np.empty(xf.shape[0], dtype=int)
        owner[idx] = np.arange(m)
        owner[rest] = plan.argmax(0)
        out.append(new)
        owners.append(owner)
    return np.stack(out), np.stack(owners)


@pytest.mark.parametrize("mass, lam", [("unit", 1.0), ("literal", 1.0), ("unit", 0.1)])
def test_matches_loop(mass, lam):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 30, 8, generator=g, dtype=torch.float64)
    anchors = torch.stack([torch.randperm(30, generator=g)[:7].sort().values for _ in range(3)])
    got = aggregate_intra(x, x.norm(dim=-1), anchors, reg=0.1, n_iters=50, lam=lam, mass=mass)
    ref_tokens, ref_owner = _loop_reference(x, anchors, 0.1, 50, lam, mass)
    np.testing.assert_allclose(got.tokens.numpy(), ref_tokens, rtol=1e-8, atol=1e-10)
    assert np.array_equal(got.owner.numpy(), ref_owner)
    assert got.sizes.sum(1).tolist() == [30, 30, 30]
    assert torch.equal(got.sizes, torch.stack([torch.bincount(o, minlength=7) for o in got.owner]))


def test_one_obvious_neighbour_takes_exactly_the_eq11_update():
    # two anchors e1, e2 and two others: u1 along e1, u2 along e2 (orthogonal to the other anchor).
    # With a small reg the plan is diag(1/2): under unit mass each anchor receives exactly one unit
    # from its neighbour, a_j <- (a_j + lam u_j) / (1 + lam); literally, half a unit.
    e = torch.eye(4, dtype=torch.float64)
    x = torch.stack([e[0], e[1], 3 * e[0] + 0.0 * e[2], 2 * e[1]]).unsqueeze(0)  # (1, 4, 4)
    anchors = torch.tensor([[0, 1]])
    for lam in (1.0, 0.3):
        got = aggregate_intra(x, x.norm(dim=-1), anchors, reg=0.01, n_iters=200, lam=lam, mass="unit")
        torch.testing.assert_close(got.tokens[0, 0], (e[0] + lam * 3 * e[0]) / (1 + lam))
        torch.testing.assert_close(got.tokens[0, 1], (e[1] + lam * 2 * e[1]) / (1 + lam))
        lit = aggregate_intra(x, x.norm(dim=-1), anchors, reg=0.01, n_iters=200, lam=lam, mass="literal")
        torch.testing.assert_close(lit.tokens[0, 0], (e[0] + lam * 0.5 * 3 * e[0]) / (1 + lam * 0.5))
        assert got.owner.tolist() == [[0, 1, 0, 1]] and got.sizes.tolist() == [[2, 2]]


def test_padding_slots_equal_separate_frames():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 25, 6, generator=g)
    a0, a1 = torch.tensor([1, 5, 9, 20]), torch.tensor([0, 3, 11])
    padded = torch.stack([a0, torch.cat([a1, a1[-1:]])])
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    got = aggregate_intra(x, x.norm(dim=-1), padded, valid)
    for f, a in enumerate((a0, a1)):
        ref = aggregate_intra(x[f:f + 1], x[f:f + 1].norm(dim=-1), a.unsqueeze(0))
        torch.testing.assert_close(got.tokens[f, :len(a)], ref.tokens[0])
        assert torch.equal(got.owner[f], ref.owner[0])
        assert torch.equal(got.sizes[f, :len(a)], ref.sizes[0])
    assert got.sizes[1, 3] == 0


def test_all_anchors_is_identity():
    x = torch.randn(2, 9, 4)
    anchors = torch.arange(9).expand(2, 9)
    got = aggregate_intra(x, x.norm(dim=-1), anchors)
    torch.testing.assert_close(got.tokens, x)
    assert (got.sizes == 1).all() and torch.equal(got.owner, anchors)
