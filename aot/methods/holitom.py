"""HoliTom (Shao et al., NeurIPS 2025): its pre-LLM stages, temporal segmentation + spatio-temporal merging.

x (F, N, d) tokens (one video; a batch (B, F, N, d) is looped), scores (F, N) attention received
(HoliTom: the vision tower's last layer, pooled like the tokens). Our reading of the paper and its
released code (cokeshao/HoliTom, ``holitom/llava_arch.py``), step by step:

1. Cell similarity: sim[t, n] = cos(x[t, n], x[t + 1, n]), (F - 1, N). A cell is static over
   frames s..e when sim > T on every adjacent pair in between.
2. Redundancy-aware temporal segmentation: cut the frames into consecutive windows (at most
   ``max_window`` frames) that maximise the number of tokens temporal merging removes, by dynamic
   programming; a window [s, e] removes gain = (cells static over s..e) * (e - s). Frame i ends the
   best window among: frame i alone, then windows of 2, 3, ... frames, a longer one taken only if
   strictly better (the released order, so ties go to the shorter window).
3. Temporal merging: in a window of two or more frames each static cell becomes one token, the mean
   of its L frames, sitting at the window's first frame. What is left is
   P = F * N - (tokens removed) tokens: one static pool per window and one dynamic pool (the
   window's non-static cells) per frame.
4. Spatial merging, with the budget spread over the pools in proportion to their sizes
   (HoliTom rescales the retention to R / P):
   - a frame's dynamic pool keeps its top-attention tokens (the released default D = 0; with
     ``context_share`` D > 0, that share of the pool's count goes to contextual tokens: the
     DPC-kNN centres among the other dynamic tokens, merged like static clusters below);
   - a window's static pool is clustered by DPC-kNN (distances ||a - b|| / sqrt(d); density
     exp(-mean squared distance to the k nearest, self included), k = min(K, clusters) as
     released, K = 7; score = density * distance to the nearest denser token), the top-scored
     tokens are the centres, every other token joins its nearest centre (Euclidean) and a centre
     with members becomes beta * centre + (1 - beta) * mean(members), beta = 0.6.
   Tokens of a dynamic pool that are neither kept nor clustered are dropped (assignment -1), as
   released (with D = 0 that is every non-top-attention dynamic token).
Published settings: T = 0.65 at 10% retention and 0.8 above (``tau=None`` picks them), beta 0.6,
K 7, D 0, window length up to 1024.

Output: exactly round_half_up(retention * F * N) tokens ordered by (frame, position); static
tokens sit at their window's first frame and are marked ``dynamic=False``, tokens of dynamic
pools are ``dynamic=True``. Every budget from 1 token up is feasible.

Where and why ours differs from the release:
- Not here: HoliTom's third stage, the inner-LLM merging (similar visual tokens merged inside the
  language model at a chosen layer), needs the LLM's hidden states; it waits for the model
  adapters. The release reports 99.0% of the full LLaVA-OneVision-7B at 10% retention without it
  ("HoliTom (w/o M)") against 99.1% with it.
- Exact budget: the release gives every frame's dynamic pool ceil(n * R / P) tokens and every
  static pool round(S * R / P) clusters, so its count drifts from the budget. Here the pools get
  those same roundings and the difference to the exact budget is settled one token at a time
  where the rounding moved furthest from proportional (``common.settle``: no dynamic pool is
  emptied while another holds two or more).
- When temporal merging removes so much that the budget exceeds P (a still video at 20-25%),
  the release clamps its rescaled retention at 1 and returns only P tokens. Here every pool is kept
  whole and the R - P extra tokens undo temporal merging evenly over the static cells (water
  filling, capped at L - 1 per cell): a static cell with e extra tokens is split into e + 1 runs of
  consecutive frames (lengths differing by at most one), each the mean of its run, sitting at its
  run's first frame.
- Ties: the release adds 1e-6 uniform noise to the densities; here an equal density counts the
  lower index as denser, and every other tie also goes to the lower index, so results are
  deterministic. The release's dominant count uses Python's round (half to even); here half up.

Mix (``Compressed.mix``), the two merges composed: a kept dynamic token has weight 1; a cluster
of m > 1 rows carries beta on its centre and (1 - beta) / (m - 1) on each other member (a lone
centre 1); a static cell's row stands for its mean over the window's L frames, so each of its L
input tokens gets that coefficient / L (a run of a split cell: 1 / run length). ``reduce(x)``
equals ``tokens`` to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from ..compress import Compressed
from ..config import _check_range
from .common import check_retention, dpc_knn_one, merge_pools, run, top_by_score
from .fastvid import dpc_knn_scores
from .registry import Method, register

__all__ = ["HoliTomConfig", "holitom", "holitom_windows", "dpc_knn_clusters"]


@dataclass(frozen=True)
class HoliTomConfig:
    retention: float = 0.1  # rho in (0, 1]: output keeps exactly round_half_up(rho * F * N) tokens
    tau: float | None = None  # T: a cell is static while adjacent-frame cosine > T; None: published 0.65 at rho <= 0.1, else 0.8
    beta: float = 0.6  # weight kept on a cluster centre: beta * centre + (1 - beta) * mean(members)
    k: int = 7  # K: DPC-kNN neighbours for the density, capped at the cluster count (as released)
    context_share: float = 0.0  # D: share of a dynamic pool's tokens spent on DPC-kNN contextual tokens (released 0)
    max_window: int = 1024  # longest temporal window in frames (released MAX_WINDOW_SIZE)

    def __post_init__(self) -> None:
        check_retention(self.retention)
        if self.tau is not None:
            _check_range("tau", self.tau, -1.0, 1.0)
        _check_range("beta", self.beta, 0.0, 1.0)
        _check_range("context_share", self.context_share, 0.0, 1.0)
        for name in ("k", "max_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")

    @property
    def threshold(self) -> float:
        """T in use: ``tau``, or the published 0.65 at retention <= 10% and 0.8 above."""
        if self.tau is not None:
            return self.tau
        return 0.65 if self.retention <= 0.1 + 1e-9 else 0.8


def holitom(x, scores, *, local_scores=None, grid=None, config: HoliTomConfig = HoliTomConfig()) -> Compressed:
    """HoliTom's pre-LLM stages to exactly round_half_up(retention * F * N) tokens; x (F, N, d) or (B, F, N, d)."""
    return run(_holitom_one, HoliTomConfig, x, scores, local_scores, grid, config)


