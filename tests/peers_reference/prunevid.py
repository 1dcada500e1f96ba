"""PruneVid (Huang et al., ACL 2025 findings): its pre-LLM stage, static-token merging + spatial clustering.

x (F, N, d) tokens (one video; a batch (B, F, N, d) is looped). PruneVid's pre-LLM stage uses only
the tokens: ``scores`` are validated like every method's but not used. Our reading of the paper and
its released code (Visual-AI/PruneVid, ``models/pllava/modeling_pllava.py``, ``merge_frames_dynamic``,
run as in ``scripts/eval.sh``), step by step:

1. Temporal segmentation: per-frame feature = mean token; DPC-kNN on the F frame features into
   c = max(1, int(F * segment_ratio)) clusters (segment_ratio 0.25, k = 7; distances
   ||a - b|| / sqrt(d), density exp(-mean squared distance to the k nearest, self included),
   score = density * distance to the nearest denser frame, the top c scores are the centres, every
   frame takes its nearest centre's label). The labels are then made contiguous: for each label,
   its longest runs of consecutive frames are kept (every run of that longest length); its other
   runs, and all runs of a label whose longest run is one frame, are unlabelled. Going left to
   right, each unlabelled run takes the label of the longer of its two neighbouring runs (ties to
   the left; no neighbour at all: label 0). A segment is a maximal run of one label.
2. Static tokens: in a segment of W >= 2 frames a cell is static when the mean cosine similarity
   of its tokens over all pairs of distinct frames exceeds tau = 0.8. Its W tokens become one, their
   mean, sitting at the segment's first frame (``dynamic=False``). The other cells are dynamic:
   their tokens stay per frame (``dynamic=True``). A one-frame segment has only dynamic cells.
   What is left is P tokens: one static pool per segment with static cells and one dynamic pool
   (the segment's other cells) per frame.
3. Spatial clustering, per pool: DPC-kNN (as in step 1, k = 7, capped at the pool size) into that
   pool's count; every token joins its nearest centre (Euclidean; a centre owns itself) and each
   cluster becomes the plain mean of its tokens, at its centre's cell.

Published settings (``scripts/eval.sh``): tau 0.8, temporal segment ratio 0.25, cluster ratio 0.5,
k 7; for the in-LLM part, layer 10 and alpha 0.4.

Output: exactly round_half_up(retention * F * N) tokens ordered by (frame, position). Every budget
from 1 token up is feasible (``Method.check`` refuses only a budget of 0 tokens).

Where and why ours differs from the release:
- Not here: PruneVid's in-LLM part (at LLM layer 10 it keeps the alpha = 40% of each segment's
  static and dynamic visual tokens that the question attends to most, and prunes the KV cache to
  them) needs the language model's attention; it is not implemented. The release's token
  counts (about 16-17% of the visual tokens) are after both parts.
- Exact budget instead of a cluster ratio: the release clusters every pool of more than 14 tokens
  into int(size * cluster_ratio) clusters (0.5) and keeps smaller pools whole, so its count depends
  on the content. Here the budget R is spread over all pools in proportion to their sizes (floor
  of R * size / P, the shortfall settled by ``common.settle``: one token at a time to the pool
  furthest below its share, ties to the earlier pool); no 14-token exemption. A pool whose count
  is 0 (only when R is below one token per pool) is dropped (assignment -1).
- When temporal merging leaves fewer tokens than the budget (R > P, e.g. a still video above
  1/F retention) the release has nothing to give back. Here every pool is kept whole and the
  R - P extra tokens undo temporal merging evenly over the static cells (water filling, at most
  W - 1 per cell): a static cell with e extra tokens is split into e + 1 runs of consecutive frames
  (lengths differing by at most one), each the mean of its run, sitting at its run's first frame.
- Positions: the release puts each segment's static tokens before its dynamic ones and gives the
  LLM contiguous positions; here every token carries its grid cell (static: the segment's first
  frame) and the output is ordered by (frame, position), as every method of this library.
- Ties: the release adds 1e-6 uniform noise to the densities; here an equal density counts the
  lower index as denser and every other tie (centres, nearest centre) goes to the lower index, so
  results are deterministic (a still video is then one segment).
- F < 4 frames: the release's int(F * 0.25) = 0 clusters is not defined; here at least one.

Mix (``Compressed.mix``), the two merges composed: a cluster of m rows gives each 1 / m; a static
cell's row is its mean over the segment's W frames, so each of its W input tokens gets 1 / (m W)
(a run of a split cell: 1 / run length). ``reduce(x)`` equals ``tokens`` to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aot.compress import Compressed
from aot.config import _check_range
from .common import check_retention, dpc_knn_many, merge_pools, run, top_by_score
from .fastvid import dpc_knn_scores

__all__ = ["PruneVidConfig", "prunevid", "prunevid_segments", "contiguous_labels", "dpc_knn_assign",
           "dpc_knn_assign_many"]


@dataclass(frozen=True)
class PruneVidConfig:
    retention: float = 0.1  # rho in (0, 1]: output keeps exactly round_half_up(rho * F * N) tokens
    tau: float = 0.8  # a cell of a segment is static when its mean pairwise cosine over the segment's frames > tau
    segment_ratio: float = 0.25  # temporal segmentation: DPC-kNN on frame features into max(1, int(F * ratio)) clusters
    k: int = 7  # DPC-kNN neighbours for the density (frames and tokens), capped at the number of points

    def __post_init__(self) -> None:
        check_retention(self.retention)
        _check_range("tau", self.tau, -1.0, 1.0)
        _check_range("segment_ratio", self.segment_ratio, 0.0, 1.0)
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k must be an int >= 1, got {self.k!r}")


def prunevid(x, scores, *, local_scores=None, grid=None, config: PruneVidConfig = PruneVidConfig()) -> Compressed:
    """PruneVid's pre-LLM stage to exactly round_half_up(retention * F * N) tokens; x (F, N, d) or (B, F, N, d)."""
    return run(_prunevid_one, PruneVidConfig, x, scores, local_scores, grid, config)


