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
import struct

import torch
from torch import Tensor

from . import stops

__all__ = ["sinkhorn", "static_bound", "plain_bound"]

# exp(+-_SAFE_EXP) with the sizes and marginal ratios folded in stays inside the normal range.
_SAFE_EXP = {torch.float32: 75.0, torch.float64: 600.0}
_CHECK_EVERY = 10  # early-stop checks cost a host sync; do them every few iterations
# the plain scaling route (no renormalisation, no shift): every intermediate lies within exp(+-bound)
# (plain_bound); float32's smallest normal is exp(-87.3), so 80 leaves a factor of 1000 to spare
_PLAIN_EXP = {torch.float32: 80.0, torch.float64: 700.0}


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


def static_bound(reg: float, m: int, n: int, cost_range: float = 2.0) -> float:
    """An upper bound, known without reading the data, of the exponent ``r`` that picks the route:
    a cost whose range is at most ``cost_range`` (1 - cos clamped to [0, 2]: 2) and marginals that are
    uniform over a subset of at most m rows / n columns of each problem (max/min ratio <= m, n)."""
    return cost_range / reg + math.log(max(m, n)) + math.log(m) + math.log(n)


def plain_bound(reg: float, m: int, n: int, cost_range: float = 2.0) -> float:
    """An upper bound, known without reading the data, of |log x| for every intermediate x of the plain
    scaling route (``_sinkhorn_plain``: no shift, no renormalisation, u0 = a), for a cost in
    [0, cost_range] and marginals uniform over a subset of each problem's m rows / n columns.

    With r = cost_range / reg the kernel lies in [e^-r, 1]. From u0 = a (entries 1 / m_f <= 1):
    v1 lies in b [1, e^r], K v1 in [e^-r, e^r], u1 in a [e^-r, e^r]. Sinkhorn's map
    u -> a / K (b / K^T u) is order preserving and homogeneous of degree 1 with a fixed point u*, so
    every later iterate stays within [min(u1 / u*), max(u1 / u*)] times u* (the scale cannot drift),
    and u* spans at most e^r (u* = a / K v*). So u lies in [e^-2r / m, e^2r], K^T u in
    [e^-3r / m, m e^2r], v in [e^-2r / (m n), m e^3r] and K v in [e^-3r / (m n), m n e^3r]:
    every |log| is at most 3 r + log m + log n (66 at reg 0.1, m 55, n 196). Plan entries may be
    smaller (they are products, never divided by)."""
    return 3.0 * cost_range / reg + math.log(m) + math.log(n)


