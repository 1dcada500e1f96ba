"""Local-global token anchors of a frame (paper Sec. 3.2, DESIGN 2.1)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["window_quotas", "window_slices", "select_anchors", "select_anchors_varied"]


def window_slices(h: int, w: int, windows: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Non-overlapping windows tiling an (h, w) grid, rows x cols = ``windows``.

    Boundaries are ``i * h // rows``: sizes differ by at most one, and windows may be empty when
    there are more windows than grid rows/cols.
    """
    wr, wc = windows
    rb = [i * h // wr for i in range(wr + 1)]
    cb = [j * w // wc for j in range(wc + 1)]
    return [(slice(rb[i], rb[i + 1]), slice(cb[j], cb[j + 1])) for i in range(wr) for j in range(wc)]


def window_quotas(k: int, capacities: list[int]) -> list[int]:
    """Split k local anchors over windows as equally as possible, deterministically.

    Window i gets ``floor((i+1) k / W) - floor(i k / W)`` (remainders spread evenly over the
    windows, not piled on the first ones); a window with fewer tokens than its quota keeps all of
    them and the overflow goes, one at a time in window order, to windows with room left.
    """
    n_win = len(capacities)
    if k > sum(capacities):
        raise ValueError(f"cannot place {k} local anchors in windows holding {sum(capacities)} tokens")
    quotas = [min((i + 1) * k // n_win - i * k // n_win, c) for i, c in enumerate(capacities)]
    spare = k - sum(quotas)
    while spare:
        for i, c in enumerate(capacities):
            if spare and quotas[i] < c:
                quotas[i] += 1
                spare -= 1
    return quotas


def select_anchors(
    scores: Tensor,
    local_scores: Tensor,
    grid: tuple[int, int],
    m: int,
    *,
    global_share: float = 0.5,
    windows: tuple[int, int] = (3, 3),
) -> Tensor:
    """Indices of the m anchors of every frame, ascending.

    scores, local_scores: (F, N) importance on the (h, w) grid, N = h * w (deep- and shallow-layer
    attention received). Local anchors: top-k of local_scores inside each window, quotas from
    ``window_quotas``; global anchors: top-k of scores over the frame among the tokens not already
    chosen locally. ``round_half_up(global_share * m)`` anchors are global.
    Returns (F, m) int64.
    """
    f, n = scores.shape
    h, w = grid
    k_global = int(global_share * m + 0.5)
    k_local = m - k_global
    chosen = torch.zeros(f, n, dtype=torch.bool, device=scores.device)
    if k_local:
        flat = torch.arange(n, device=scores.device).view(h, w)
        cells = [flat[rs, cs].reshape(-1) for rs, cs in window_slices(h, w, windows)]
        quotas = window_quotas(k_local, [c.numel() for c in cells])
        for cell, q in zip(cells, quotas):
            if q:
                top = local_scores[:, cell].topk(q, dim=1).indices  # (F, q)
                chosen.scatter_(1, cell[top], True)
    if k_global:
        masked = scores.masked_fill(chosen, float("-inf"))
        chosen.scatter_(1, masked.topk(k_global, dim=1).indices, True)
    # every row holds exactly m True entries: a stable sort puts them first, in ascending order
    # (what nonzero would list, without reading the count back to the host)
    return torch.argsort((~chosen).to(torch.uint8), dim=1, stable=True)[:, :m]


def select_anchors_varied(
    scores: Tensor,
    local_scores: Tensor,
    grid: tuple[int, int],
    counts: Tensor | list[int],
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """``select_anchors`` with a per-frame count: counts (F,) int64 tensor or list of ints, at most
    two distinct values in practice (an exact budget may need M + 1 anchors on some frames).

    Returns (indices (F, M_max) int64, valid (F, M_max) bool): row f holds its counts[f] anchors
    ascending, then padding (a repeat of its last anchor, marked invalid). A list costs no host
    read (aot.compress knows the counts from the budget); a tensor is read once.
    """
    if isinstance(counts, Tensor):
        counts = counts.tolist()
    f = scores.shape[0]
    dev = scores.device
    m_max = max(counts)
    valid = torch.arange(m_max, device=dev).unsqueeze(0) < torch.tensor(counts, device=dev).unsqueeze(1)
    distinct = sorted(set(counts))
    if len(distinct) == 1:  # every frame the same count: no padding, no row gathers
        return select_anchors(scores, local_scores, grid, m_max, **kwargs), valid
    out = torch.empty(f, m_max, dtype=torch.long, device=dev)
    for m in distinct:
        rows = torch.tensor([i for i, c in enumerate(counts) if c == m], device=dev)
        idx = select_anchors(scores[rows], local_scores[rows], grid, m, **kwargs)  # (F_m, m)
        out[rows] = torch.cat([idx, idx[:, -1:].expand(-1, m_max - m)], dim=1)
    return out, valid
