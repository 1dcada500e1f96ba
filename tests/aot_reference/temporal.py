"""Frame clips and inter-frame OT (paper Eq. 13-16, Sec. 8; DESIGN 2.4)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .intra import cosine_cost, normalise, tracks_grad
from .ot import sinkhorn

__all__ = ["uniform_clips", "dynamic_clips", "InterResult", "aggregate_inter"]

Clip = tuple[int, int]  # (first frame, number of frames)


def default_clip_length(frames: int, retention: float | None = None, anchor_share: float = 0.0) -> int:
    """Frames per clip when none is set: F // 8 (4 for 32 frames, 8 for 64; DESIGN 2.4), then

    * at most ``floor(1 / (anchor_share * retention))`` (when both are given and > 0), so that a
      clip's share of the anchors, anchor_share * retention * L * N, fits in its keyframe's N
      tokens: beyond it the anchors were capped at N, keyframes passed through whole (no intra OT)
      and the anchor share of the budget collapsed (31% instead of 70% at 256 frames, 10%);
    * at least 2 (1 for a single frame), so every clip has an inter-frame stage (F // 8 = 1 for
      F < 16 made every frame its own clip: no temporal merging, no dynamic tokens).

    The lower bound wins over the cap: above retention 1 / (2 anchor_share) clips are 2 frames and
    their anchors are whole keyframes.
    """
    length = frames // 8
    if retention is not None and anchor_share > 0:
        length = min(length, math.floor(1.0 / (anchor_share * retention) + 1e-9))
    return min(frames, max(2, length))


def uniform_clips(frames: int, length: int) -> list[Clip]:
    """Consecutive clips of ``length`` frames; the last one may be shorter."""
    return [(s, min(length, frames - s)) for s in range(0, frames, length)]


def dynamic_clips(frame_features: Tensor, length: int, tau: float) -> list[Clip]:
    """FastVID's dynamic temporal segmentation.

    frame_features: (F, d) one global feature per frame (the mean token). With c = ceil(F / length)
    target clips, cut after the c - 1 least similar adjacent pairs (cosine) and after every pair
    whose cosine is below tau. Ties break towards the earlier pair, so the result is deterministic.
    """
    f = frame_features.shape[0]
    if f == 1:
        return [(0, 1)]
    g = torch.nn.functional.normalize(frame_features.float(), dim=-1)
    sim = (g[:-1] * g[1:]).sum(-1)  # (F-1,): pair t is (t, t+1)
    n_cuts = math.ceil(f / length) - 1
    order = torch.sort(sim, stable=True).indices
    cut = torch.zeros(f - 1, dtype=torch.bool)
    cut[order[:n_cuts].cpu()] = True
    cut |= (sim < tau).cpu()
    starts = [0] + [t + 1 for t in torch.nonzero(cut).flatten().tolist()]
    ends = starts[1:] + [f]
    return [(s, e - s) for s, e in zip(starts, ends)]


class InterResult(NamedTuple):
    anchors: Tensor  # (C, M, d) clip anchors after the sequential Eq. 16 updates
    anchor_sizes: Tensor  # (C, M) int64
    kept: Tensor  # (F, M) bool: intra tokens kept as temporal dynamics (never on a clip's first frame)
    owner: Tensor  # (F, M) int64: for merged tokens, the clip-anchor index that absorbed them; else -1
    q: Tensor  # (F, M) float: max assignment probability against the clip's first frame (1 on first frames)


def _row_weights(cost: Tensor, valid: Tensor, merge: str, reg: float, n_iters: int, tol,
                 cols: Tensor | None = None) -> Tensor:
    """Row-normalised weights p (B, M, M) between tokens (rows) and anchors (columns) of Eq. 15.

    cost: 1 - cos; valid: (B, M) bool, the real slots of both sides (a frame and its clip anchors
    have the same count); padding rows and columns get zero mass and come back as zero rows and
    columns. cols: (B, M) bool, the anchors that may receive (default: valid); the others get
    zero mass too. merge="ot": the row-normalised Sinkhorn plan; otherwise cosine weights max(cos, 0).
    """
    w = valid.to(cost.dtype) / valid.sum(-1, keepdim=True)
    wc = w if cols is None else cols.to(cost.dtype) / cols.sum(-1, keepdim=True)
    if merge == "ot":
        plan = sinkhorn(cost, reg, n_iters, a=w, b=wc, tol=tol)
    else:
        plan = (1.0 - cost).clamp(min=0.0) * (w.unsqueeze(-1) > 0) * (wc.unsqueeze(-2) > 0)
    # a row with no mass (padding; with cosine weights and restricted cols, a token no allowed anchor
    # resembles) stays zero
    return normalise(plan, -1)


def _keyframe_costs(tokens: Tensor, norms: Tensor, clips: list[Clip]) -> Tensor:
    """1 - cos between every later frame's tokens and its clip's first frame: (F - C, M, M).

    One product per clip on contiguous views, so the (F, M, d) tokens are never gathered/copied.
    """
    out = []
    for s, n in clips:
        if n > 1:
            later = tokens[s + 1:s + n]  # (n-1, M, d) view
            key = tokens[s].expand(n - 1, *tokens.shape[1:])
            out.append(cosine_cost(later, key, norms[s + 1:s + n], norms[s].expand(n - 1, -1)))
    return torch.cat(out)


def aggregate_inter(
    tokens: Tensor,
    sizes: Tensor,
    clips: list[Clip],
    n_keep: int,
    valid: Tensor | None = None,
    *,
    reg: float = 0.1,
    n_iters: int = 100,
    tol: float | None = None,
    lam: float = 1.0,
    merge: str = "ot",
    keep_by: str = "cosine",
    keep_ref: str = "keyframe",
    guard: bool = False,
) -> InterResult:
    """Eq. 13-16 with an exact budget.

    tokens: (F, M, d) intra-compressed frames, sizes: (F, M), valid: (F, M) bool (False on
    padding slots; all frames of a clip share one anchor count). Each clip's first frame is its
    anchor set. The paper keeps token i of a later frame when q_i = max_j p_ij < tau, with tau
    tuned by hand; here exactly ``n_keep`` tokens are kept, those with the lowest q over the whole
    video (a clip with more motion keeps more), q = max_j p_ij with keep_by="plan" or the max
    cosine to the keyframe anchors with keep_by="cosine" (the default; see AOTConfig.keep_by). Selection pass: q against the clip's first frame,
    all later frames in one batch. Merge pass: frame by frame (position 1, 2, ... of every clip
    in parallel) the plan against the *current* anchors, and Eq. 16
    a_j <- (a_j + lam * sum_{i merged} p_ij s_i) / (1 + lam * sum_{i merged} p_ij),
    i.e. the paper's sequential anchor updates. Merged token i is owned by argmax_j p_ij.
    merge (ablations): "cosine" uses p_ij proportional to max(cos, 0); "none" drops the tokens
    not kept (owner -1).
    Differentiable w.r.t. tokens when they require grad (the anchor updates then run out of place;
    the choice of kept tokens and owners is discrete and carries no gradient).
    Options for counting (issue 8, README "Where peers win"; off by default here; AOTConfig's
    defaults, chosen on validation: keep_ref="keyframe", guard=True via unmatched_anchors="skip"):
    keep_ref="previous" judges "changed" against the previous frame's tokens instead of the
    keyframe's (position 1 of a clip: the keyframe either way). guard=True lets an anchor receive
    nothing from a frame in which it has no counterpart: its highest cosine to the frame's merged
    tokens is at most tau, the keep rule's own cutoff (the highest max-cosine-to-the-keyframe of a
    kept token); the balanced plan of that frame then runs over the other anchors (all of them
    when every anchor would be guarded). Without it, balanced marginals make every anchor absorb
    one token's worth of each later frame, so an object seen only on the keyframe is averaged away.
    """
    f, m, d = tokens.shape
    dev = tokens.device
    grad = tracks_grad(tokens)
    if valid is None:
        valid = torch.ones(f, m, dtype=torch.bool, device=dev)
    starts = torch.tensor([s for s, _ in clips], device=dev)
    later = torch.ones(f, dtype=torch.bool, device=dev)
    later[starts] = False
    later_idx = torch.nonzero(later).flatten()
    q = torch.ones(f, m, dtype=torch.float32, device=dev)
    kept = torch.zeros(f, m, dtype=torch.bool, device=dev)
    owner = torch.full((f, m), -1, dtype=torch.long, device=dev)
    anchors = tokens[starts].clone()  # (C, M, d)
    anchor_sizes = sizes[starts].clone()
    if later_idx.numel() == 0:
        return InterResult(anchors, anchor_sizes, kept, owner, q)

    # selection pass: q of every later token against its clip's keyframe anchors
    norms = tokens.norm(dim=-1)  # (F, M)
    key_cost = _keyframe_costs(tokens, norms, clips)  # (F - C, M, M)
    p = None  # row weights against the keyframe: the merge weights of position 1 of every clip
    col_ok = valid[later_idx].unsqueeze(-2)
    key_cos = (1.0 - key_cost.detach()).masked_fill(~col_ok, -2.0).amax(-1)  # (F - C, M) best cosine to the keyframe
    ref_cost = key_cost
    if keep_ref == "previous":  # each later frame against the frame before it (same clip)
        # every frame against its predecessor on slices (views: the tokens are never gathered into a
        # copy), then the rows of later frames; the C - 1 clip-boundary pairs are computed and dropped
        pairs = cosine_cost(tokens[1:], tokens[:-1], norms[1:], norms[:-1])  # (F - 1, M, M)
        ref_cost = pairs[later_idx - 1]
    if keep_by == "plan":
        sel = _row_weights(ref_cost, valid[later_idx], "ot", reg, n_iters, tol)
        q[later_idx] = sel.detach().amax(-1).to(q.dtype)
        if ref_cost is key_cost:
            p = sel
    elif ref_cost is key_cost:  # "changed" as far from every keyframe anchor: q = max cosine
        q[later_idx] = key_cos.to(q.dtype)
    else:
        q[later_idx] = (1.0 - ref_cost.detach()).masked_fill(~col_ok, -2.0).amax(-1).to(q.dtype)
    if merge != "none" and (p is None or merge != "ot"):
        p = _row_weights(key_cost, valid[later_idx], merge, reg, n_iters, tol)
    if n_keep:
        flat_q = q[later_idx].masked_fill(~valid[later_idx], float("inf")).flatten()
        if n_keep > int(valid[later_idx].sum()):
            raise ValueError(f"cannot keep {n_keep} dynamic tokens from {int(valid[later_idx].sum())} candidates")
        pick = torch.sort(flat_q, stable=True).indices[:n_keep]
        kept_later = torch.zeros_like(flat_q, dtype=torch.bool)
        kept_later[pick] = True
        kept[later_idx] = kept_later.view(-1, m)
    tau = float(key_cos[kept[later_idx]].max()) if guard and n_keep else None

    # merge pass: sequential over positions within the clips, batched over clips
    clip_starts = [s for s, _ in clips]
    lengths = [n for _, n in clips]
    first_plan = {t: i for i, t in enumerate(later_idx.tolist())}
    for step in range(1, max(lengths) if merge != "none" else 1):
        active = [c for c, n in enumerate(lengths) if n > step]  # clips that have this position
        frames = [clip_starts[c] + step for c in active]
        s = _rows(tokens, frames)  # (A, M, d), a view for uniform clips
        a = _rows(anchors, active)
        merged = ~kept[frames] & valid[frames]  # (A, M)
        rows = [first_plan[t] for t in frames]
        cost = key_cost[rows] if step == 1 else cosine_cost(s, a, s.norm(dim=-1), a.norm(dim=-1))
        cols = None
        if tau is not None:  # anchors without a counterpart among this frame's merged tokens receive nothing
            best = (1.0 - cost).masked_fill(~merged.unsqueeze(-1), -2.0).amax(1)  # (A, M_anc)
            cols = valid[frames] & (best > tau)
            cols = torch.where(cols.any(-1, keepdim=True), cols, valid[frames])
        if step == 1 and cols is None:  # anchors are still the keyframes: reuse the selection pass plans
            pa = p[rows]
        else:
            pa = _row_weights(cost, valid[frames], merge, reg, n_iters, tol, cols)
        w = pa.to(s.dtype) * merged.unsqueeze(-1)  # (A, M_tok, M_anc)
        recv = w.sum(1).unsqueeze(-1)  # (A, M_anc, 1)
        # Eq. 16: a <- (a + lam * ctx) / (1 + lam * recv), in place unless a graph is recorded
        ctx = torch.bmm(w.transpose(1, 2), s)  # (A, M_anc, d)
        if grad:
            ctx = (ctx * lam + a) / (recv * lam + 1.0)
        else:
            ctx.mul_(lam).add_(a).div_(recv.mul_(lam).add_(1.0))
        if a.data_ptr() == anchors.data_ptr() and a.shape == anchors.shape:
            anchors = ctx
        elif grad:  # a (a view of anchors) is saved by the cost's product: write a new tensor
            anchors = anchors.index_put((torch.tensor(active, device=dev),), ctx)
        else:
            anchors[active] = ctx
        # a merged token that gives no anchor any weight (cosine merge: it resembles none) is dropped
        own = pa.argmax(-1).masked_fill(~merged | (pa.detach().amax(-1) <= 0), -1)  # (A, M_tok)
        owner[frames] = own
        add = torch.zeros_like(anchor_sizes[active]).scatter_add_(1, own.clamp(min=0), sizes[frames] * (own >= 0))
        anchor_sizes[active] += add
    return InterResult(anchors, anchor_sizes, kept, owner, q)


def _rows(t: Tensor, idx: list[int]) -> Tensor:
    """t[idx] along dim 0, as a strided view (no copy) when idx is an arithmetic progression."""
    if len(idx) == 1:
        return t[idx[0]:idx[0] + 1]
    step = idx[1] - idx[0]
    if step > 0 and all(b - a == step for a, b in zip(idx, idx[1:])):
        return t[idx[0]:idx[-1] + 1:step]
    return t[idx]