def dpc_knn_assign(feat: Tensor, c: int, k: int) -> tuple[Tensor, Tensor]:
    """DPC-kNN on feat (m, d) into 1 <= c <= m clusters, k neighbours (capped at m) for the density.

    Returns (centres (c,) row indices, ascending; owner (m,) slot in ``centres`` of each row's
    nearest centre (Euclidean, ties to the lower slot), every centre owning itself).
    """
    centres = torch.sort(top_by_score(dpc_knn_scores(feat, k), c)).values
    dist = torch.cdist(feat, feat[centres], compute_mode="donot_use_mm_for_euclid_dist")
    owner = dist.argmin(-1)
    owner[centres] = torch.arange(c, device=feat.device)
    return centres, owner


def dpc_knn_assign_many(feat: Tensor, counts: list[int], k: int) -> tuple[Tensor, Tensor]:
    """``dpc_knn_assign`` on B pools of m rows at once, bit for bit: feat (B, m, d), counts[b] in
    0..m clusters for pool b (0: no clusters), k neighbours (capped at m) for the density.

    Returns (centre (B, m) bool: the rows that are centres; owner (B, m) long: slot of each row's
    centre among its pool's centres in ascending row order, -1 in a pool with no clusters).
    """
    return dpc_knn_many(feat, counts, min(k, feat.shape[1]))