def sinkhorn_(cost: Tensor, reg: float, n_iters: int, a: Tensor, b: Tensor, tol, *, groups: int = 0,
              bound: float | None = None, plain: float | None = None, blocks: int = 0,
              rows: bool = False) -> Tensor:
    """``sinkhorn`` on checked inputs that may overwrite ``cost`` (float32/64, finite) to save memory.

    a, b: full marginals (..., m), (..., n) (or (..., 1, m), (..., 1, n)). The returned plan may share cost's storage, except
    when an input requires grad: then nothing is overwritten and the plan is differentiable.
    groups: the first ``groups`` dims index independent stop groups (e.g. videos of a batch): each
    group stops at the first check where all of its problems meet tol, exactly as it would alone
    (0: the whole batch is one group). bound: a caller-known upper bound of the route exponent
    (``static_bound``); when it is <= the safe limit the route is chosen without reading the cost.
    plain: a caller-known ``plain_bound`` (cost in [0, 2], marginals uniform over a subset of each
    problem); when it is <= the limit the plain scaling route runs (4 operators an iteration instead
    of 6; the same plan up to float rounding, not bit for bit the renormalised route's).
    blocks (with groups=0): cost (P, m, n) holds ``blocks`` stop groups of P / blocks problems one after
    the other (the videos of a batch), without a view to a leading group dim.
    rows: return the plan with each row divided by its sum instead (rows of zero mass: zero on the
    renormalised and log routes, not on the plain route, where the caller masks them).
    """
    m, n = cost.shape[-2:]
    grad = _tracks_grad(cost, a, b)
    if plain is not None and plain <= _PLAIN_EXP[cost.dtype]:
        return _sinkhorn_plain(cost, reg, n_iters, a, b, tol, grad, groups, max(blocks, 1), rows)
    a = a.squeeze(-2) if a.dim() == cost.dim() else a  # row-shaped (..., 1, m) marginals of the plain route
    b = b.squeeze(-2) if b.dim() == cost.dim() else b
    if blocks:
        p = cost.shape[0]
        cost, a, b = (t.view(blocks, p // blocks, *t.shape[1:]) for t in (cost, a, b))
        out = sinkhorn_(cost, reg, n_iters, a, b, tol, groups=1, bound=bound, rows=rows)
        return out.view(p, m, n)
    if rows:
        plan = sinkhorn_(cost, reg, n_iters, a, b, tol, groups=groups, bound=bound)
        den = plan.sum(-1, keepdim=True)
        return plan / torch.where(den > 0, den, torch.ones_like(den))
    cmin = cost.amin(dim=(-2, -1), keepdim=True)
    if bound is None or bound > _SAFE_EXP[cost.dtype]:
        scaling = _routes(cost, cmin, reg, a, b, groups)  # host reads: the data decide the route
        if scaling is None:  # groups disagree (small reg only): each group on its own route, as alone
            return torch.stack([sinkhorn_(cost[i], reg, n_iters, a[i], b[i], tol, groups=groups - 1)
                                for i in range(cost.shape[0])])
    else:
        scaling = True
    shifted = cost - cmin if grad else cost.sub_(cmin)  # same plan, kernel entries in [exp(-range/reg), 1]
    if scaling:
        return _sinkhorn_scaling(shifted, reg, n_iters, a, b, tol, grad, groups)
    return _sinkhorn_log(shifted, reg, n_iters, a, b, tol, groups)


def _routes(cost: Tensor, cmin: Tensor, reg: float, a: Tensor, b: Tensor, groups: int):
    """True: scaling route, False: log route, None: the first dim's groups disagree (so groups >= 1)."""
    m, n = cost.shape[-2:]
    if groups == 0 or cost.shape[0] == 1:
        # the route choice is a number, not part of the graph: detach before reading it
        r = float(((cost.amax(dim=(-2, -1), keepdim=True) - cmin) / reg).max().detach()) if cost.numel() else 0.0
        r += math.log(max(m, n)) + _log_ratio(a) + _log_ratio(b)
        return r <= _SAFE_EXP[cost.dtype]
    routes = {_routes(cost[i], cmin[i], reg, a[i], b[i], groups - 1) for i in range(cost.shape[0])}
    return routes.pop() if len(routes) == 1 else None


def _converged(err: Tensor, tol: float, groups: int, ndim: int) -> Tensor:
    """err (...): per-problem L1 error -> (G..., 1, ..., 1) bool with ndim dims: every problem of the
    group is below tol (compared in float64, as the float() read of the error was)."""
    lead = err.shape[:groups]
    return (err.reshape(*lead, -1).double() < tol).all(-1).view(*lead, *([1] * (ndim - groups)))


def _stop_check(err: Tensor, tol, groups: int, frozen, state, saved):
    """One check of the early stop, without a host read per group: groups that meet tol now keep
    their current state (saved), the others go on. Returns (frozen, saved, all_done: a 0-dim bool)."""
    conv = _converged(err, tol, groups, state[0].dim())
    if frozen is None:
        frozen, saved = conv, state
    else:
        new = conv & ~frozen
        saved = tuple(torch.where(new, s, old) for s, old in zip(state, saved))
        frozen = frozen | conv
    return frozen, saved, frozen.all()


def _sinkhorn_scaling(cost: Tensor, reg: float, n_iters: int, a: Tensor, b: Tensor, tol, grad: bool = False,
                      groups: int = 0) -> Tensor:
    # (..., m, n); in place when cost is ours and no graph is recorded
    kernel = cost.div(-reg).exp() if grad else cost.div_(-reg).exp_()
    # both products are written as row vector @ matrix, with the transpose stored contiguously:
    # on CPU that is several times faster than batched matrix @ column vector
    kernel_t = kernel.transpose(-1, -2).contiguous()  # (..., n, m)
    u = (a > 0).to(cost.dtype).unsqueeze(-2)  # (..., 1, m); scale is irrelevant, masked rows stay 0
    bb, aa = b.unsqueeze(-2), a.unsqueeze(-2)
    frozen = saved = None
    for it in range(n_iters):
        u = u / u.amax(dim=-1, keepdim=True)  # keeps every quantity bounded (module docstring)
        v = bb / (u @ kernel)  # (..., 1, n)
        u = aa / (v @ kernel_t)  # (..., 1, m)
        if tol is not None and ((it + 1) % _CHECK_EVERY == 0) and it + 1 < n_iters:
            col = v * (u @ kernel)
            frozen, saved, done = _stop_check((col - bb).abs().sum(-1).detach(), tol, groups, frozen, (u, v), saved)
            if bool(done):  # the one host read of a check: every group has stopped
                break
    if frozen is not None:  # groups that stopped earlier than the last iteration run take their state back
        u, v = (torch.where(frozen, s, cur) for s, cur in zip(saved, (u, v)))
    del kernel_t
    if grad:
        return kernel * u.transpose(-1, -2) * v
    return kernel.mul_(u.transpose(-1, -2)).mul_(v)  # the plan, in the kernel's storage


def _tol_threshold(tol: float, dtype) -> float:
    """c with (err < c in dtype) <=> (float64(err) < tol) for every err of that dtype: the smallest
    float32 >= tol (an exact float32, so the comparison needs no float64 copy of err)."""
    if dtype == torch.float64:
        return float(tol)
    c = struct.unpack("<f", struct.pack("<f", tol))[0]  # nearest float32
    if c < tol:
        c = struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", c))[0] + 1))[0]
    return c


def _sinkhorn_plain(cost: Tensor, reg: float, n_iters: int, a: Tensor, b: Tensor, tol, grad: bool = False,
                    groups: int = 0, blocks: int = 1, rows: bool = False) -> Tensor:
    """Matrix scaling without shift or renormalisation (plain_bound says why nothing under- or
    overflows): u = a / K v, v = b / K^T u, four operators an iteration. ``u @ K`` of an iteration
    serves both the early-stop check and the next iteration's v. cost (..., m, n) in [0, 2].
    Stop groups: the first ``groups`` dims, or ``blocks`` equal runs of dim 0 (see sinkhorn_).
    rows=True returns the row-normalised plan K v / (K v) (u cancels; rows with a = 0 are not zero)."""
    kernel = cost.div(-reg).exp() if grad else cost.div_(-reg).exp_()  # (..., m, n) in [exp(-2 / reg), 1]
    kernel_t = kernel.transpose(-1, -2)  # (..., n, m), a view: on CPU as fast as a contiguous copy here
    # (..., 1, n), (..., 1, m); callers may pass them in that shape already
    bb = b if b.dim() == cost.dim() else b.unsqueeze(-2)
    aa = a if a.dim() == cost.dim() else a.unsqueeze(-2)
    ku = aa @ kernel  # u0 = a: masked rows stay 0
    lead = cost.shape[:groups] if groups else (blocks,)
    thr = None if tol is None else _tol_threshold(tol, cost.dtype)
    ledger = stops.active() if thr is not None and not grad else None
    kv, v, u = _plain_iterate(kernel, kernel_t, aa, bb, ku, n_iters, thr, grad, lead, groups, blocks, ledger)
    del kernel_t
    if rows:
        if grad:
            return kernel * v / kv.transpose(-1, -2)
        return kernel.mul_(v).div_(kv.transpose(-1, -2))  # in the kernel's storage
    if u is None:
        u = aa / kv
    if grad:
        return kernel * u.transpose(-1, -2) * v
    return kernel.mul_(u.transpose(-1, -2)).mul_(v)  # the plan, in the kernel's storage


def _group_conv(err: Tensor, thr: float, lead, groups: int, blocks: int, ndim: int) -> Tensor:
    """err (..., 1): per-problem L1 error -> bool broadcastable to the state (..., 1, k): every problem
    of the problem's stop group is below thr."""
    if math.prod(lead) == 1:  # one group: a single flag, broadcast
        return (err.amax() < thr).view(*([1] * ndim))
    conv = err.reshape(*lead, -1).amax(-1) < thr  # (G...,)
    if groups:
        return conv.view(*lead, *([1] * (ndim - groups)))
    return conv.view(blocks, 1).expand(blocks, err.shape[0] // blocks).reshape(-1, *([1] * (ndim - 1)))


def _plain_iterate(kernel, kernel_t, aa, bb, ku, n_iters: int, thr, grad: bool, lead, groups: int, blocks: int,
                   ledger):
    """The plain route's iterations. An early-stop check every _CHECK_EVERY iterations freezes each stop
    group at the first check where it meets thr (a group's frozen state is what stopping there returns).
    Without a deferring ledger each check is read on the host and the loop stops once every group has
    (ledger in record mode: told how many checks ran). With one (aot.stops) nothing is read: the loop
    runs ``ledger.next_cap()`` checks and leaves one device flag per check, "every group has stopped",
    in the ledger. Returns (K v, v, u or None: a / K v, recomputed where needed)."""
    deferred = ledger is not None and not ledger.recording
    total = 0 if thr is None else (n_iters - 1) // _CHECK_EVERY  # checks the per-check loop can run
    limit = n_iters
    if deferred:
        checks = min(max(ledger.next_cap(), 1), total)
        if checks < total:
            limit = _CHECK_EVERY * checks
    single = math.prod(lead) == 1  # one stop group: read per check, nothing to freeze
    frozen = saved = u = None
    flags, ran = [], 0
    for it in range(limit):
        v = bb / ku  # (..., 1, n)
        kv = v @ kernel_t  # (..., 1, m)
        u = aa / kv
        if it + 1 < n_iters:
            ku = u @ kernel
        if thr is None or (it + 1) % _CHECK_EVERY or it + 1 >= n_iters:
            continue
        ran += 1  # a check: the L1 error of the column marginal, |b - v (u K)|
        err = torch.linalg.vector_norm(torch.addcmul(bb, v, ku, value=-1.0), ord=1, dim=-1)  # (..., 1)
        if grad:
            err = err.detach()
        if single and not deferred:
            if bool(err.amax() < thr):  # the one host read of a check
                break
            continue
        if deferred and it + 1 == limit:  # the last check: groups that meet thr now keep the current state
            flags.append(err.amax() < thr if frozen is None else
                         (frozen | _group_conv(err, thr, lead, groups, blocks, u.dim())).all())
            break
        conv = _group_conv(err, thr, lead, groups, blocks, u.dim())
        if frozen is None:
            frozen, saved = conv, (kv, v)
        else:  # groups not frozen before take this check's state (frozen ones keep theirs)
            saved = tuple(torch.where(frozen, old, s) for s, old in zip((kv, v), saved))
            frozen = frozen | conv
        if deferred:
            flags.append(frozen.all())
        elif bool(frozen.all()):  # the one host read of a check: every group has stopped
            break
    if deferred:
        ledger.add_flags(flags, total)
    elif ledger is not None:
        ledger.recorded.append(ran)
    if frozen is not None:  # groups that stopped earlier than the last iteration run take their state back
        kv, v = (torch.where(frozen, s, cur) for s, cur in zip(saved, (kv, v)))
        u = None
    return kv, v, u


def _sinkhorn_log(cost: Tensor, reg: float, n_iters: int, a: Tensor, b: Tensor, tol, groups: int = 0) -> Tensor:
    log_a, log_b = a.log(), b.log()  # -inf on masked entries
    scaled = cost / -reg  # (..., m, n)
    f = torch.zeros_like(a)  # potentials divided by reg
    g = torch.zeros_like(b)
    frozen = saved = None
    for it in range(n_iters):
        g = log_b - torch.logsumexp(scaled + f.unsqueeze(-1), dim=-2)
        f = log_a - torch.logsumexp(scaled + g.unsqueeze(-2), dim=-1)
        if tol is not None and ((it + 1) % _CHECK_EVERY == 0) and it + 1 < n_iters:
            col = torch.logsumexp(scaled + f.unsqueeze(-1) + g.unsqueeze(-2), dim=-2).exp()
            err = (col - b).abs().sum(-1).detach()
            frozen, saved, done = _stop_check(err, tol, groups, frozen, (f.unsqueeze(-1), g.unsqueeze(-1)), saved)
            if bool(done):
                break
    if frozen is not None:
        f, g = (torch.where(frozen, s, cur.unsqueeze(-1)).squeeze(-1) for s, cur in zip(saved, (f, g)))
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
