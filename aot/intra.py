"""Intra-frame OT aggregation (paper Eq. 9-12, DESIGN 2.3): fold every frame's other tokens into its anchors."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .indices import const
from .ot import plain_bound, sinkhorn_, static_bound

__all__ = ["IntraResult", "aggregate_intra", "cosine_cost"]


class IntraResult(NamedTuple):
    tokens: Tensor  # (F, M, d) updated anchors, float32
    sizes: Tensor  # (F, M) int64: how many input tokens each anchor now stands for
    owner: Tensor  # (F, N) int64 in [0, M): the anchor that absorbed each input token
    # (F, M, N) float32 (float64 for float64 x), no graph: tokens[f, j] = weights[f, j] @ x[f] (the
    # linear map of Eq. 11, anchor column included); None when every token is its anchor unchanged
    weights: Tensor | None = None


def cosine_cost(rows: Tensor, cols: Tensor, row_norms: Tensor, col_norms: Tensor) -> Tensor:
    """1 - cos for every pair: rows (B, m, d), cols (B, n, d), norms (B, m) and (B, n) -> (B, m, n).

    Normalises the small Gram matrix instead of the tokens, so no normalised copy of the (large)
    token tensor is ever made. Clamped to [0, 2] against rounding. Differentiable.
    """
    gram = rows @ cols.transpose(-1, -2)  # (B, m, n)
    cos = gram / (row_norms.unsqueeze(-1) * col_norms.unsqueeze(-2))
    cost = 1.0 - cos
    return cost.clamp(0.0, 2.0) if tracks_grad(cost) else cost.clamp_(0.0, 2.0)


def tracks_grad(*tensors: Tensor) -> bool:
    """True when autograd records a graph through any of ``tensors``: then nothing may be done in place."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def normalise(w: Tensor, dim: int) -> Tensor:
    """w divided by its sums along ``dim``; an all-zero slice stays zero. (Dividing by a clamped tiny
    sum instead gives that slice NaN gradients: 0 / tiny^2 in the backward of the division.)"""
    den = w.sum(dim, keepdim=True)
    return w / torch.where(den > 0, den, torch.ones_like(den))


