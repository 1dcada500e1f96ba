"""Entropic optimal transport: a batched Sinkhorn-Knopp solver (paper Eq. 3-5, Sec. 6.2).

Two numerically different routes give the same plan:

* scaling domain (``u = a / K v``, ``v = b / K^T u``), a pair of batched mat-vecs per iteration.
  It is the fast route and it is used only when it provably cannot overflow or underflow: the
  cost is shifted so its minimum is 0, ``u`` is renormalised to max 1 every iteration, and then
  every intermediate lies within ``exp(+-r)`` times the marginal ratios and sizes, where
  ``r = (max C - min C) / reg``. For AOT's cosine cost (range <= 2) and reg = 0.1, r <= 20.
* log domain (potentials f, g with logsumexp), used whenever that bound does not hold.

Both follow POT's ``sinkhorn_knopp`` iteration order (v first, then u), so after the same number
of iterations they agree with ``ot.sinkhorn``. Work happens in float32 (float64 if the cost is
float64) whatever the input dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sinkhorn"]

# exp(+-_SAFE_EXP) with the sizes and marginal ratios folded in stays inside the normal range.
_SAFE_EXP = {torch.float32: 75.0, torch.float64: 600.0}
_CHECK_EVERY = 10  # early-stop checks cost a host sync; do them every few iterations


def sinkhorn(
    cost: Tensor,
    reg: float = 0.1,
    n_iters: int = 100,
    *,
    a: Tensor | None = None,
    b: Tensor | None = None,
    tol: float | None = None,
) -> Tensor:
    """Entropic OT plan.

    cost: (..., m, n) floating, finite. a: (..., m) and b: (..., n) nonnegative marginals with
    equal totals (broadcast over the leading dims; zeros mask rows/columns out, e.g. padding);
    default uniform 1/m and 1/n. tol: stop early once the L1 error of the column marginal is
    below tol for every problem of the batch (checked every 10 iterations).
    Returns the plan T (..., m, n) in float32 (float64 for float64 cost): T 1 = a, T^T 1 ~ b.
    Differentiable: when cost, a or b require grad (and grad mode is on) the plan carries their
    graph (the iterations are unrolled, nothing is done in place).
    """
    work, a, b, dtype = _check(cost, reg, n_iters, a, b, tol)
    if work is cost and not _tracks_grad(work, a, b):  # never overwrite the caller's tensor
        work = work.clone()
    return sinkhorn_(work, reg, n_iters, a, b, tol)


def _tracks_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def sinkhorn_(cost: Tensor, reg: float, n_iters: int, a: Tensor, b: Tensor, tol) -> Tensor:
    """``sinkhorn`` on checked inputs that may overwrite ``cost`` (float32/64, finite) to save memory.

    a, b: full marginals (..., m), (..., n). The returned plan may share cost's storage, except
    when an input requires grad: then nothing is overwritten and the plan is differentiable.
    """
    m, n = cost.shape[-2:]
    grad = _tracks_grad(cost, a, b)
    cmin = cost.amin(dim=(-2, -1), keepdim=True)
    cmax = cost.amax(dim=(-2, -1), keepdim=True)
    # the route choice is a number, not part of the graph: detach before reading it
    r = float(((cmax - cmin) / reg).max().detach()) if cost.numel() else 0.0
    r += math.log(max(m, n)) + _log_ratio(a) + _log_ratio(b)
    shifted = cost - cmin if grad else cost.sub_(cmin)  # same plan, kernel entries in [exp(-range/reg), 1]
    if r <= _SAFE_EXP[cost.dtype]:
        return _sinkhorn_scaling(shifted, reg, n_iters, a, b, tol, grad)
    return _sinkhorn_log(shifted, reg, n_iters, a, b, tol)


def _sinkhorn_scaling(cost: Tensor, reg: float, n_iters: int, a: Tensor, b: Tensor, tol, grad: bool = False) -> Tensor:
    # (..., m, n); in place when cost is ours and no graph is recorded
    kernel = cost.div(-reg).exp() if grad else cost.div_(-reg).exp_()
    # both products are written as row vector @ matrix, with the transpose stored contiguously:
    # on CPU that is several times faster than batched matrix @ column vector
    kernel_t = kernel.transpose(-1, -2).contiguous()  # (..., n, m)
    u = (a > 0).to(cost.dtype).unsqueeze(-2)  # (..., 1, m); scale is irrelevant, masked rows stay 0
    bb, aa = b.unsqueeze(-2), a.unsqueeze(-2)
    for it in range(n_iters):
        u = u / u.amax(dim=-1, keepdim=True)  # keeps every quantity bounded (module docstring)
        v = bb / (u @ kernel)  # (..., 1, n)
        u = aa / (v @ kernel_t)  # (..., 1, m)
        if tol is not None and ((it + 1) % _CHECK_EVERY == 0):
            col = v * (u @ kernel)
            if float((col - bb).abs().sum(-1).max().detach()) < tol:
                break
    del kernel_t
    if grad:
        return kernel * u.transpose(-1, -2) * v
    return kernel.mul_(u.transpose(-1, -2)).mul_(v)  # the plan, in the kernel's storage


def _sinkhorn_log(cost: Tensor, reg: float, n_iters: int, a: Tensor, b: Tensor, tol) -> Tensor:
    log_a, log_b = a.log(), b.log()  # -inf on masked entries
    scaled = cost / -reg  # (..., m, n)
    f = torch.zeros_like(a)  # potentials divided by reg
    g = torch.zeros_like(b)
    for it in range(n_iters):
        g = log_b - torch.logsumexp(scaled + f.unsqueeze(-1), dim=-2)
        f = log_a - torch.logsumexp(scaled + g.unsqueeze(-2), dim=-1)
        if tol is not None and ((it + 1) % _CHECK_EVERY == 0):
            col = torch.logsumexp(scaled + f.unsqueeze(-1) + g.unsqueeze(-2), dim=-2).exp()
            if float((col - b).abs().sum(-1).max().detach()) < tol:
                break
    return torch.exp(scaled + f.unsqueeze(-1) + g.unsqueeze(-2))


def _log_ratio(marginal: Tensor) -> float:
    pos = marginal.detach()[marginal.detach() > 0]
    return float(pos.max().log() - pos.min().log()) if pos.numel() else 0.0


def _check(cost, reg, n_iters, a, b, tol):
    if not isinstance(cost, Tensor):
        raise TypeError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
    if not cost.is_floating_point():
        raise TypeError(f"cost must be a floating tensor, got dtype {cost.dtype}")
    if cost.dim() < 2 or cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise ValueError(f"cost must have shape (..., m, n) with m, n >= 1, got {tuple(cost.shape)}")
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"n_iters must be an int >= 1, got {n_iters!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be None or a number > 0, got {tol!r}")
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    cost = cost.to(dtype)
    if not torch.isfinite(cost).all():
        raise ValueError("cost contains NaN or Inf; allowed: finite values")
    *lead, m, n = cost.shape
    a = _marginal("a", a, lead, m, cost)
    b = _marginal("b", b, lead, n, cost)
    ta, tb = a.sum(-1), b.sum(-1)
    if not torch.allclose(ta, tb, rtol=1e-4, atol=1e-6):
        raise ValueError(
            f"a and b must have equal totals (balanced OT), got sums {ta.flatten()[:4].tolist()} "
            f"and {tb.flatten()[:4].tolist()}"
        )
    return cost, a, b, dtype


def _marginal(name: str, w: Tensor | None, lead: list[int], size: int, cost: Tensor) -> Tensor:
    if w is None:
        return torch.full((*lead, size), 1.0 / size, dtype=cost.dtype, device=cost.device)
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    if w.shape[-1:] != (size,):
        raise ValueError(f"{name} must have last dimension {size} to match cost, got shape {tuple(w.shape)}")
    w = w.to(device=cost.device, dtype=cost.dtype)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be finite and nonnegative")
    try:
        w = w.expand(*lead, size)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(w.shape)} does not broadcast to {(*lead, size)}") from None
    if (w.sum(-1) <= 0).any():
        raise ValueError(f"{name} must have positive total mass in every problem of the batch")
    return w
