"""FlashVID (Fan et al., ICLR 2026): its pre-LLM stages, ADTS selection + tree-based spatio-temporal merging.

x (F, N, d) tokens (one video; a batch (B, F, N, d) is looped), scores (F, N) attention received
(FlashVID: the vision tower's last layer, mean over heads and queries, pooled like the tokens).
Our reading of the paper and its released code (Fanziyang-v/FlashVID, ``flashvid/utils.py`` and
``token_selection.py``, default ``attn_div_v2``), step by step:

1. DySeg, as FastVID: per-frame feature = mean token; cut after every adjacent pair with cosine
   below 0.9, then after the least similar remaining pairs until there are at least 8 segments
   (``aot.methods.fastvid.fastvid_segments``, which makes the same cuts).
2. Budget: frame t gets its share s_t of the exact total (split over frames as evenly as
   possible); ceil(alpha * s_t) of it (alpha = 0.7) are ADTS tokens, the other m_t go to merging.
3. ADTS (attention and diversity based token selection), per frame: calibrated distances
   D[i, j] = (1 - cos(x_i, x_j)) * a_j * r_j, with a_j the attention score and r_j = <x_j, mean
   token of the segment> (the release's "event relevance"); greedy max-min diversity: the first
   token maximises min over i != j of D[i, j], each next one maximises the minimum of D[i, j] over
   the tokens i already picked. ADTS tokens are output unchanged.
4. TSTM (tree-based spatio-temporal merging), per segment, on the tokens ADTS left: every such
   token of a later frame is linked to its most similar (cosine) such token of the previous frame,
   and merged into it when the cosine exceeds 0.8. Links form trees rooted at the tokens that are
   not merged; each tree becomes one token, the mean of its tokens, at its root's cell. If fewer
   than M = sum of the segment's m_t roots would remain, only the M-sparing links of highest
   cosine are merged (the release lowers its threshold the same way).
5. Spatial merging: the segment's M tokens are spread over its frames in proportion to their
   roots; a frame with fewer tokens than roots clusters its roots by DPC-kNN (as HoliTom's:
   k = min(clusters, 7), distances ||a - b|| / sqrt(d)), every root joining its nearest centre
   (Euclidean), and each cluster becomes the plain mean of its roots (centre included) at the
   centre's cell. If a segment gets M = 0 (tiny shares) its non-ADTS tokens are dropped.

Output: exactly round_half_up(retention * F * N) tokens ordered by (frame, position); every budget
from 1 token up is feasible.

Where and why ours differs from the release:
- Not here: FlashVID's inner-LLM step (a FastV-style prune at LLM layer 20 keeping 30% of the
  visual tokens, by the last token's attention) needs the LLM; it waits for the model adapters.
  With it the release lets the pre-LLM stage keep ``expansion`` = 1.25 times the budget so the
  FLOPs match; without it that would overshoot the budget, so the output here is the budget itself
  (for the release's vision-side count pass retention * 1.25).
- Exact budget: the release gives every frame ceil(N * rho * 1.25) tokens and every frame
  ceil(roots * M / segment roots) clusters, so its count drifts. Here shares come from the exact
  total, the clusters get the released ceil and the surplus is taken back one at a time where
  the ceil added most (``common.settle``: no frame is emptied while another holds two or more).
- ADTS: the release takes the second smallest entry of each column for the first pick (the same
  as excluding the token itself whenever its weight a_j r_j is positive) and never masks tokens it
  already picked, so when every remaining calibrated distance is <= 0 it can pick a token twice;
  here the token itself is excluded and picked tokens are never picked again.
- Single-frame segments: the release clusters the whole frame, ADTS tokens included (so they are
  output twice); here only the tokens ADTS left are clustered.
- TSTM lower bound: the release keeps more than (ADTS + merge) * frames tokens before spatial
  merging (strict threshold at the k-th largest cosine, ties keep more); here exactly M roots when
  the 0.8 threshold would leave fewer. A link to a previous frame with no ADTS-free token is never
  made (the release's cosine -1 sentinel).
- Ties: the release adds 1e-6 noise to DPC-kNN densities; here ties go to the lower index, so
  results are deterministic.

Mix (``Compressed.mix``), a merge of merges: an ADTS token has weight 1; a tree of s tokens kept
as its own row gives each 1 / s; a DPC-kNN cluster of m tree means gives each token of a tree of
s tokens 1 / (m s). ``reduce(x)`` equals ``tokens`` to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from aot.compress import Compressed
from aot.config import _check_range
from .common import assemble, check_retention, dpc_knn_many, even_split, run, settle
from .fastvid import fastvid_segments

__all__ = ["FlashVIDConfig", "flashvid", "adts"]


@dataclass(frozen=True)
class FlashVIDConfig:
    retention: float = 0.1  # rho in (0, 1]: output keeps exactly round_half_up(rho * F * N) tokens
    alpha: float = 0.7  # share of each frame's tokens chosen by ADTS (the rest come from TSTM merging)
    temporal_threshold: float = 0.8  # TSTM: link a token to its best match in the previous frame when cosine > this
    segments: int = 8  # DySeg: at least min(segments, F) segments
    segment_threshold: float = 0.9  # DySeg: also cut wherever adjacent-frame cosine < this
    k: int = 7  # DPC-kNN neighbours for the density, capped at the cluster count (as released)

    def __post_init__(self) -> None:
        check_retention(self.retention)
        _check_range("alpha", self.alpha, 0.0, 1.0)
        _check_range("temporal_threshold", self.temporal_threshold, -1.0, 1.0)
        _check_range("segment_threshold", self.segment_threshold, -1.0, 1.0)
        for name in ("segments", "k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def flashvid(x, scores, *, local_scores=None, grid=None, config: FlashVIDConfig = FlashVIDConfig()) -> Compressed:
    """FlashVID's pre-LLM stages to exactly round_half_up(retention * F * N) tokens; x (F, N, d) or (B, F, N, d)."""
    return run(_flashvid_one, FlashVIDConfig, x, scores, local_scores, grid, config)