def contiguous_labels(labels: list[int]) -> list[int]:
    """Step 1's refinement: per-frame cluster labels -> labels whose runs are the segments."""
    f = len(labels)
    runs: dict[int, list[tuple[int, int]]] = {}  # label -> its runs (start, end inclusive)
    start = 0
    for t in range(1, f + 1):
        if t == f or labels[t] != labels[start]:
            runs.setdefault(labels[start], []).append((start, t - 1))
            start = t
    out = list(labels)
    for label, spans in runs.items():
        longest = max(e - s + 1 for s, e in spans)
        for s, e in spans:
            if longest == 1 or e - s + 1 < longest:
                out[s:e + 1] = [None] * (e - s + 1)
    t = 0
    while t < f:
        if out[t] is not None:
            t += 1
            continue
        s = t
        while t < f and out[t] is None:
            t += 1
        left = right = None
        left_len = right_len = 0
        if s > 0:
            left, j = out[s - 1], s - 1
            while j >= 0 and out[j] == left:
                j -= 1
            left_len = s - 1 - j
        if t < f:
            right, j = out[t], t
            while j < f and out[j] == right:
                j += 1
            right_len = j - t
        if right_len > left_len:
            label = right
        elif left is not None:
            label = left
        else:
            label = right if right is not None else 0
        out[s:t] = [label] * (t - s)
    return out


def prunevid_segments(x: Tensor, segment_ratio: float, k: int) -> list[tuple[int, int]]:
    """Step 1 on x (F, N, d): (first frame, length) of each segment."""
    f = x.shape[0]
    c = max(1, int(f * segment_ratio))
    _, owner = dpc_knn_assign(x.mean(dim=1), c, k)
    labels = contiguous_labels(owner.tolist())
    out, start = [], 0
    for t in range(1, f + 1):
        if t == f or labels[t] != labels[start]:
            out.append((start, t - start))
            start = t
    return out


def _prunevid_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: PruneVidConfig) -> Compressed:
    n, d = x.shape[1:]
    segments = prunevid_segments(x, config.segment_ratio, config.k)
    unit = x / norms.unsqueeze(-1)
    masks = []  # per segment: its static cells
    for s, length in segments:
        if length > 1:
            summed = unit[s:s + length].sum(0)  # (N, d): sum_{i != j} cos = |sum|^2 - W
            mean_cos = ((summed * summed).sum(-1) - length) / (length * (length - 1))
            masks.append(mean_cos > config.tau)
        else:
            masks.append(torch.zeros(n, dtype=torch.bool, device=x.device))

    def reduce(kind: str, t: int, cells: Tensor, feat: Tensor, c: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        centres, owner = dpc_knn_assign(feat, c, config.k)  # every pool: DPC-kNN clusters, plain means
        counts = torch.bincount(owner, minlength=c).to(feat.dtype).unsqueeze(1)
        tokens = torch.zeros(c, d, dtype=feat.dtype, device=x.device).index_add_(0, owner, feat) / counts
        return tokens, centres, owner, (1 / counts[:, 0])[owner]

    def reduce_frames(s: int, cells: Tensor, feat: Tensor, counts: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # a segment's dynamic pools (the same cells on every frame) in one batch: the same as reduce pool by pool
        centre, owner = dpc_knn_assign_many(feat, counts, config.k)
        offset = torch.tensor([sum(counts[:i]) for i in range(len(counts))], device=x.device).unsqueeze(1)
        owner = torch.where(owner >= 0, owner + offset, -1)  # (L, S) token 0..C-1
        c = sum(counts)
        into = torch.where(owner >= 0, owner, c).flatten()  # row c: a sink for dropped pools
        sizes = torch.bincount(into, minlength=c + 1)[:c].to(feat.dtype).unsqueeze(1)
        tokens = torch.zeros(c + 1, d, dtype=feat.dtype, device=x.device).index_add_(0, into, feat.flatten(0, 1))[:c] / sizes
        slots = torch.sort(centre.flatten().logical_not(), stable=True).indices[:c]  # pool by pool, centres ascending
        return tokens, slots, owner, (1 / sizes[:, 0])[owner.clamp(min=0)]

    return merge_pools(x, segments, masks, total, lambda kind, quota: math.floor(quota), reduce, reduce_frames)


# the library's config class (unchanged), so that one config serves both implementations
from aot.methods.prunevid import PruneVidConfig  # noqa: E402,F811