def holitom_windows(static: Tensor, max_window: int) -> list[tuple[int, int]]:
    """Step 2 on static (F - 1, N) bool (cell n unchanged from frame t to t + 1): (first frame, length) per window."""
    f, n = static.shape[0] + 1, static.shape[1]
    # moved[t, n]: changes of cell n before frame t; the cell is static over frames s..e iff moved[s] == moved[e]
    moved = torch.cat([static.new_zeros(1, n, dtype=torch.long), torch.cumsum(~static, 0)])  # (F, N)
    block = max(1, (1 << 22) // (f * n))  # rows of the (rows, F, N) comparison at a time: bounded memory
    still = torch.cat([(moved[a:a + block].unsqueeze(1) == moved.unsqueeze(0)).sum(-1) for a in range(0, f, block)])
    still = still.tolist()  # the one host read: still[s][e] cells static over frames s..e
    # gain[s][e]: tokens removed by the window s..e (e > s)
    gain = [[still[s][e] * (e - s) if e > s else 0 for e in range(f)] for s in range(f)]
    best = [0] * f  # best[i]: most tokens removed from frames 0..i
    start = [0] * f
    for i in range(f):
        best[i], start[i] = (best[i - 1] if i else 0), i
        for length in range(2, min(i + 1, max_window) + 1):
            s = i - length + 1
            v = (best[s - 1] if s else 0) + gain[s][i]
            if v > best[i]:
                best[i], start[i] = v, s
    out, i = [], f - 1
    while i >= 0:
        out.append((start[i], i - start[i] + 1))
        i = start[i] - 1
    return out[::-1]


def dpc_knn_clusters(feat: Tensor, c: int, k: int) -> tuple[Tensor, Tensor]:
    """DPC-kNN on feat (m, d) into 1 <= c <= m clusters with k = min(k, c) neighbours (the full distance
    matrix; ``holitom`` runs ``common.dpc_knn_one(feat, c, min(k, c))``, the same bit for bit, which computes
    the exact distances only where they decide).

    Returns (centres (c,) row indices, ascending; owner (m,) slot in ``centres`` of each row's
    nearest centre (Euclidean, ties to the lower slot), every centre owning itself).
    """
    m, d = feat.shape
    centres = torch.sort(top_by_score(dpc_knn_scores(feat, min(k, c)), c)).values
    dist = torch.cdist(feat, feat[centres], compute_mode="donot_use_mm_for_euclid_dist")
    owner = dist.argmin(-1)
    owner[centres] = torch.arange(c, device=feat.device)
    return centres, owner


def _beta_merge(feat: Tensor, centres: Tensor, owner: Tensor, beta: float) -> Tensor:
    """beta * centre + (1 - beta) * mean(members other than the centre); a lone centre stays as it is."""
    c, d = centres.numel(), feat.shape[1]
    into = owner.clone()
    into[centres] = c  # centres go to a sink row c: the sums hold the other members, in row order
    counts = torch.bincount(into, minlength=c + 1)[:c].to(feat.dtype).unsqueeze(1)
    summed = torch.zeros(c + 1, d, dtype=feat.dtype, device=feat.device).index_add_(0, into, feat)[:c]
    merged = beta * feat[centres] + (1 - beta) * summed / counts.clamp(min=1)
    return torch.where(counts > 0, merged, feat[centres])


def _beta_weights(centres: Tensor, owner: Tensor, beta: float, dtype: torch.dtype) -> Tensor:
    """The coefficient of each row of feat in ``_beta_merge``'s token: (m,) for owner (m,).

    A centre with members: beta; a lone centre: 1; a member: (1 - beta) / (its centre's members).
    """
    c = centres.numel()
    counts = (torch.bincount(owner, minlength=c) - 1).to(dtype)  # every centre owns itself
    weight = ((1 - beta) / counts.clamp(min=1))[owner]
    weight[centres] = torch.where(counts > 0, torch.tensor(beta, dtype=dtype, device=owner.device), 1.0)
    return weight


def _holitom_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: HoliTomConfig) -> Compressed:
    n = x.shape[1]
    unit = x / norms.unsqueeze(-1)
    static = (unit[:-1] * unit[1:]).sum(-1) > config.threshold  # (F - 1, N)
    windows = holitom_windows(static, config.max_window)
    masks = [static[s:s + length - 1].all(0) if length > 1 else torch.zeros(n, dtype=torch.bool, device=x.device)
             for s, length in windows]

    def round_quota(kind: str, quota: Fraction) -> int:  # released: ceil for dynamic, round for static
        return math.ceil(quota) if kind == "dynamic" else math.floor(quota + Fraction(1, 2))

    def reduce(kind: str, t: int, cells: Tensor, feat: Tensor, c: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if kind == "static":  # DPC-kNN clusters of the cells' window means, beta-merged
            centres, owner = dpc_knn_one(feat, c, min(config.k, c))
            return (_beta_merge(feat, centres, owner, config.beta), centres, owner,
                    _beta_weights(centres, owner, config.beta, feat.dtype))
        n_dom = min(c, math.floor(c * (1 - config.context_share) + 0.5))
        n_ctx = c - n_dom
        dom = top_by_score(scores[t, cells], n_dom)  # slots of the top-attention cells
        owner = torch.full((cells.numel(),), -1, dtype=torch.long, device=x.device)
        owner[dom] = torch.arange(n_dom, device=x.device)
        weight = torch.ones(cells.numel(), dtype=feat.dtype, device=x.device)  # kept as they are
        if not n_ctx:
            return feat[dom], dom, owner, weight
        keep = torch.ones(cells.numel(), dtype=torch.bool, device=x.device)
        keep[dom] = False
        rest = torch.nonzero(keep).flatten()  # the pool's other cells, ascending
        centres, rest_owner = dpc_knn_one(feat[rest], n_ctx, min(config.k, n_ctx))
        owner[rest] = n_dom + rest_owner
        weight[rest] = _beta_weights(centres, rest_owner, config.beta, feat.dtype)
        return (torch.cat([feat[dom], _beta_merge(feat[rest], centres, rest_owner, config.beta)]),
                torch.cat([dom, rest[centres]]), owner, weight)

    def reduce_frames(s: int, cells: Tensor, feat: Tensor, counts: list[int]):
        # a window's dynamic pools at once when they only keep top-attention tokens (released D = 0)
        n_dom = [min(c, math.floor(c * (1 - config.context_share) + 0.5)) for c in counts]
        if n_dom != counts:
            return None  # contextual DPC-kNN tokens: pool by pool
        length, size = feat.shape[:2]
        order = torch.sort(scores[s:s + length][:, cells], dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(size, device=x.device).expand(length, size))
        keep = (rank < torch.tensor(counts, device=x.device).unsqueeze(1)).flatten()
        c = sum(counts)
        slots = torch.sort(keep.logical_not(), stable=True).indices[:c]  # kept cells, frame by frame, ascending
        owner = torch.where(keep, torch.cumsum(keep, 0) - 1, -1).view(length, size)
        return feat.flatten(0, 1)[slots], slots, owner, torch.ones(length, size, dtype=feat.dtype, device=x.device)

    return merge_pools(x, windows, masks, total, round_quota, reduce, reduce_frames)


register(Method("holitom", holitom, HoliTomConfig,
                "HoliTom (pre-LLM): DP temporal windows, static cells averaged then DPC-kNN clustered, "
                "top-attention dynamic tokens (no inner-LLM merging)"))