def adts(x: Tensor, norms: Tensor, scores: Tensor, event: Tensor, k: list[int], *,
         stacked: bool = False) -> list[Tensor] | Tensor:
    """ADTS on T frames at once: x (T, N, d), norms (T, N), scores (T, N), event (T, d) the mean token
    of each frame's segment, k[t] <= N tokens to pick on frame t.

    Returns, per frame, the picked token indices in picking order (``stacked``: one (T, max(1, max k))
    tensor whose row t holds frame t's picks in its first k[t] columns).
    """
    t, n, _ = x.shape
    cos = (x @ x.transpose(1, 2)) / (norms.unsqueeze(2) * norms.unsqueeze(1))  # (T, N, N)
    weight = scores * (x @ event.unsqueeze(2)).squeeze(2)  # (T, N): attention * event relevance
    dist = (1 - cos) * weight.unsqueeze(1)  # (T, N, N): D[t, i, j], column j calibrated
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    frames = torch.arange(t, device=x.device)
    pick = dist.masked_fill(eye, math.inf).min(1).values.argmax(-1)  # (T,)
    picks = [pick]
    taken = torch.zeros(t, n, dtype=torch.bool, device=x.device)
    taken[frames, pick] = True
    nearest = dist[frames, pick].clone()  # (T, N): min over picked i of D[t, i, j]
    for _ in range(max(k) - 1):
        pick = nearest.masked_fill(taken, -math.inf).argmax(-1)
        picks.append(pick)
        taken[frames, pick] = True
        nearest = torch.minimum(nearest, dist[frames, pick])
    picks = torch.stack(picks, 1)  # (T, max k)
    return picks if stacked else [picks[i, :k[i]] for i in range(t)]