def aggregate_intra(
    x: Tensor,
    norms: Tensor,
    anchors: Tensor,
    valid: Tensor | None = None,
    *,
    reg: float = 0.1,
    n_iters: int = 100,
    tol: float | None = None,
    lam: float = 1.0,
    mass: str = "unit",
    merge: str = "ot",
    videos: int = 1,
    counts: list[int] | None = None,
) -> IntraResult:
    """Eq. 9-11 for every frame at once.

    x: (F, N, d) float tokens; norms: (F, N) their L2 norms (> 0); anchors: (F, M) indices;
    valid: (F, M) bool, False on padding slots (frames with fewer anchors; default all valid).
    The plan T (F, M, N) runs from the m_f anchors of frame f (rows, uniform 1/m_f) to its
    N - m_f other tokens (columns, uniform; anchor columns get zero mass, so no gather of the
    others is needed). mass="unit" uses T~ = m_f T, so each anchor receives one unit of context
    (DESIGN 2.3); mass="literal" uses T as Eq. 10 writes it. Then
    a_j <- (a_j + lam * sum_i T~_ji u_i) / (1 + lam * sum_i T~_ji).
    Every other token is owned by the anchor that receives most of its mass (argmax over the plan
    column), which makes the sizes sum to N per frame. Padding slots come back unchanged, size 0.
    merge (ablations): "cosine" replaces the plan by cosine-similarity weights (each token spreads
    the same 1/(N - m_f) over the anchors in proportion to max(cos, 0)); "none" drops the other
    tokens (owner -1) and returns the anchors unchanged.
    Differentiable w.r.t. x (and norms) when they require grad: then the same arithmetic runs out of
    place; otherwise the big temporaries are reused in place.
    counts: anchors per frame as Python ints, when the caller knows them (all equal to M: the
    padding logic is skipped, fewer operators, the same numbers).
    videos: x holds the frames of this many videos one after the other (F = videos * frames each);
    each video's Sinkhorn stops as it would alone. No host read unless M == N (a frame may be all
    anchors) or reg is so small that the Sinkhorn route must be read from the cost.
    """
    f, n, d = x.shape
    m = anchors.shape[1]
    dev = x.device
    grad = tracks_grad(x, norms)
    if valid is None:
        valid = torch.ones(f, m, dtype=torch.bool, device=dev)
    uniform = counts is not None and min(counts) == m  # every slot valid (known from Python: fewer operators)
    counts = m if uniform else valid.sum(1)  # (F,) anchors per frame
    if x.is_contiguous():  # whole rows by one index (a gather over d indexes every element: several times slower)
        flat = (anchors + const([[i * n] for i in range(f)], dev)).flatten()
        a = x.view(f * n, d).index_select(0, flat).view(f, m, d)  # (F, M, d)
    else:
        a = x.gather(1, anchors.unsqueeze(-1).expand(f, m, d))
    slot = const(list(range(m)), dev).expand(f, m)
    is_anchor = torch.zeros(f, n, dtype=torch.bool, device=dev)
    if uniform:
        own_idx, own_slot = anchors, slot
    else:
        own_idx = torch.where(valid, anchors, anchors[:, :1])  # padding redirected to slot 0's token
        own_slot = torch.where(valid, slot, 0)
    is_anchor.scatter_(1, own_idx, True)
    # frames where every token is an anchor (m < n: none, known without a read)
    full = None if m < n or uniform else counts == n
    if merge == "none" or (m == n and (uniform or bool(full.all()))):
        owner = torch.full((f, n), -1, dtype=torch.long, device=dev).scatter_(1, own_idx, own_slot)
        return IntraResult(a.clone(), valid.long(), owner, None)
    # full frames get a dummy uniform problem (a column needs mass) whose plan is zeroed below
    others = ~is_anchor if full is None else torch.where(full.unsqueeze(1), torch.ones_like(is_anchor), ~is_anchor)
    # uniform over each frame's other tokens (bool / int64 divides in float32: the same values)
    col_mass = others / others.sum(1, keepdim=True) if x.dtype == torch.float32 else \
        others.to(x.dtype) / others.sum(1, keepdim=True)
    # (F, 1, M) row-shaped for the solver when uniform
    row_mass = x.new_full((f, 1, m), 1.0 / m) if uniform else valid.to(x.dtype) / counts.unsqueeze(1)
    cost = cosine_cost(a, x, norms.gather(1, anchors), norms)  # (F, M, N)
    if merge == "cosine":
        weights = 1.0 - cost
        weights = (weights.clamp(min=0.0) if grad else weights.clamp_(min=0.0)) * valid.unsqueeze(-1)  # (F, M, N)
        plan = normalise(weights, 1) * col_mass.unsqueeze(1)  # a token no anchor resembles: zero column
    else:
        # (F, M, N); the cost is ours and not needed after, so the solver may reuse its storage
        plan = sinkhorn_(cost, reg, n_iters, row_mass, col_mass, tol, blocks=videos, bound=static_bound(reg, m, n),
                         plain=plain_bound(reg, m, n))
        del cost
    if full is not None:  # only a full frame has mass on anchor columns (m < n: anchor columns have none)
        keep = (~is_anchor).unsqueeze(1)
        plan = plan * keep if grad else plan.mul_(keep)
    if mass == "unit":
        scale = float(m) if uniform else counts.to(x.dtype).view(f, 1, 1)
        plan = plan * scale if grad else plan.mul_(scale)
    recv = plan.sum(-1, keepdim=True)  # (F, M, 1)
    # (a + lam * ctx) / (1 + lam * recv), ctx = plan @ x: anchor columns carry zero plan, so only
    # the other tokens contribute. Without a graph in a's storage: M/N of the input is the only big
    # temporary; with one, a is saved by the cost's product and must stay as it is
    if grad:
        denom = recv * lam + 1.0
        tokens = torch.baddbmm(a, plan, x, alpha=lam) / denom
    else:
        denom = recv.mul_(lam).add_(1.0)
        tokens = a.baddbmm_(plan, x, alpha=lam).div_(denom)  # (F, M, d)
    # (F, N); padding rows have zero plan (cosine: zero weight) and never win
    owner = plan.argmax(dim=1)
    # a token that gives no anchor any weight (cosine merge: it resembles none) is dropped, not owned
    if merge != "ot":  # (OT: every column of mass has a positive entry in every valid row)
        owner = torch.where(plan.detach().amax(dim=1) > 0, owner, -1)
    owner.scatter_(1, own_idx, own_slot)
    sizes = torch.zeros(f, m, dtype=torch.long, device=dev)
    if merge == "ot":  # every token owned: one count each
        sizes.scatter_add_(1, owner, torch.ones_like(owner))
    else:
        sizes.scatter_add_(1, owner.clamp(min=0), (owner >= 0).long())
    with torch.no_grad():  # the map of Eq. 11: lam T~ / denom on the others, 1 / denom on the anchor itself
        inv = denom.detach().reciprocal()  # (F, M, 1)
        weights = plan.detach() * (inv * lam) if grad else plan.mul_(inv * lam)
        weights.scatter_add_(2, anchors.unsqueeze(-1), inv)
    return IntraResult(tokens, sizes, owner, weights)
