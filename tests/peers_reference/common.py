"""Helpers shared by the comparison methods: validation and batching, budget splits, the output.

Every comparison method is written as ``one(x, norms, scores, grid, total, config) -> Compressed``
for one video, where x (F, N, d) is float32/float64, norms (F, N) its L2 norms (all > 0), scores
(F, N) float and total the exact budget (0 < total < F * N). ``run`` wraps it with aot.compress's
validation, error messages, identity at retention 1 and batch loop, and casts the tokens back to
the input dtype.

``assemble`` builds the output and its mix (one coefficient per absorbed input token);
``merge_pools`` is HoliTom's and PruneVid's pool machinery; ``dpc_knn_many`` clusters many pools
in one batch, bit for bit as pool by pool (docs/methods-mix.md: operator and host-read counts).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import torch
from torch import Tensor

from aot.compress import Compressed, Mix, _check_inputs, _identity, prepare, stack
from aot.config import _check_range

__all__ = ["run", "even_split", "capped_split", "settle", "cosine_sim", "top_by_score", "assemble", "check_retention",
           "merge_pools", "dpc_knn_many"]


def run(one: Callable[..., Compressed], config_cls: type, x, scores, local_scores, grid, config) -> Compressed:
    """Validate like aot.compress, then apply ``one`` to each video (a batch is looped and stacked)."""
    if not isinstance(config, config_cls):
        raise TypeError(f"config must be an aot.methods {config_cls.__name__}, got {type(config).__name__}")
    x, scores, local_scores, grid = _check_inputs(x, scores, local_scores, grid)
    if x.dim() == 4:
        return stack([_run_one(one, x[i], scores[i], grid, config) for i in range(x.shape[0])])
    return _run_one(one, x, scores, grid, config)


def _run_one(one, x: Tensor, scores: Tensor, grid, config) -> Compressed:
    f, n, _ = x.shape
    work, norms, total = prepare(x, config.retention)
    if total == f * n:
        return _identity(x)
    out = one(work, norms, scores.float(), grid, total, config)
    return out._replace(tokens=out.tokens.to(x.dtype))


def check_retention(retention) -> None:
    _check_range("retention", retention, 0.0, 1.0, low_open=True)


def even_split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` integers that differ by at most one, the larger ones spread evenly."""
    return [(i + 1) * total // parts - i * total // parts for i in range(parts)]


def capped_split(total: int, caps: list[int]) -> list[int]:
    """Split ``total`` as evenly as possible with part i <= caps[i] (water filling); may fall short
    of ``total`` only when sum(caps) < total."""
    alloc = [0] * len(caps)
    active = [i for i, c in enumerate(caps) if c > 0]
    left = total
    while left > 0 and active:
        for i, share in zip(active, even_split(left, len(active))):
            take = min(share, caps[i] - alloc[i])
            alloc[i] += take
            left -= take
        active = [i for i in active if alloc[i] < caps[i]]
    return alloc


def settle(total: int, quotas, counts: list[int], caps: list[int]) -> list[int]:
    """Move ``counts`` (a rounding of ``quotas``, 0 <= counts <= caps) to sum exactly ``total``.

    One unit at a time: a surplus comes off the part rounded furthest above its quota, among the
    parts holding two or more while any does (so no part is emptied while another could give),
    ties to the later part; a shortfall goes to the part furthest below its quota that has room,
    ties to the earlier part. Quotas may be Fractions (exact) or floats. Needs
    sum(caps) >= total.
    """
    counts = list(counts)
    while sum(counts) > total:
        pool = [i for i, c in enumerate(counts) if c >= 2] or [i for i, c in enumerate(counts) if c >= 1]
        i = max(pool, key=lambda i: (counts[i] - quotas[i], i))
        counts[i] -= 1
    while sum(counts) < total:
        pool = [i for i, c in enumerate(counts) if c < caps[i]]
        i = max(pool, key=lambda i: (quotas[i] - counts[i], -i))
        counts[i] += 1
    return counts


def cosine_sim(rows: Tensor, cols: Tensor, row_norms: Tensor, col_norms: Tensor) -> Tensor:
    """cos for every pair: rows (m, d), cols (k, d) -> (m, k); norms are the tokens' L2 norms."""
    return (rows @ cols.T) / (row_norms.unsqueeze(1) * col_norms.unsqueeze(0))


def top_by_score(scores: Tensor, k: int, *, largest: bool = True) -> Tensor:
    """Indices of the k largest (or smallest) scores; ties go to the lower index (deterministic)."""
    return torch.sort(scores, descending=largest, stable=True).indices[:k]


def assemble(tokens: Tensor, positions: Tensor, assignment: Tensor, n: int, dynamic: Tensor | None = None,
             weight: Tensor | None = None) -> Compressed:
    """A Compressed from output rows in any order, with its mix.

    tokens (R, d), positions (R,) flat f * N + n (distinct), assignment (F * N,) row of ``tokens``
    absorbing each input token or -1. Rows are sorted by position (= by (frame, position)), the
    assignment is renumbered to match and sizes are counted from it.

    Every comparison method absorbs each input token into at most one output row, so its linear
    map is one weight per input token: weight (F * N,) float, the coefficient of input token i in
    row assignment[i] (read only where assignment >= 0); None: 1 for every absorbed token (a pure
    selection). The mix has one entry per absorbed token, in input order: rows = assignment,
    cols = the token's flat index, weights = weight.
    """
    order = torch.argsort(positions)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    assignment = torch.where(assignment >= 0, rank[assignment.clamp(min=0)], assignment)
    cols = torch.nonzero(assignment >= 0).flatten()  # the absorbed input tokens (one host sync: E is a shape)
    rows = assignment[cols]
    sizes = torch.bincount(rows, minlength=order.numel())
    positions = positions[order]
    if dynamic is None:
        dynamic = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
    acc = torch.float64 if tokens.dtype == torch.float64 else torch.float32
    weights = torch.ones(cols.numel(), dtype=acc, device=cols.device) if weight is None else weight[cols].to(acc)
    return Compressed(tokens[order], sizes, positions // n, positions, assignment, dynamic[order],
                      Mix(rows, cols, weights))


def merge_pools(x: Tensor, spans: list[tuple[int, int]], static: list[Tensor], total: int,
                round_quota: Callable[[str, Fraction], int],
                reduce: Callable[[str, int, Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor, Tensor]],
                reduce_frames: Callable[[int, Tensor, Tensor, list[int]], tuple | None] | None = None) -> Compressed:
    """Exactly ``total`` tokens from pools of temporally merged cells (HoliTom, PruneVid).

    x (F, N, d); spans [(first frame s, length L)] cut frames 0..F-1 into consecutive windows;
    static[w] (N,) bool: the cells of span w merged over its L frames (all False when L = 1).
    Pools, in order: per span, ("static", its static cells) if any, then ("dynamic", the other
    cells) per frame of the span. They hold P = F * N - (tokens removed by temporal merging).

    - total <= P: pool i of S_i cells gets settle(total, quotas, rounded) tokens, with quota
      total * S_i / P (a Fraction) and rounded = round_quota(kind, quota). A pool with c > 0
      tokens is reduced by ``reduce(kind, t, cells, feat, c)``: t the span's first frame (static)
      or the frame (dynamic), cells (S,) its cell indices ascending, feat (S, d) the static cells'
      means over the span or the frame's tokens. It returns (tokens (c, d), slots (c,) index in
      ``cells`` each token sits at, owner (S,) long: the token 0..c-1 each cell joins, -1 dropped,
      weight (S,) the coefficient of each cell's ``feat`` row in its token: token j = sum of
      weight[i] * feat[i] over the cells i with owner i = j). A pool with c = 0 is dropped.
    - total > P: every pool is kept whole and the total - P extra tokens undo temporal merging
      evenly over the static cells (``capped_split``, at most L - 1 per cell): a static cell with
      e extra tokens becomes e + 1 runs of consecutive frames (``even_split``), each the mean of
      its run, sitting at its run's first frame; each dynamic pool is still ``reduce``d, with
      c = S.
    Static tokens are ``dynamic=False``, dynamic-pool tokens ``dynamic=True``.

    ``reduce_frames(s, cells, feat, counts)``, if given, reduces the L dynamic pools of a span at
    once (the same cells on every frame, so a fixed number of operators per span): feat (L, S, d) the
    frames' tokens at ``cells``, counts[i] the count of frame s + i (0: dropped). It returns
    (tokens (C, d), slots (C,) flat index into the (L, S) pools each token sits at, owner (L, S)
    the token 0..C-1 each cell joins or -1, weight (L, S)), C = sum(counts), the tokens of frame
    s before those of s + 1, and must give what ``reduce`` gives pool by pool; or None to fall back
    to ``reduce``.

    The mix composes the two merges: an input token of a static cell carries weight[i] / L (its
    cell's mean over the span, then the pool's merge), 1 / run length when split into runs; a
    dynamic-pool token carries weight[i].
    """
    f, n, d = x.shape
    dev = x.device
    pools = []  # (kind, span, frame: the span's first (static) or the pool's own (dynamic), cells)
    masks = torch.stack(static)  # (W, N)
    n_static = masks.sum(1).tolist()  # the one host read of the pools' sizes
    order = torch.argsort(masks.to(torch.uint8), dim=1, stable=True)  # per span: dynamic cells, then static, ascending
    for w, (s, length) in enumerate(spans):
        if n_static[w]:
            pools.append(("static", w, s, order[w, n - n_static[w]:]))
        moving = order[w, :n - n_static[w]]  # one tensor for every frame of the span
        for t in range(s, s + length):
            pools.append(("dynamic", w, t, moving))
    sizes = [cells.numel() for _, _, _, cells in pools]
    left = sum(sizes)  # P
    split = total > left
    if not split:
        quotas = [Fraction(total * z, left) for z in sizes]
        counts = settle(total, quotas, [round_quota(kind, q) for (kind, _, _, _), q in zip(pools, quotas)], sizes)
    else:
        counts = sizes
        lengths = [spans[w][1] for kind, w, _, cells in pools if kind == "static" for _ in range(cells.numel())]
        extra = capped_split(total - left, [length - 1 for length in lengths])

    toks, poss, dyn = [], [], []
    assignment = torch.full((f * n,), -1, dtype=torch.long, device=dev)
    weight = torch.zeros(f * n, dtype=x.dtype, device=dev)  # coefficient of each input token in its row
    row, cell_no = 0, 0
    done = set()  # spans whose dynamic pools reduce_frames took at once
    for i, ((kind, w, t, cells), c) in enumerate(zip(pools, counts)):
        if kind == "dynamic" and w in done:
            continue
        if kind == "dynamic" and reduce_frames is not None:
            s, length = spans[w]
            span_counts = counts[i:i + length]
            flat = torch.arange(s, s + length, device=dev).unsqueeze(1) * n + cells  # (L, S) flat indices
            out = reduce_frames(s, cells, x[s:s + length][:, cells], span_counts) if sum(span_counts) else None
            if out is not None or not sum(span_counts):
                done.add(w)
                if out is None:
                    continue
                tokens, slots, owner, coef = out
                toks.append(tokens)
                poss.append(flat.flatten()[slots])
                assignment[flat] = torch.where(owner >= 0, row + owner, -1)
                weight[flat] = coef.to(x.dtype)
                dyn.append(torch.ones(tokens.shape[0], dtype=torch.bool, device=dev))
                row += tokens.shape[0]
                continue
        if kind == "static":
            s, length = spans[w]
            flat = torch.arange(s, s + length, device=dev).unsqueeze(1) * n + cells  # (L, S) flat indices
            if split:
                for j in range(cells.numel()):
                    t0 = s
                    for run_len in even_split(length, extra[cell_no + j] + 1):  # runs of consecutive frames
                        toks.append(x[t0:t0 + run_len, cells[j]].mean(0, keepdim=True))
                        poss.append(flat[t0 - s:t0 - s + 1, j])
                        assignment[flat[t0 - s:t0 - s + run_len, j]] = row
                        weight[flat[t0 - s:t0 - s + run_len, j]] = 1 / run_len
                        dyn.append(torch.zeros(1, dtype=torch.bool, device=dev))
                        row += 1
                        t0 += run_len
                cell_no += cells.numel()
                continue
            feat = x[s:s + length, cells].mean(0)  # (S, d): each static cell's mean over the span
        else:
            flat = (t * n + cells).unsqueeze(0)  # (1, S)
            feat = x[t, cells]
        if c == 0:
            continue
        tokens, slots, owner, coef = reduce(kind, t, cells, feat, c)
        toks.append(tokens)
        poss.append(flat[0, slots])
        # each input token belongs to one pool: write the whole pool (dropped cells stay -1), no mask indexing
        assignment[flat] = torch.where(owner >= 0, row + owner, -1).expand(flat.shape)
        weight[flat] = (coef / flat.shape[0]).to(x.dtype).expand(flat.shape)  # static: mean over L frames
        dyn.append(torch.full((c,), kind == "dynamic", dtype=torch.bool, device=dev))
        row += c
    return assemble(torch.cat(toks), torch.cat(poss), assignment, n, torch.cat(dyn), weight)


def dpc_knn_many(feat: Tensor, counts: list[int], k: int | list[int], sizes: list[int] | None = None,
                 *, return_order: bool = False) -> tuple[Tensor, ...]:
    """DPC-kNN clustering of B pools at once, bit for bit what the methods do pool by pool.

    feat (B, M, d): pool b is its first sizes[b] rows (default: all M; the others are padding);
    counts[b] in 0..sizes[b] clusters (0: none); k (one for all, or k[b] per pool) <= the pool's
    size: neighbours for the density (the methods' min(K, m) or min(K, c)). Per pool, as
    ``fastvid.dpc_knn_scores`` then ``holitom.dpc_knn_clusters`` / ``prunevid.dpc_knn_assign``:
    distances ||a - b|| / sqrt(d) (torch.cdist without the matmul shortcut, so every pair is
    computed exactly as unbatched), density exp(-mean squared distance to the k nearest), score
    density * distance to the nearest denser row (ties: the lower index is denser), the top
    counts[b] scores are the centres, every row joins its nearest centre (Euclidean, ties to the
    lower centre) and every centre itself.

    Returns (centre (B, M) bool; owner (B, M) long: slot of each row's centre among its pool's
    centres in ascending row order, -1 in a pool with no clusters and on padding rows), and with
    ``return_order`` order (B, M): each pool's rows by descending score (``top_by_score``), padding last.
    """
    b, m, d = feat.shape
    dev = feat.device
    idx = torch.arange(m, device=dev)
    size_t = torch.tensor(sizes if sizes is not None else [m] * b, device=dev).unsqueeze(1)  # (B, 1)
    real = idx < size_t  # (B, M)
    raw = torch.cdist(feat, feat, compute_mode="donot_use_mm_for_euclid_dist")  # (B, M, M)
    dist = raw / math.sqrt(d)
    ks = [k] * b if isinstance(k, int) else list(k)
    near = torch.topk(dist.masked_fill(~real.unsqueeze(1), math.inf), max(ks), dim=-1, largest=False).values
    density = None  # (B, M): each pool's mean over its own k nearest (a contiguous copy: the unbatched reduction)
    for kk in sorted(set(ks)):
        dens = torch.exp(-(near[..., :kk].contiguous() ** 2).mean(-1))
        if density is None:
            density = dens
        else:
            density = torch.where(torch.tensor([v == kk for v in ks], device=dev).unsqueeze(1), dens, density)
    denser = ((density.unsqueeze(1) > density.unsqueeze(2)) | (
        (density.unsqueeze(1) == density.unsqueeze(2)) & (idx.unsqueeze(0) < idx.unsqueeze(1)))) & real.unsqueeze(1)
    top = dist.masked_fill(~(real.unsqueeze(1) & real.unsqueeze(2)), -math.inf).amax((1, 2), keepdim=True)
    delta = torch.where(denser, dist, top).min(-1).values  # [b, i]: distance to the nearest denser row
    score = (delta * density).masked_fill(~real, -math.inf)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices  # top_by_score, per pool
    rank = torch.empty_like(order).scatter_(1, order, idx.expand(b, m))
    c_t = torch.tensor(counts, device=dev).unsqueeze(1)  # (B, 1)
    centre = rank < c_t
    c_max = max(max(counts), 1)
    slots = torch.sort(centre.logical_not(), dim=1, stable=True).indices[:, :c_max]  # centres ascending, padded
    valid = torch.arange(c_max, device=dev) < c_t  # (B, C)
    to_centre = raw.gather(2, slots.unsqueeze(1).expand(b, m, c_max))  # the values cdist(feat, feat[centres]) gives
    owner = to_centre.masked_fill(~valid.unsqueeze(1), math.inf).argmin(-1)  # nearest centre, ties to the lower slot
    own = torch.full((b, m + 1), -1, dtype=torch.long, device=dev)  # column M: a sink for the padding slots
    own.scatter_(1, torch.where(valid, slots, m), torch.arange(c_max, device=dev).expand(b, c_max).contiguous())
    owner = torch.where(centre, own[:, :m], owner)  # every centre owns itself
    owner = torch.where((c_t > 0) & real, owner, -1)
    return (centre, owner, order) if return_order else (centre, owner)