def _flashvid_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: FlashVIDConfig) -> Compressed:
    f, n, d = x.shape
    dev = x.device
    shares = even_split(total, f)
    n_adts = [min(s, math.ceil(s * config.alpha - 1e-9)) for s in shares]  # nudge: 10 * 0.7 is 7.000...1 in floats
    n_merge = [s - a for s, a in zip(shares, n_adts)]
    flat, flat_norms = x.reshape(f * n, d), norms.reshape(f * n)
    segments = fastvid_segments(x, config.segments, config.segment_threshold)
    event = torch.cat([x[s:s + length].mean((0, 1)).expand(length, d) for s, length in segments])  # (F, d)
    picks = adts(x, norms, scores, event, n_adts, stacked=True)  # (F, max k)
    # every frame at once: ADTS tokens are output unchanged; the others ("free") go to TSTM
    valid = torch.arange(picks.shape[1], device=dev) < torch.tensor(n_adts, device=dev).unsqueeze(1)
    picked = torch.zeros(f, n + 1, dtype=torch.bool, device=dev)
    picked.scatter_(1, torch.where(valid, picks, n), True)  # column n: a sink for the unused pick slots
    n_picked = sum(n_adts)
    by_kind = torch.sort(picked[:, :n].flatten().logical_not(), stable=True).indices  # picked, then free, ascending
    top, free_all = by_kind[:n_picked], by_kind[n_picked:]
    toks, poss = [flat[top]], [top]
    assignment = torch.full((f * n,), -1, dtype=torch.long, device=dev)
    assignment[top] = torch.arange(n_picked, device=dev)
    weight = torch.ones(f * n, dtype=x.dtype, device=dev)  # coefficient of each input token in its row
    row, at = n_picked, 0
    # every segment's trees, kept for one spatial-merging pass over the whole video at the end
    all_means, all_roots, all_members, all_trees, all_counts = [], [], [], [], []
    whole, clustered = [], []  # root indices of frames kept whole; (first root, roots, clusters) of clustered frames
    n_all = 0  # roots of the segments so far
    for start, length in segments:
        frames = range(start, start + length)
        free = []  # per frame: ascending flat indices of the cells ADTS left
        for t in frames:
            free.append(free_all[at:at + n - n_adts[t]])
            at += n - n_adts[t]
        budget = sum(n_merge[t] for t in frames)
        if budget == 0:  # shares too small for merged tokens: the rest is dropped
            continue

        # TSTM: link each free token to its best free match in the previous frame
        parent, link_sim = [], []
        for j in range(length):
            here = free[j]
            if j == 0 or free[j - 1].numel() == 0 or here.numel() == 0:
                parent.append(torch.full_like(here, -1))
                link_sim.append(torch.full((here.numel(),), -math.inf, dtype=x.dtype, device=dev))
                continue
            prev = free[j - 1]
            cos = (flat[here] @ flat[prev].T) / (flat_norms[here].unsqueeze(1) * flat_norms[prev].unsqueeze(0))
            best, idx = cos.max(-1)
            parent.append(prev[idx])
            link_sim.append(best)
        cand = torch.cat(link_sim)
        n_free = cand.numel()
        order = torch.sort(cand, descending=True, stable=True).indices
        # the n_link = min(links above the threshold, n_free - budget) best links merge (no host read)
        n_link = torch.clamp((cand > config.temporal_threshold).sum(), max=n_free - budget)
        merged = torch.zeros(n_free, dtype=torch.bool, device=dev)
        merged[order] = torch.arange(n_free, device=dev) < n_link
        members = torch.cat(free)
        par = torch.cat(parent)
        # roots by pointer jumping: a merged token points at its parent, a root at itself; a tree spans
        # at most `length` frames, so ceil(log2(length)) doublings reach every root
        index_of = torch.zeros(f * n, dtype=torch.long, device=dev)
        index_of[members] = torch.arange(n_free, device=dev)
        ptr = torch.where(merged, index_of[par.clamp(min=0)], torch.arange(n_free, device=dev))
        for _ in range(max(0, (length - 1).bit_length())):
            ptr = ptr[ptr]
        root_of = members[ptr]
        per_frame = torch.zeros(length, dtype=torch.long, device=dev).index_add_(
            0, members // n - start, merged.logical_not().long()).tolist()  # the segment's one host read
        n_roots = sum(per_frame)
        roots = members[torch.sort(merged, stable=True).indices[:n_roots]]  # ascending flat index = by (frame, cell)
        slot = torch.full((f * n,), -1, dtype=torch.long, device=dev)
        slot[roots] = torch.arange(n_roots, device=dev)
        tree = slot[root_of]  # (n_free,) tree of each free token
        counts = torch.bincount(tree, minlength=n_roots).to(x.dtype).unsqueeze(1)
        means = torch.zeros(n_roots, d, dtype=x.dtype, device=dev).index_add_(0, tree, flat[members]) / counts

        # spatial merging: the budget over frames in proportion to their roots, DPC-kNN inside a frame
        quotas = [Fraction(budget * r, n_roots) for r in per_frame]
        clusters = settle(budget, quotas, [-(-budget * r // n_roots) for r in per_frame], per_frame)
        first = n_all
        for r, c in zip(per_frame, clusters):
            if 0 < c == r:
                whole += range(first, first + r)
            elif c > 0:
                clustered.append((first, r, c))
            first += r
        all_means.append(means)
        all_roots.append(roots)
        all_members.append(members)
        all_trees.append(tree + n_all)
        all_counts.append(counts[:, 0])
        n_all += n_roots
    if not all_means:  # no segment had a merge budget: every free token is dropped
        return assemble(torch.cat(toks), torch.cat(poss), assignment, n, weight=weight)

    means, roots = torch.cat(all_means), torch.cat(all_roots)
    out_slot = torch.full((n_all + 1,), -1, dtype=torch.long, device=dev)  # row of each tree mean; entry n_all: a sink
    out_w = torch.ones(n_all + 1, dtype=x.dtype, device=dev)  # coefficient of each tree mean in its row
    if whole:  # frames keeping every root: the tree means themselves
        whole = torch.tensor(whole, device=dev)
        toks.append(means[whole])
        poss.append(roots[whole])
        out_slot[whole] = torch.arange(row, row + whole.numel(), device=dev)
        row += whole.numel()
    # every other frame: DPC-kNN of its tree means, frames of similar root counts in one batch (padding to
    # the batch's largest frame costs at most 1.25^2 of the pairwise distances frame by frame)
    batches = []
    for spec in sorted(clustered, key=lambda a: -a[1]):
        if batches and 5 * spec[1] >= 4 * batches[-1][0][1]:
            batches[-1].append(spec)
        else:
            batches.append([spec])
    for clustered in batches:
        width = clustered[0][1]
        take = torch.tensor([[a + i if i < r else 0 for i in range(width)] for a, r, _ in clustered], device=dev)
        put = torch.tensor([[a + i if i < r else n_all for i in range(width)] for a, r, _ in clustered],
                           device=dev).flatten()  # padding -> the sink
        cs = [c for _, _, c in clustered]
        feat = means[take]  # (B, width, d)
        centre, owner = dpc_knn_many(feat, cs, [min(config.k, c) for c in cs], sizes=[r for _, r, _ in clustered])
        c_all = sum(cs)
        offset = torch.tensor([sum(cs[:i]) for i in range(len(cs))], device=dev).unsqueeze(1)
        into = torch.where(owner >= 0, owner + offset, c_all).flatten()  # token of each root; c_all: a sink
        summed = torch.zeros(c_all + 1, d, dtype=x.dtype, device=dev).index_add_(0, into, feat.flatten(0, 1))[:c_all]
        size = torch.bincount(into, minlength=c_all + 1)[:c_all].to(x.dtype)
        toks.append(summed / size.unsqueeze(1))
        centres = torch.sort(centre.flatten().logical_not(), stable=True).indices[:c_all]  # frame by frame, ascending
        poss.append(roots[take.flatten()[centres]])
        out_slot[put] = row + into
        out_w[put] = (1 / size)[into.clamp(max=c_all - 1)]
        row += c_all
    members, tree, counts = torch.cat(all_members), torch.cat(all_trees), torch.cat(all_counts)
    assignment[members] = out_slot[tree]
    weight[members] = out_w[tree] / counts[tree]  # a mean of tree means
    return assemble(torch.cat(toks), torch.cat(poss), assignment, n, weight=weight)


# the library's config class (unchanged), so that one config serves both implementations
from aot.methods.flashvid import FlashVIDConfig  # noqa: E402,F811
