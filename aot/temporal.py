"""Frame clips and inter-frame OT (paper Eq. 13-16, Sec. 8; DESIGN 2.4)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .indices import const
from .intra import cosine_cost, normalise, tracks_grad
from .ot import plain_bound, sinkhorn_, static_bound

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


def clip_length_of(config, frames: int) -> int:
    """Frames per clip under an AOTConfig: ``clip_length`` if set; else, with ``anchor_density``
    set, ``round_half_up(anchor_density / (anchor_share * retention))`` within [2, F] (a keyframe's
    anchors are about anchor_density * N of its N tokens); else ``default_clip_length``."""
    if config.clip_length:
        return config.clip_length
    if config.anchor_density is not None and config.anchor_share > 0:
        length = math.floor(config.anchor_density / (config.anchor_share * config.retention) + 0.5)
        return min(frames, max(2, length))
    return default_clip_length(frames, config.retention, config.anchor_share)


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
    # the linear map of the Eq. 16 updates, no graph: the step at later frame t sets
    # A <- decay[t] * A + coef[t] @ tokens[t] for its clip's anchors A (M_anc, d)
    coef: Tensor | None = None  # (F, M_anc, M_tok): lam w^T / (1 + lam recv); zero on first frames and without merging
    decay: Tensor | None = None  # (F, M_anc): 1 / (1 + lam recv); one on first frames and without merging


def _row_weights(cost: Tensor, valid: Tensor, merge: str, reg: float, n_iters: int, tol,
                 cols: Tensor | None = None, videos: int = 1, *, mass: Tensor | None = None, own: bool = False,
                 mask_rows: bool = True) -> Tensor:
    """Row-normalised weights p (B, M, M) between tokens (rows) and anchors (columns) of Eq. 15.

    cost: 1 - cos; valid: (B, M) bool, the real slots of both sides (a frame and its clip anchors
    have the same count); padding rows and columns get zero mass and come back as zero rows and
    columns. cols: (B, M) bool, the anchors that may receive (default: valid); the others get
    zero mass too. merge="ot": the row-normalised Sinkhorn plan; otherwise cosine weights max(cos, 0).
    videos: B holds this many videos' problems one after the other; each video's Sinkhorn stops as
    it would alone. mass: valid / valid.sum(-1) when the caller has it. own: the cost may be
    overwritten (else it is left as it is). mask_rows=False: padding rows may come back nonzero
    (for callers that mask them anyway: one operator less).
    """
    w = _uniform(valid, cost.dtype) if mass is None else mass
    wc = w if cols is None else _uniform(cols, cost.dtype)
    if merge == "ot":
        b, m, n = cost.shape
        work = cost if own or tracks_grad(cost) else cost.clone()  # the solver overwrites a cost without graph
        p = sinkhorn_(work, reg, n_iters, w, wc, tol, blocks=videos, bound=static_bound(reg, m, n),
                      plain=plain_bound(reg, m, n), rows=True)
        return p * valid.unsqueeze(-1) if mask_rows else p
    w, wc = (t.squeeze(-2) if t.dim() == 3 else t for t in (w, wc))  # (B, M) (callers may pass (B, 1, M))
    plan = (1.0 - cost).clamp(min=0.0) * (w.unsqueeze(-1) > 0) * (wc.unsqueeze(-2) > 0)
    # a row with no mass (padding; with cosine weights and restricted cols, a token no allowed anchor
    # resembles) stays zero
    return normalise(plan, -1)


def _uniform(mask: Tensor, dtype) -> Tensor:
    """mask / its count along the last dim (the uniform marginal over the True entries), in dtype.
    bool / int64 divides in float32 directly (the same value as mask.float() / count)."""
    den = mask.sum(-1, keepdim=True)
    return mask / den if dtype == torch.float32 else mask.to(dtype) / den


class _Layout:
    """Index tensors of V videos with the same clips (frame f of video v is row v * F + f), built once
    per call from Python ints: nothing here reads the device."""

    def __init__(self, clips: list[Clip], frames: int, videos: int, device):
        self.frames, self.videos, self.n_clips = frames, videos, len(clips)
        self.lengths = [n for _, n in clips]
        later = [s + i for s, n in clips for i in range(1, n)]  # ascending: clips are consecutive
        key_of = [s for s, n in clips for _ in range(1, n)]
        off = lambda idx: [v * frames + i for v in range(videos) for i in idx]  # noqa: E731
        t = lambda idx: const(idx, device)  # noqa: E731
        self.starts_list = off([s for s, _ in clips])
        self.later_list = off(later)
        self.key_of_list = off(key_of)
        self.clip_of = [v * len(clips) + c for v in range(videos) for c, (_, n) in enumerate(clips) for _ in range(n)]
        self.starts, self.later = t(self.starts_list), t(self.later_list)
        self.n_later = len(later)  # per video
        self.later_row = {f: i for i, f in enumerate(self.later_list)}  # a later frame's row among them
        self.device = device
        # every clip the same length: frames are a (V C, L) grid, so frames at one position are a strided view
        self.regular = len(set(self.lengths)) == 1 and self.lengths[0] * len(clips) == frames
        if not self.regular:
            self._order(clips, frames, videos)

    def _order(self, clips: list[Clip], frames: int, videos: int):
        """The merge pass's order on an irregular layout (Python ints only). Clips sorted longest
        first (stable), video by video: row v * C + r of the anchors is video v's r-th longest clip,
        so the clips that have position k are the first ``active[k]`` of every video (a prefix).
        Later frames position-major: position 1 of every active clip of video 0, of video 1, ...,
        then position 2, ...: each step's frames are one contiguous run (``pm_sizes``), grouped by
        video as the solver's stop groups need."""
        order = sorted(range(len(clips)), key=lambda c: -clips[c][1])  # longest first, stable
        self.sorted = order == list(range(len(clips)))  # uniform clips with a shorter last one: True
        self.active = [sum(1 for _, n in clips if n > k) for k in range(max(self.lengths))]  # per video
        pm, key = [], []
        for k in range(1, len(self.active)):
            for v in range(videos):
                for r in range(self.active[k]):
                    s = v * frames + clips[order[r]][0]
                    pm.append(s + k)
                    key.append(s)
        self.pm_list, self.pm_sizes = pm, [videos * n for n in self.active[1:]]
        t = lambda idx: const(idx, self.device)  # noqa: E731
        self.pm, self.pm_key = t(pm), t(key)
        self.lat_of_pm = t([self.later_row[i] for i in pm])  # a position-major row's row in later-frame order
        pm_row = {i: r for r, i in enumerate(pm)}
        self.pm_of_lat = t([pm_row[i] for i in self.later_list])
        self.video_of_pm = t([i // frames for i in pm])
        self.anchor_rows = t([v * frames + clips[c][0] for v in range(videos) for c in order])
        inverse = [0] * len(order)
        for r, c in enumerate(order):
            inverse[c] = r
        self.unsort = t([v * len(clips) + inverse[c] for v in range(videos) for c in range(len(clips))])


def _pair_costs(tokens: Tensor, norms: Tensor, lay: _Layout, back: int) -> Tensor:
    """1 - cos between every later frame (rows) and its reference frame (the keyframe for back=0,
    the previous frame for back=1): (V (F - C), M, M) in later-frame order, on a regular layout
    (an irregular one is read position-major by aggregate_inter). Nothing is gathered or copied:
    for back=0 one product per clip of its later frames (a view) against its keyframe, for back=1
    one product per clip position on strided views. cosine_cost's arithmetic (the Gram matrix over
    the norms' product)."""
    length, (_, m, d) = lay.lengths[0], tokens.shape
    grid, ngrid = tokens.view(-1, length, m, d), norms.view(-1, length, m)
    if back == 0:  # (V C, (L - 1) M, d) @ (V C, d, M): a view of each clip's later frames, no copy
        gram = torch.bmm(grid[:, 1:].reshape(-1, (length - 1) * m, d), grid[:, 0].transpose(1, 2))
        cost = 1.0 - gram / (ngrid[:, 1:].reshape(-1, (length - 1) * m, 1) * ngrid[:, :1])
        cost = cost.clamp(0.0, 2.0) if tracks_grad(cost) else cost.clamp_(0.0, 2.0)
        return cost.view(-1, m, m)
    costs = [cosine_cost(grid[:, p], grid[:, p - 1], ngrid[:, p], ngrid[:, p - 1]) for p in range(1, length)]
    return torch.stack(costs, 1).view(-1, m, m)


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
    videos: int = 1,
    counts: list[int] | None = None,
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

    Batch: ``videos`` videos with the same ``clips`` one after the other (F = videos * frames of
    one), n_keep per video; every step runs over the clips of all videos at once and each video's
    Sinkhorn stops as it would alone, so each video's result equals its own call. counts: anchors
    per frame (F,) as Python ints, when the caller knows them (no host read; else valid is read once).
    """
    f, m, d = tokens.shape
    dev = tokens.device
    grad = tracks_grad(tokens)
    if valid is None:
        valid = torch.ones(f, m, dtype=torch.bool, device=dev)
    lay = _Layout(clips, f // videos, videos, dev)
    q = torch.ones(f, m, dtype=torch.float32, device=dev)
    kept = torch.zeros(f, m, dtype=torch.bool, device=dev)
    start_sizes = sizes[lay.starts]
    n_steps = max(lay.lengths) if merge != "none" else 1
    if lay.n_later == 0:
        kw = dict(dtype=tokens.dtype, device=dev)
        return InterResult(tokens.index_select(0, lay.starts), start_sizes, kept,
                           torch.full((f, m), -1, dtype=torch.long, device=dev), q,
                           torch.zeros(f, m, m, **kw), torch.ones(f, m, **kw))

    # selection pass: q of every later token against its clip's keyframe anchors. Its rows are the
    # later frames in later-frame order on a regular layout (views), position-major on an irregular
    # one (lay.pm: one gather of the later frames, which the merge pass then reads by slices);
    # whatever needs later-frame order (the budget's sort, the solver's stop groups) is put back in
    # it by a small gather (to_lat).
    norms = torch.linalg.vector_norm(tokens, dim=-1)  # (F, M)
    later = lay.later
    if lay.regular:
        key_cost = _pair_costs(tokens, norms, lay, 0)  # (V (F - C), M, M) in later-frame order
        valid_s = valid_later = valid[later]

        def to_lat(t: Tensor) -> Tensor:
            return t
    else:
        t_pm, n_pm = tokens[lay.pm], norms[lay.pm]  # (V (F - C), M, d), (V (F - C), M): position-major
        key_cost = cosine_cost(t_pm, tokens[lay.pm_key], n_pm, norms[lay.pm_key])
        valid_s, valid_later = valid[lay.pm], valid[later]

        def to_lat(t: Tensor) -> Tensor:
            return t[lay.pm_of_lat]
    p = None  # row weights against the keyframe (later-frame order): the merge weights of position 1
    no_col = ~valid_s.unsqueeze(-2)  # (V (F - C), 1, M)
    kc = key_cost.detach() if grad else key_cost
    # best cosine to the keyframe: max_j (1 - c_j) = 1 - min_j c_j (the same rounding, one operator less)
    key_cos = 1.0 - kc.masked_fill(no_col, 3.0).amin(-1)  # (V (F - C), M); -2 where no column
    ref_cost = key_cost
    if keep_ref == "previous":  # each later frame against the frame before it (same clip)
        if lay.regular:
            ref_cost = _pair_costs(tokens, norms, lay, 1)
        else:
            prev = lay.pm - 1  # a later frame's predecessor: same clip
            ref_cost = cosine_cost(t_pm, tokens[prev], n_pm, norms[prev])
    uses_tau = guard and n_keep > 0  # then every merge plan is restricted and p is never used
    key_cos_lat = None
    if keep_by == "plan":
        ref_lat = to_lat(ref_cost)
        sel = _row_weights(ref_lat, valid_later, "ot", reg, n_iters, tol, videos=videos, own=ref_lat is not ref_cost)
        q_later = sel.detach().amax(-1).to(q.dtype)
        if ref_cost is key_cost:
            p = sel
    elif ref_cost is key_cost:  # "changed" as far from every keyframe anchor: q = max cosine
        key_cos_lat = to_lat(key_cos)
        q_later = key_cos_lat if key_cos_lat.dtype == q.dtype else key_cos_lat.to(q.dtype)
    else:
        rc = ref_cost.detach() if grad else ref_cost
        q_later = to_lat((1.0 - rc.masked_fill(no_col, 3.0).amin(-1)).to(q.dtype))
    q[later] = q_later
    if merge != "none" and not uses_tau and (p is None or merge != "ot"):
        key_lat = to_lat(key_cost)
        p = _row_weights(key_lat, valid_later, merge, reg, n_iters, tol, videos=videos, own=key_lat is not key_cost)
    tau = None
    if n_keep:
        if counts is None:
            counts = valid.sum(1).tolist()
        candidates = sum(counts[i] for i in lay.later_list[:lay.n_later])
        if n_keep > candidates:
            raise ValueError(f"cannot keep {n_keep} dynamic tokens from {candidates} candidates")
        flat_q = q_later.masked_fill(~valid_later, float("inf")).view(videos, -1)  # (V, (F - C) M)
        pick = torch.sort(flat_q, stable=True).indices[:, :n_keep]
        kept_later = torch.zeros_like(flat_q, dtype=torch.bool).scatter_(1, pick, True).view(-1, m)
        kept[later] = kept_later
        if guard:  # per video: the highest max-cosine-to-the-keyframe of a kept token, (V, 1, 1)
            if key_cos_lat is None:
                key_cos_lat = to_lat(key_cos)
            tau = key_cos_lat.masked_fill(~kept_later, float("-inf")).view(videos, -1).amax(1).view(videos, 1, 1)
    if n_steps == 1:  # merge="none": later tokens not kept are dropped
        kw = dict(dtype=tokens.dtype, device=dev)
        return InterResult(tokens.index_select(0, lay.starts), start_sizes, kept,
                           torch.full((f, m), -1, dtype=torch.long, device=dev), q,
                           torch.zeros(f, m, m, **kw), torch.ones(f, m, **kw))
    merged = ~kept & valid  # (F, M): later tokens not kept (first frames too: their owner stays -1)
    if lay.regular:
        return _merge_regular(tokens, norms, key_cost, p, merged, valid, tau, lay, start_sizes, sizes, kept, q,
                              reg=reg, n_iters=n_iters, tol=tol, lam=lam, merge=merge, videos=videos, grad=grad)
    return _merge_ordered(tokens, t_pm, n_pm, key_cost, p, merged, valid_s, tau, lay, start_sizes, sizes, kept, q,
                          reg=reg, n_iters=n_iters, tol=tol, lam=lam, merge=merge, videos=videos, grad=grad)


def _step_weights(s, a, cost, n_s, vf, w, mg, unm, tau, step, p1, *, reg, n_iters, tol, lam, merge, videos, grad):
    """One Eq. 16 step over A (clip, video) problems: s (A, M, d) the frames' tokens, a (A, M, d)
    their clips' current anchors, cost (A, M, M) against them when known (step 1: the keyframe
    cost), else None; n_s (A, M, 1) token norms, vf (A, 1, M) valid, w (A, 1, M) row mass, mg
    (A, M, 1) merged (tokens' dtype), unm (A, M, 1) not merged and tau (A, 1, 1) with the guard
    (else None); p1: the selection pass's weights of these frames (step 1 without the guard).
    Returns (the new anchors before the division, denom (A, M_anc, 1), wt (A, M_anc, M_tok), pa)."""
    if cost is None:  # cosine_cost's arithmetic, with the token norms already (A, M, 1)
        cost = 1.0 - (s @ a.transpose(1, 2)) / (n_s * torch.linalg.vector_norm(a, dim=-1).unsqueeze(1))
        cost = cost.clamp(0.0, 2.0) if grad else cost.clamp_(0.0, 2.0)
    cols = None
    if tau is not None:  # anchors without a counterpart among this frame's merged tokens receive nothing
        cmin = (cost.detach() if grad else cost).masked_fill(unm, 3.0).amin(1, keepdim=True)  # (A, 1, M_anc)
        cols = ((1.0 - cmin) > tau) & vf
        cols = torch.where(cols.any(-1, keepdim=True), cols, vf)
    if step == 1 and cols is None:  # anchors are still the keyframes: reuse the selection pass plans
        pa = p1()
    else:
        pa = _row_weights(cost, vf, merge, reg, n_iters, tol, cols, videos=videos, mass=w, own=True, mask_rows=False)
    wgt = (pa if pa.dtype == s.dtype else pa.to(s.dtype)) * mg  # (A, M_tok, M_anc): merged tokens only
    wt = wgt.transpose(1, 2)  # (A, M_anc, M_tok)
    recv = wt.sum(-1, keepdim=True)  # (A, M_anc, 1)
    denom = recv * lam + 1.0 if lam != 1.0 else recv + 1.0
    # Eq. 16: a <- (a + lam * ctx) / (1 + lam * recv), ctx = w^T s
    return torch.baddbmm(a, wt, s, alpha=lam), denom, wt, pa


def _step_map(denom: Tensor, wt: Tensor, lam: float, grad: bool, coef_out: Tensor | None = None,
              inv_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The step's linear map for the mix (no graph): coef = lam w^T / (1 + lam recv) (A, M_anc, M_tok)
    and the decay 1 / (1 + lam recv) (A, M_anc, 1), written into the out tensors when given."""
    with torch.no_grad():
        inv = torch.reciprocal(denom.detach() if grad else denom, out=inv_out)
        wd = wt.detach() if grad else wt
        coef = torch.mul(wd, inv * lam if lam != 1.0 else inv, out=coef_out)
    return coef, inv


def _owner(pa: Tensor, merge: str, grad: bool, out: Tensor | None = None) -> Tensor:
    """argmax_j p_ij (A, M_tok), written into out when given."""
    own_t = pa.argmax(-1) if out is None else torch.argmax(pa.detach() if grad else pa, -1, out=out)
    if merge != "ot":  # a merged token that gives no anchor any weight (cosine: it resembles none) is dropped
        own_t = own_t.masked_fill_((pa.detach() if grad else pa).amax(-1) <= 0, -1)
    return own_t


def _merge_regular(tokens, norms, key_cost, p, merged, valid, tau, lay, start_sizes, sizes, kept, q, *,
                   reg, n_iters, tol, lam, merge, videos, grad) -> InterResult:
    """The merge pass on a regular layout: every per-frame input split by position with views (the
    frames are a (V C, L) grid), every step over all clips; outputs stacked once."""
    f, m, _ = tokens.shape
    dev = tokens.device
    anchors = tokens.index_select(0, lay.starts)  # (V C, M, d), a copy
    length, n_clips = lay.lengths[0], anchors.shape[0]
    mass = _uniform(valid.unsqueeze(1), tokens.dtype)  # (F, 1, M) uniform row marginal, row-shaped for the solver

    def split(t: Tensor) -> list:
        return list(t.view(n_clips, length, *t.shape[1:]).unbind(1))
    s_at, n_at, mg_at, v_at, w_at = (split(t) for t in (tokens, norms.unsqueeze(-1), merged.to(tokens.dtype).unsqueeze(-1),
                                                       valid.unsqueeze(1), mass))
    tau_at = unm_at = [None] * length
    if tau is not None:  # per frame, tokens' dtype
        tau = tau.expand(videos, f // videos, 1).reshape(f, 1, 1)
        tau_at, unm_at = split(tau), split((~merged).unsqueeze(-1))
    first = key_cost.view(-1, length - 1, m, m)[:, 0]
    coefs, decays, owns = [], [], []
    for step in range(1, length):
        new, denom, wt, pa = _step_weights(
            s_at[step], anchors, first if step == 1 else None, n_at[step], v_at[step], w_at[step], mg_at[step],
            unm_at[step], tau_at[step], step, lambda: p.view(-1, length - 1, m, m)[:, 0],
            reg=reg, n_iters=n_iters, tol=tol, lam=lam, merge=merge, videos=videos, grad=grad)
        anchors = new / denom if grad else new.div_(denom)
        coef, inv = _step_map(denom, wt, lam, grad)
        coefs.append(coef)
        decays.append(inv)
        owns.append(_owner(pa, merge, grad))
    kw = dict(dtype=tokens.dtype, device=dev)
    # position 0 (the keyframes): no step
    coef = torch.stack([torch.zeros(n_clips, m, m, **kw)] + coefs, 1).view(f, m, m)
    decay = torch.stack([torch.ones(n_clips, m, 1, **kw)] + decays, 1).view(f, m)
    owner = torch.stack([owns[0].new_full((n_clips, m), -1)] + owns, 1).view(f, m)
    return _finish(anchors, owner, merged, lay, start_sizes, sizes, kept, q, coef, decay)


def _merge_ordered(tokens, t_pm, n_pm, key_cost, p, merged, valid_pm, tau, lay, start_sizes, sizes, kept, q, *,
                   reg, n_iters, tol, lam, merge, videos, grad) -> InterResult:
    """The merge pass on an irregular layout, in lay's order: t_pm (P, M, d), n_pm (P, M) and
    key_cost (P, M, M) are the later frames position-major (P = V (F - C)); valid_pm (P, M).
    The clips that have position k are a prefix of every video's anchors (longest first) and the
    frames of step k one contiguous run of the position-major rows, so every per-frame input is
    gathered once for the whole pass (or not at all) and split into views, the active anchors are
    read and written as slices (one video: views; several: the prefix of each video is copied out,
    as a strided slice cannot be one batch), and coef, decay, owner are written position-major and
    put back in frame order by one scatter each."""
    f, m = merged.shape
    d, dev, dtype = t_pm.shape[-1], t_pm.device, t_pm.dtype
    n_clips = len(lay.lengths)  # per video
    anchors = tokens.index_select(0, lay.anchor_rows)  # (V C, M, d), a copy, longest clip first
    sizes_pm = lay.pm_sizes

    def split(t: Tensor) -> list:
        return [None] + list(t.split(sizes_pm))  # one operator, views
    merged_pm = merged[lay.pm]
    vf_pm = valid_pm.unsqueeze(1)
    s_at, n_at, mg_at, v_at, w_at = (split(t) for t in (t_pm, n_pm.unsqueeze(-1), merged_pm.to(dtype).unsqueeze(-1),
                                                       vf_pm, _uniform(vf_pm, dtype)))
    tau_at = unm_at = [None] * len(s_at)
    if tau is not None:
        tau_at, unm_at = split(tau[lay.video_of_pm]), split((~merged_pm).unsqueeze(-1))
    p_total = sum(sizes_pm)
    coef_pm = torch.empty(p_total, m, m, dtype=dtype, device=dev)
    decay_pm = torch.empty(p_total, m, 1, dtype=dtype, device=dev)
    owner_pm = torch.empty(p_total, m, dtype=torch.long, device=dev)
    c_at, d_at, o_at = (split(t) for t in (coef_pm, decay_pm, owner_pm))
    n1 = sizes_pm[0]
    for step in range(1, len(s_at)):
        n = lay.active[step]  # clips per video that have this position
        if n == n_clips:
            a = anchors
        elif videos == 1:
            a = anchors[:n]  # a view
        else:  # the first n clips of every video: a strided view, copied to one batch
            a4 = anchors.view(videos, n_clips, m, d)[:, :n]
            a = a4.reshape(-1, m, d)
        new, denom, wt, pa = _step_weights(
            s_at[step], a, key_cost[:n1] if step == 1 else None, n_at[step], v_at[step], w_at[step], mg_at[step],
            unm_at[step], tau_at[step], step, lambda: p[lay.lat_of_pm[:n1]],
            reg=reg, n_iters=n_iters, tol=tol, lam=lam, merge=merge, videos=videos, grad=grad)
        if grad:  # a is saved by the cost's product: build a new tensor
            new = new / denom
            if n == n_clips:
                anchors = new
            else:
                rest = anchors.view(videos, n_clips, m, d)[:, n:]
                anchors = torch.cat([new.view(videos, n, m, d), rest], 1).view(-1, m, d)
        elif n == n_clips:
            anchors = new.div_(denom)
        elif videos == 1:
            torch.div(new, denom, out=a)
        else:  # (copy_, not div's out=: dynamo refuses a non-contiguous out= tensor)
            a4.copy_(new.div_(denom).view(videos, n, m, d))
        _step_map(denom, wt, lam, grad, coef_out=c_at[step], inv_out=d_at[step])
        _owner(pa, merge, grad, out=o_at[step])
    if not lay.sorted:
        anchors = anchors.index_select(0, lay.unsort)
    kw = dict(dtype=dtype, device=dev)
    coef = torch.zeros(f, m, m, **kw).index_put_((lay.pm,), coef_pm)
    decay = torch.ones(f, m, **kw).index_put_((lay.pm,), decay_pm.squeeze(-1))
    owner = torch.full((f, m), -1, dtype=torch.long, device=dev).index_put_((lay.pm,), owner_pm)
    return _finish(anchors, owner, merged, lay, start_sizes, sizes, kept, q, coef, decay)


def _finish(anchors, owner, merged, lay, start_sizes, sizes, kept, q, coef, decay) -> InterResult:
    """Owners of merged tokens only; sizes: every merged token's size to its owner, all steps at once
    (integers: any order is exact)."""
    m, dev = owner.shape[1], owner.device
    owner = owner.masked_fill_(~merged, -1)
    base = const([[c * (m + 1)] for c in lay.clip_of], dev)  # (F, 1) first slot of its clip
    slot = (owner.remainder(m + 1) + base).view(-1)  # owner -1 goes to the clip's extra slot m
    acc = torch.zeros(anchors.shape[0] * (m + 1), dtype=sizes.dtype, device=dev).scatter_add_(0, slot, sizes.view(-1))
    anchor_sizes = start_sizes + acc.view(-1, m + 1)[:, :m]
    return InterResult(anchors, anchor_sizes, kept, owner, q, coef, decay)
