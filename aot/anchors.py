"""Local-global token anchors of a frame (paper Sec. 3.2, DESIGN 2.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from .indices import const

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
    chosen locally. ``round_half_up(global_share * m)`` anchors are global. Among equal scores the
    lower token index wins. Returns (F, m) int64.
    """
    return _select(scores, local_scores, grid, [m] * scores.shape[0], global_share, windows)


def _select(scores: Tensor, local_scores: Tensor, grid: tuple[int, int], counts: list[int], global_share: float,
            windows: tuple[int, int]) -> Tensor:
    """Anchors of every frame at once, frame f with counts[f] of them: (F, max counts) int64, row f
    its counts[f] anchors ascending, then padding (the first tokens not chosen; see select_anchors_varied).

    All windows of all frames in one top-k: the windows' tokens are a padded (W, C) index table
    (pads point at an extra -inf column N), each window takes its top max-quota tokens and keeps the
    first quota[f, w] of them (the same set as a top-quota of its own). Likewise the global anchors.
    A few operators whatever the number of windows or distinct counts; the tables come from Python.
    Ties: a stable descending sort, so among equal scores the lower token index wins (top-k's choice
    among ties is implementation-defined and depends on k and the row's layout).
    """
    f, n = scores.shape
    h, w = grid
    dev = scores.device
    k_global = [int(global_share * m + 0.5) for m in counts]
    chosen = torch.zeros(f, n + 1, dtype=torch.bool, device=dev)  # column N: where the unused picks go
    k_locals = [m - k for m, k in zip(counts, k_global)]
    if max(k_locals):
        cells = [[r * w + c for r in range(h)[rs] for c in range(w)[cs]] for rs, cs in window_slices(h, w, windows)]
        width = max(len(c) for c in cells)
        caps = [len(c) for c in cells]
        quota = {k: window_quotas(k, caps) for k in set(k_locals)}
        q_max = max(max(q) for q in quota.values())
        table = const([c + [n] * (width - len(c)) for c in cells], dev)  # (W, C)
        # (F, W, q_max): True where rank r of window w is one of frame f's local anchors
        take = const([[[r < qw for r in range(q_max)] for qw in quota[k]] for k in k_locals], dev, torch.bool)
        padded = torch.nn.functional.pad(local_scores, (0, 1), value=float("-inf"))  # (F, N + 1)
        top = padded[:, table].sort(dim=-1, descending=True, stable=True).indices[..., :q_max]  # (F, W, q_max)
        picks = table.expand(f, -1, -1).gather(2, top).masked_fill_(~take, n)
        chosen.scatter_(1, picks.view(f, -1), True)
    if max(k_global):
        masked = torch.nn.functional.pad(scores, (0, 1), value=float("-inf")).masked_fill_(chosen, float("-inf"))
        top = masked.sort(dim=1, descending=True, stable=True).indices[:, :max(k_global)]  # (F, k_max)
        if min(k_global) < max(k_global):
            take = const([[r < k for r in range(max(k_global))] for k in k_global], dev, torch.bool)
            top = top.masked_fill_(~take, n)
        chosen.scatter_(1, top, True)
    # row f holds exactly counts[f] True entries among the first N: a stable sort puts them first,
    # in ascending order (what nonzero would list, without reading the count back to the host)
    return torch.argsort((~chosen[:, :n]).to(torch.uint8), dim=1, stable=True)[:, :max(counts)]


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
    dev = scores.device
    m_max = max(counts)
    valid = const([[j < c for j in range(m_max)] for c in counts], dev, torch.bool)  # (F, M_max)
    idx = _select(scores, local_scores, grid, counts, kwargs.get("global_share", 0.5), kwargs.get("windows", (3, 3)))
    if min(counts) == m_max:  # every frame the same count: no padding
        return idx, valid
    last = const([[c - 1] for c in counts], dev)  # (F, 1)
    return torch.where(valid, idx, idx.gather(1, last)), valid
