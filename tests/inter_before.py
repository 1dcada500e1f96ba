"""aggregate_inter as it was at commit d8ff83d (before the merge pass read its inputs in one
position-major gather): a frozen copy, the oracle of tests/test_inter_order.py. Do not edit."""

from __future__ import annotations

import torch
from torch import Tensor

from aot.indices import const
from aot.intra import cosine_cost, tracks_grad
from aot.temporal import InterResult, _row_weights, _uniform

Clip = tuple[int, int]


class _LayoutBefore:
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

    def step(self, step: int):
        """Clips (all videos) that have position ``step``, their frames and rows among later frames."""
        active = [v * self.n_clips + i for v in range(self.videos) for i, n in enumerate(self.lengths) if n > step]
        frames = [self.starts_list[a] + step for a in active]
        t = lambda idx: const(idx, self.device)  # noqa: E731
        return len(active), t(active), t(frames), t([self.later_row[f] for f in frames])


def _pair_costs_before(tokens: Tensor, norms: Tensor, lay: _LayoutBefore, back: int) -> Tensor:
    """1 - cos between every later frame (rows) and its reference frame (the keyframe for back=0,
    the previous frame for back=1): (V (F - C), M, M) in later-frame order. On a regular layout
    nothing is gathered or copied: for back=0 one product per clip of its later frames (a view)
    against its keyframe, for back=1 one product per clip position on strided views; otherwise one
    product on gathered copies. cosine_cost's arithmetic (the Gram matrix over the norms' product)."""
    if not lay.regular:
        t = lambda idx: const(idx, tokens.device)  # noqa: E731
        cols = t(lay.key_of_list) if back == 0 else lay.later - 1  # a later frame's predecessor: same clip
        return cosine_cost(tokens[lay.later], tokens[cols], norms[lay.later], norms[cols])
    length, (_, m, d) = lay.lengths[0], tokens.shape
    grid, ngrid = tokens.view(-1, length, m, d), norms.view(-1, length, m)
    if back == 0:  # (V C, (L - 1) M, d) @ (V C, d, M): a view of each clip's later frames, no copy
        gram = torch.bmm(grid[:, 1:].reshape(-1, (length - 1) * m, d), grid[:, 0].transpose(1, 2))
        cost = 1.0 - gram / (ngrid[:, 1:].reshape(-1, (length - 1) * m, 1) * ngrid[:, :1])
        cost = cost.clamp(0.0, 2.0) if tracks_grad(cost) else cost.clamp_(0.0, 2.0)
        return cost.view(-1, m, m)
    costs = [cosine_cost(grid[:, p], grid[:, p - 1], ngrid[:, p], ngrid[:, p - 1]) for p in range(1, length)]
    return torch.stack(costs, 1).view(-1, m, m)



