"""FastVID (Shen et al., 2025): dynamic segmentation + density spatiotemporal pruning (DESIGN 3).

Our reading of the paper and its released code (LunarShen/FastVID), step by step:

1. DySeg: per-frame global feature = mean token (the released code uses the vision tower's pooled
   feature, which the call shape does not carry); cut after the c - 1 least similar adjacent pairs
   and after every pair with cosine < tau (aot.temporal.dynamic_clips, c = 8, tau = 0.9).
2. Budget: frame share s (the exact total split over frames as evenly as possible), context
   tokens int(s * d) (d = 0.4), salient tokens the rest (about 60%).
3. ATS: per frame the salient tokens are the top scores (ties to the lower index); they are
   output unchanged.
4. DTM: anchor frames are the last frame of each segment and every p-th frame before it (p = 4;
   the released code counts from the segment's end). The segment's context count (sum of its
   frames' int(s * d)) goes to its anchor frames as evenly as possible. On each anchor frame
   the context tokens are the non-salient tokens of highest DPC-kNN score (distances
   ||a - b|| / sqrt(d); density exp(-mean squared distance to the k = 4 nearest, self included);
   score = density * distance to the nearest denser token, the densest token getting the
   frame's largest distance).
5. Every non-salient token of the segment (every frame, the context tokens included) joins its
   most similar (cosine) context token; a context token with n members becomes
   w * c + (1 - w) * mean(members), w = max(1 / (n + 1), beta = 0.6), and keeps c's grid
   position (FastVID's position-aware merging: tokens keep their original position ids).
   Nothing is dropped (sizes sum to F * N) unless a segment's shares are too small for any
   context token (s * d < 1 on all its frames), when its non-salient tokens are dropped, as released.

Deviations, all for an exact budget or a well-defined assignment:
- Exact budget: the released code gives every anchor frame floor(context / anchor frames)
  tokens (and int(N * rho) per frame), so its output is a little short of rho * F * N; here the
  remainders are spread. When an anchor frame has fewer non-salient tokens than its context
  share (only at high retention), the excess goes to the other anchor frames of the segment,
  then to extra salient tokens on its non-anchor frames.
- In a segment with several anchor frames (more than p frames) the released code matches every
  token against each anchor frame's context tokens separately, so one token is merged into one
  context token per anchor frame. Here each token joins a single context token, the most similar
  over the whole segment, so that every input token has one owner. With at most p frames per
  segment (the usual case: 32 frames in c = 8 segments) the two are identical.
- Ties: the released code breaks density ties with 1e-6 uniform noise; here a tie counts the
  lower index as denser, so results are deterministic. A context token is always its own member.

Mix (``Compressed.mix``): a salient token has weight 1 in its row; a context row with n members
(itself included) carries w + (1 - w) / n on the context token and (1 - w) / n on each other
member, w = max(1 / (n + 1), beta). ``reduce(x)`` equals ``tokens`` to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aot.compress import Compressed
from aot.config import _check_range
from aot.temporal import dynamic_clips
from .common import assemble, capped_split, check_retention, cosine_sim, dpc_knn_many, even_split, run

__all__ = ["FastVIDConfig", "fastvid", "dpc_knn_scores", "fastvid_segments"]


@dataclass(frozen=True)
class FastVIDConfig:
    retention: float = 0.1  # rho in (0, 1]: output keeps exactly round_half_up(rho * F * N) tokens
    segments: int = 8  # DySeg c: at least min(c, F) segments (cut after the c - 1 least similar pairs)
    tau: float = 0.9  # DySeg: also cut wherever adjacent-frame cosine < tau
    context_share: float = 0.4  # STPrune d: share of each frame's tokens spent on DTM context tokens
    anchor_step: int = 4  # DTM p: an anchor frame every p frames of a segment, counted from its end
    k: int = 4  # DPC-kNN neighbours for the density (self included, as released)
    beta: float = 0.6  # DTM: weight kept on the context token, w = max(1 / (n + 1), beta)

    def __post_init__(self) -> None:
        check_retention(self.retention)
        for name in ("segments", "anchor_step", "k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        _check_range("tau", self.tau, -1.0, 1.0)
        _check_range("context_share", self.context_share, 0.0, 1.0)
        _check_range("beta", self.beta, 0.0, 1.0)


def fastvid(x, scores, *, local_scores=None, grid=None, config: FastVIDConfig = FastVIDConfig()) -> Compressed:
    """FastVID to exactly round_half_up(retention * F * N) tokens; x (F, N, d) or (B, F, N, d)."""
    return run(_fastvid_one, FastVIDConfig, x, scores, local_scores, grid, config)


def fastvid_segments(x: Tensor, segments: int, tau: float) -> list[tuple[int, int]]:
    """DySeg on x (F, N, d): (first frame, length) of each segment."""
    f = x.shape[0]
    c = min(segments, f)
    # dynamic_clips makes ceil(F / length) - 1 rank cuts; F / (c - 1/2) gives exactly c - 1
    return dynamic_clips(x.mean(dim=1), f / (c - 0.5), tau)


def dpc_knn_scores(feat: Tensor, k: int) -> Tensor:
    """DPC-kNN score of each row of feat (m, d): density * distance to the nearest denser row."""
    m, d = feat.shape
    dist = torch.cdist(feat, feat, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(d)
    near = torch.topk(dist, min(k, m), dim=-1, largest=False).values
    density = torch.exp(-(near ** 2).mean(-1))
    idx = torch.arange(m, device=feat.device)
    denser = (density.unsqueeze(0) > density.unsqueeze(1)) | (
        (density.unsqueeze(0) == density.unsqueeze(1)) & (idx.unsqueeze(0) < idx.unsqueeze(1)))  # [i, j]: j denser than i
    delta = torch.where(denser, dist, dist.max()).min(-1).values
    return delta * density


def _fastvid_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: FastVIDConfig) -> Compressed:
    f, n, d = x.shape
    dev = x.device
    shares = even_split(total, f)
    n_ctx = [int(s * config.context_share) for s in shares]
    sal = [s - c for s, c in zip(shares, n_ctx)]  # salient tokens per frame, plus a segment's overflow below
    plan = []  # per segment: (frames, anchor frames, context tokens per anchor frame, wanted context tokens)
    for start, length in fastvid_segments(x, config.segments, config.tau):
        frames = list(range(start, start + length))
        anchors = [t for t in frames if (start + length - 1 - t) % config.anchor_step == 0]
        plain = [t for t in frames if t not in anchors]
        want = sum(n_ctx[t] for t in frames)
        per_anchor = capped_split(want, [n - sal[t] for t in anchors])
        extra = capped_split(want - sum(per_anchor), [n - sal[t] for t in plain])  # high retention only
        for t, e in zip(plain, extra):
            sal[t] += e
        plan.append((frames, anchors, per_anchor, want))

    # ATS, every frame at once: the top-scored sal[t] tokens of frame t, output unchanged
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # per frame top_by_score
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=dev).expand(f, n))
    salient = (rank < torch.tensor(sal, device=dev).unsqueeze(1)).flatten()
    n_salient = sum(sal)
    by_kind = torch.sort(salient.logical_not(), stable=True).indices  # salient ascending, then the rest ascending
    top, rest_all = by_kind[:n_salient], by_kind[n_salient:]
    flat, flat_norms = x.reshape(f * n, d), norms.reshape(f * n)
    toks, poss = [flat[top]], [top]
    assignment = torch.full((f * n,), -1, dtype=torch.long, device=dev)
    assignment[top] = torch.arange(n_salient, device=dev)
    weight = torch.ones(f * n, dtype=x.dtype, device=dev)  # coefficient of each input token in its row
    # DTM context tokens = density peaks of the anchor frames: every anchor frame of the video in one batch
    first = [sum(n - sal[u] for u in range(t)) for t in range(f)]  # where frame t's non-salient tokens start in rest_all
    peaks = [(t, c) for frames, anchors, per_anchor, want in plan if want for t, c in zip(anchors, per_anchor) if c]
    if peaks:
        sizes = [n - sal[t] for t, _ in peaks]
        width = max(sizes)
        cand = rest_all[torch.tensor([[first[t] + i if i < m else first[t] for i in range(width)]
                                      for (t, _), m in zip(peaks, sizes)], device=dev)]  # (A, width) flat indices
        cs = [c for _, c in peaks]
        _, _, by_score = dpc_knn_many(flat[cand], cs, [min(config.k, m) for m in sizes], sizes=sizes, return_order=True)
        chosen = (torch.arange(width, device=dev) < torch.tensor(cs, device=dev).unsqueeze(1)).flatten()
        ctx_all = cand.gather(1, by_score).flatten()[torch.sort(chosen.logical_not(), stable=True).indices[:sum(cs)]]
    row, lo, at = n_salient, 0, 0
    for frames, anchors, per_anchor, want in plan:
        rest = rest_all[lo:lo + sum(n - sal[t] for t in frames)]  # flat indices of the segment's non-salient tokens
        lo += rest.numel()
        n_ctx_seg = sum(per_anchor) if want else 0
        if n_ctx_seg == 0:  # shares too small for any context token (released code: same), or every anchor
            continue  # frame all salient tokens: the rest is dropped
        ctx = ctx_all[at:at + n_ctx_seg]  # the segment's anchor frames in order, each by descending score
        at += n_ctx_seg
        owner = cosine_sim(flat[rest], flat[ctx], flat_norms[rest], flat_norms[ctx]).argmax(-1)
        self_row = torch.searchsorted(rest, ctx)  # rest is ascending: where each context token sits in it
        self_slot = torch.arange(ctx.numel(), device=dev)
        owner[self_row] = self_slot  # a context token is its own member
        counts = torch.bincount(owner, minlength=ctx.numel()).to(x.dtype).unsqueeze(1)
        mean = torch.zeros(ctx.numel(), d, dtype=x.dtype, device=dev).index_add_(0, owner, flat[rest]) / counts
        w = (1 / (counts + 1)).clamp(min=config.beta)
        toks.append(w * flat[ctx] + (1 - w) * mean)
        coef = ((1 - w) / counts)[owner, 0]  # every member (the context token too) in the mean
        coef[self_row] += w[self_slot, 0]  # and the context token's own share w
        weight[rest] = coef
        poss.append(ctx)
        assignment[ctx] = torch.arange(row, row + ctx.numel(), device=dev)
        assignment[rest] = row + owner
        row += ctx.numel()
    return assemble(torch.cat(toks), torch.cat(poss), assignment, n, weight=weight)


# the library's config class (unchanged), so that one config serves both implementations
from aot.methods.fastvid import FastVIDConfig  # noqa: E402,F811