def aggregate_inter_before(
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
    """Today's aggregate_inter before the merge-order change (commit d8ff83d), frozen."""
    f, m, d = tokens.shape
    dev = tokens.device
    grad = tracks_grad(tokens)
    if valid is None:
        valid = torch.ones(f, m, dtype=torch.bool, device=dev)
    lay = _LayoutBefore(clips, f // videos, videos, dev)
    q = torch.ones(f, m, dtype=torch.float32, device=dev)
    kept = torch.zeros(f, m, dtype=torch.bool, device=dev)
    anchors = tokens.index_select(0, lay.starts)  # (V C, M, d), a copy
    start_sizes = sizes[lay.starts]
    n_steps = max(lay.lengths) if merge != "none" else 1
    if lay.n_later == 0:
        kw = dict(dtype=tokens.dtype, device=dev)
        return InterResult(anchors, start_sizes, kept, torch.full((f, m), -1, dtype=torch.long, device=dev), q,
                           torch.zeros(f, m, m, **kw), torch.ones(f, m, **kw))

    # selection pass: q of every later token against its clip's keyframe anchors
    norms = torch.linalg.vector_norm(tokens, dim=-1)  # (F, M)
    later = lay.later
    key_cost = _pair_costs_before(tokens, norms, lay, 0)  # (V (F - C), M, M) in later-frame order
    p = None  # row weights against the keyframe: the merge weights of position 1 of every clip
    valid_later = valid[later]
    no_col = ~valid_later.unsqueeze(-2)  # (V (F - C), 1, M)
    kc = key_cost.detach() if grad else key_cost
    # best cosine to the keyframe: max_j (1 - c_j) = 1 - min_j c_j (the same rounding, one operator less)
    key_cos = 1.0 - kc.masked_fill(no_col, 3.0).amin(-1)  # (V (F - C), M); -2 where no column
    ref_cost = key_cost
    if keep_ref == "previous":  # each later frame against the frame before it (same clip)
        ref_cost = _pair_costs_before(tokens, norms, lay, 1)
    uses_tau = guard and n_keep > 0  # then every merge plan is restricted and p is never used
    if keep_by == "plan":
        sel = _row_weights(ref_cost, valid_later, "ot", reg, n_iters, tol, videos=videos)
        q_later = sel.detach().amax(-1).to(q.dtype)
        if ref_cost is key_cost:
            p = sel
    elif ref_cost is key_cost:  # "changed" as far from every keyframe anchor: q = max cosine
        q_later = key_cos if key_cos.dtype == q.dtype else key_cos.to(q.dtype)
    else:
        rc = ref_cost.detach() if grad else ref_cost
        q_later = (1.0 - rc.masked_fill(no_col, 3.0).amin(-1)).to(q.dtype)
    q[later] = q_later
    if merge != "none" and not uses_tau and (p is None or merge != "ot"):
        p = _row_weights(key_cost, valid_later, merge, reg, n_iters, tol, videos=videos)
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
            tau = key_cos.masked_fill(~kept_later, float("-inf")).view(videos, -1).amax(1)
            tau = tau.view(videos, 1, 1).expand(videos, f // videos, 1).reshape(f, 1, 1)  # per frame, tokens' dtype
    if n_steps == 1:  # merge="none": later tokens not kept are dropped
        kw = dict(dtype=tokens.dtype, device=dev)
        return InterResult(anchors, start_sizes, kept, torch.full((f, m), -1, dtype=torch.long, device=dev), q,
                           torch.zeros(f, m, m, **kw), torch.ones(f, m, **kw))

    # merge pass: sequential over positions within the clips, batched over clips and videos. Every
    # per-frame input of a step is split by position once (a view per position on a regular layout,
    # one gather per position otherwise); the outputs are stacked once after the loop.
    merged = ~kept & valid  # (F, M): later tokens not kept (first frames too: their owner stays -1)
    mass = _uniform(valid.unsqueeze(1), tokens.dtype)  # (F, 1, M) uniform row marginal, row-shaped for the solver
    if lay.regular:
        length, n_clips = lay.lengths[0], anchors.shape[0]

        def split(t: Tensor) -> list:
            return list(t.view(n_clips, length, *t.shape[1:]).unbind(1))
        steps = [(n_clips, None, None) for _ in range(length)]
    else:
        steps = [None] + [lay.step(k) for k in range(1, n_steps)]

        def split(t: Tensor) -> list:
            return [None] + [t[st[2]] for st in steps[1:]]
    s_at, n_at, mg_at, v_at, w_at = (split(t) for t in (tokens, norms.unsqueeze(-1), merged.to(tokens.dtype).unsqueeze(-1),
                                                           valid.unsqueeze(1), mass))
    if tau is not None:
        tau_at, unm_at = split(tau), split((~merged).unsqueeze(-1))
    first = key_cost.view(-1, length - 1, m, m)[:, 0] if lay.regular else key_cost[steps[1][3]]
    coefs, decays, owns = [], [], []
    for step in range(1, n_steps):
        n_act, act_t, frames_t = steps[step][:3]
        s, vf = s_at[step], v_at[step]  # (A, M, d), (A, 1, M)
        a = anchors if n_act == anchors.shape[0] else anchors[act_t]
        if step == 1:  # the anchors are still the keyframes; key_cost is not needed after this
            cost = first
        else:  # cosine_cost's arithmetic, with the token norms already (A, M, 1)
            cost = 1.0 - (s @ a.transpose(1, 2)) / (n_at[step] * torch.linalg.vector_norm(a, dim=-1).unsqueeze(1))
            cost = cost.clamp(0.0, 2.0) if grad else cost.clamp_(0.0, 2.0)
        cols = None
        if tau is not None:  # anchors without a counterpart among this frame's merged tokens receive nothing
            cmin = (cost.detach() if grad else cost).masked_fill(unm_at[step], 3.0).amin(1, keepdim=True)  # (A, 1, M_anc)
            cols = ((1.0 - cmin) > tau_at[step]) & vf
            cols = torch.where(cols.any(-1, keepdim=True), cols, vf)
        if step == 1 and cols is None:  # anchors are still the keyframes: reuse the selection pass plans
            pa = p.view(-1, length - 1, m, m)[:, 0] if lay.regular else p[steps[1][3]]
        else:
            pa = _row_weights(cost, vf, merge, reg, n_iters, tol, cols, videos=videos, mass=w_at[step], own=True,
                              mask_rows=False)
        w = (pa if pa.dtype == s.dtype else pa.to(s.dtype)) * mg_at[step]  # (A, M_tok, M_anc): merged tokens only
        wt = w.transpose(1, 2)  # (A, M_anc, M_tok)
        recv = wt.sum(-1, keepdim=True)  # (A, M_anc, 1)
        denom = recv * lam + 1.0 if lam != 1.0 else recv + 1.0
        # Eq. 16: a <- (a + lam * ctx) / (1 + lam * recv), ctx = w^T s
        new = torch.baddbmm(a, wt, s, alpha=lam)
        new = new / denom if grad else new.div_(denom)
        with torch.no_grad():
            inv = (denom.detach() if grad else denom).reciprocal()  # (A, M_anc, 1)
            wd = wt.detach() if grad else wt
            coefs.append(wd * (inv * lam) if lam != 1.0 else wd * inv)
            decays.append(inv)
        if a is anchors:
            anchors = new
        elif grad:  # a (rows of anchors) is saved by the cost's product: write a new tensor
            anchors = anchors.index_put((act_t,), new)
        else:
            anchors[act_t] = new
        own_t = pa.argmax(-1)
        if merge != "ot":  # a merged token that gives no anchor any weight (cosine: it resembles none) is dropped
            own_t = own_t.masked_fill((pa.detach() if grad else pa).amax(-1) <= 0, -1)
        owns.append(own_t)
    kw = dict(dtype=tokens.dtype, device=dev)
    if lay.regular:  # position 0 (the keyframes): no step
        coef = torch.stack([torch.zeros(n_clips, m, m, **kw)] + coefs, 1).view(f, m, m)
        decay = torch.stack([torch.ones(n_clips, m, 1, **kw)] + decays, 1).view(f, m)
        owner = torch.stack([owns[0].new_full((n_clips, m), -1)] + owns, 1).view(f, m)
    else:
        rows = torch.cat([st[2] for st in steps[1:]])
        coef = torch.zeros(f, m, m, **kw).index_put_((rows,), torch.cat(coefs))
        decay = torch.ones(f, m, **kw).index_put_((rows,), torch.cat(decays).squeeze(-1))
        owner = torch.full((f, m), -1, dtype=torch.long, device=dev).index_put_((rows,), torch.cat(owns))
    owner = owner.masked_fill_(~merged, -1)
    # sizes: every merged token's size to its owner, all steps at once (integers: any order is exact)
    base = const([[c * (m + 1)] for c in lay.clip_of], dev)  # (F, 1) first slot of its clip
    slot = (owner.remainder(m + 1) + base).view(-1)  # owner -1 goes to the clip's extra slot m
    acc = torch.zeros(anchors.shape[0] * (m + 1), dtype=sizes.dtype, device=dev).scatter_add_(0, slot, sizes.view(-1))
    anchor_sizes = start_sizes + acc.view(-1, m + 1)[:, :m]
    return InterResult(anchors, anchor_sizes, kept, owner, q, coef, decay)
