"""The AOT pipeline with an exact token budget: ``aot.compress`` (DESIGN 2, 2.5, 2.6)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .anchors import select_anchors_varied
from .config import AOTConfig, budget
from .indices import const
from . import stops
from .intra import aggregate_intra, tracks_grad
from .temporal import aggregate_inter, clip_length_of, dynamic_clips, uniform_clips

__all__ = ["Compressed", "Mix", "apply_mix", "compress", "plan_budget", "make_clips", "stack"]


class Mix(NamedTuple):
    """The linear map a compression applied: ``out[rows[e]] += weights[e] * y[cols[e]]`` for every e.

    One video: each field (E,); a batch: (B, E), padded with weight-0 entries (rows = cols = 0)
    where videos have fewer entries. Applied to the input tokens it gives the output tokens
    (``Compressed.reduce``); applied to a companion tensor aligned with the input (e.g. Qwen3-VL's
    DeepStack levels) it reduces that tensor with exactly the same selection and merge weights.
    """

    rows: Tensor  # (E,) int64: output row 0..R-1
    cols: Tensor  # (E,) int64: flat input index f * N + n
    weights: Tensor  # (E,) float32 (float64 for float64 inputs): weight of that input in that row


class Compressed(NamedTuple):
    """Output of a compression of one video; a batch stacks every field along a leading B."""

    tokens: Tensor  # (R, d) in the input dtype, ordered by (frame, position)
    sizes: Tensor  # (R,) int64: input tokens each output token stands for; sums to F * N (less if an ablation drops tokens)
    frames: Tensor  # (R,) int64: frame each token sits at (a clip anchor: its clip's first frame)
    positions: Tensor  # (R,) int64: flat index f * N + n of the grid cell it sits at
    assignment: Tensor  # (F * N,) int64: output row that absorbed each input token, -1 if dropped
    dynamic: Tensor  # (R,) bool: kept as a temporal-dynamics token (not a clip anchor)
    mix: Mix | None = None  # the linear map from inputs to rows (see Mix); None only for legacy callers

    def reduce(self, y: Tensor) -> Tensor:
        """Apply this compression's selection and merge weights to a companion tensor.

        y: (F, N, c) or (F * N, c) for one video, (B, F, N, c) or (B, F * N, c) for a batch,
        aligned token for token with the compressed input. Returns (R, c) or (B, R, c) in y's
        dtype (accumulated in float32, float64 for float64). ``reduce(x)`` of the input x
        itself gives ``tokens`` (see each method's docstring for exact vs rounding-level).
        """
        if self.mix is None:
            raise ValueError("this Compressed carries no mix (built without one), so it cannot reduce companions")
        return apply_mix(self.mix, y, self.tokens.shape[-2])


def apply_mix(mix: Mix, y: Tensor, rows: int) -> Tensor:
    """out (.., rows, c) = the Mix applied to y (.., F*N, c) or (.., F, N, c); see Mix."""
    batched = mix.rows.dim() == 2
    lead = 1 if batched else 0
    if y.dim() == lead + 3:
        y = y.flatten(lead, lead + 1)
    if y.dim() != lead + 2:
        raise ValueError(f"y must have shape {'(B, F, N, c)' if batched else '(F, N, c)'} or the flat form, "
                         f"got {tuple(y.shape)}")
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    if not batched:
        out = y.new_zeros((rows, y.shape[-1]), dtype=acc)
        out.index_add_(0, mix.rows, y[mix.cols].to(acc) * mix.weights.to(acc).unsqueeze(-1))
        return out.to(y.dtype)
    b = mix.rows.shape[0]
    out = y.new_zeros((b * rows, y.shape[-1]), dtype=acc)
    offs = torch.arange(b, device=y.device).unsqueeze(1)
    src = y.flatten(0, 1)[(mix.cols + offs * y.shape[1]).flatten()].to(acc)
    out.index_add_(0, (mix.rows + offs * rows).flatten(), src * mix.weights.to(acc).flatten().unsqueeze(-1))
    return out.view(b, rows, -1).to(y.dtype)


def stack(parts: list[Compressed]) -> Compressed:
    """One batched Compressed from per-video results of equal R; mixes padded to the longest E."""
    fields = [torch.stack(f) for f in zip(*(p[:6] for p in parts))]
    mixes = [p.mix for p in parts]
    if any(m is None for m in mixes):
        return Compressed(*fields)
    e = max(m.rows.numel() for m in mixes)

    def pad(t: Tensor) -> Tensor:
        return torch.cat([t, t.new_zeros(e - t.numel())])
    mix = Mix(*(torch.stack([pad(getattr(m, k)) for m in mixes]) for k in Mix._fields))
    return Compressed(*fields, mix=mix)


def plan_budget(total: int, frames: int, tokens: int, n_clips: int, anchor_share: float) -> tuple[list[int], int]:
    """Split the exact budget ``total`` into anchors per frame, clip by clip, and K dynamic tokens.

    Output = n_clips * M clip anchors + K dynamic tokens = total, with 0 <= K <= (F - n_clips) * M
    (only later frames supply dynamic tokens) and 1 <= M <= N. M is anchor_share * total / n_clips
    rounded half up, then moved into that feasible range. When no integer M fits (e.g. every
    clip is a single frame and n_clips does not divide total), M = total // n_clips, K = 0 and the
    remaining r < n_clips anchors go one each to r clips spread evenly over the video.
    Returns (anchors per frame of each clip, K).
    """
    if total < n_clips:
        raise ValueError(
            f"budget of {total} tokens is below one token per clip ({n_clips} clips); "
            f"raise retention to at least {n_clips / (frames * tokens):.4g} or use longer clips"
        )
    lo = max(1, -(-total // frames))  # K <= (F - C) M  <=>  total <= F M
    hi = min(tokens, total // n_clips)  # K >= 0
    if lo > hi:  # here hi = total // n_clips < N, so one more anchor per clip always fits
        r = total - n_clips * hi
        return [hi + (i + 1) * r // n_clips - i * r // n_clips for i in range(n_clips)], 0
    m = min(max(int(anchor_share * total / n_clips + 0.5), lo), hi)
    return [m] * n_clips, total - n_clips * m


def make_clips(x: Tensor, config: AOTConfig) -> list[tuple[int, int]]:
    """(first frame, length) of every clip of x (F, N, d) under config's clip rule."""
    f = x.shape[0]
    length = clip_length_of(config, f)
    if config.clips == "uniform":
        return uniform_clips(f, length)
    return dynamic_clips(x.mean(dim=1), length, config.tau_seg)  # mean token per frame


def compress(
    x: Tensor,
    scores: Tensor,
    *,
    local_scores: Tensor | None = None,
    grid: tuple[int, int] | None = None,
    config: AOTConfig = AOTConfig(),
    validate: bool = True,
    with_mix: bool = True,
) -> Compressed:
    """Compress one video x (F, N, d), or a batch (B, F, N, d), to exactly round_half_up(rho F N) tokens.

    scores: (F, N) or (B, F, N) global importance (deep-layer attention received) on the grid;
    local_scores: same shape, shallow-layer importance for the local anchors (default: scores);
    grid: (h, w) with h * w = N (default: square). Every clip's budget goes to anchors folded
    from their frame by OT (Eq. 9-12), merged across the clip (Eq. 13-16), plus the tokens that
    changed most. retention 1.0 returns the input unchanged.

    The videos of a batch and the clips of a video run together (one set of operators whatever F
    or B; the Eq. 16 steps run once per position inside a clip), and every video's result equals
    its own call. ``mix`` is the exact linear map of the result: ``reduce(x)`` gives ``tokens`` to
    rounding (float32 sums in another order; within 1e-5 of float32 tokens), not bit for bit.
    Host reads (docs/gpu-core.md): one for all input checks; one per Sinkhorn early-stop check
    (every 10 iterations, all videos at once), or, inside ``aot.stops.deferred(True)``, one for all
    stops of the call (same outputs bit for bit; more launches: see aot.stops); with
    clips="dynamic" one per video for the clip layout (it decides shapes). With tol=None and uniform
    clips there are none after the input check.
    validate=False skips that one read (finite scores, finite nonzero tokens; shapes, dtypes and
    the budget are still checked, they cost no read): for torch.compile(fullgraph=True) or CUDA graph
    capture, when the caller has checked its tokens. Bad values then give undefined output.
    with_mix=False returns mix=None: the mix has F M N entries for the clip anchors (every token of
    a clip in every anchor row), so building it is a visible share of the time at large N (24% of
    the CPU time at 32 x 729 x 1152, 10%); callers that never reduce a companion can skip it.
    """
    _check_config(config)
    x, scores, local_scores, grid = _check_inputs(x, scores, local_scores, grid, finite=False)
    single = x.dim() == 3
    if single:
        same = local_scores is scores  # the default: one tensor, checked and viewed once
        x, scores = x.unsqueeze(0), scores.unsqueeze(0)
        local_scores = scores if same else local_scores.unsqueeze(0)
    b, f, n, _ = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    norms = torch.linalg.vector_norm(work, dim=-1)  # (B, F, N); also our cheap NaN/Inf/zero detector
    if validate:
        _check_values(work, norms, scores, local_scores)
    total = budget(config.retention, f, n)
    if total == 0:
        raise ValueError(f"retention={config.retention} keeps 0 of {f * n} tokens (F={f}, N={n}); "
                         f"use retention >= {1 / (f * n):.4g}")
    if total == f * n:
        out = stack([_identity(x[i]) for i in range(b)])
    else:
        layouts = [tuple(make_clips(work[i], config)) for i in range(b)] if config.clips == "dynamic" else \
            [tuple(uniform_clips(f, clip_length_of(config, f)))] * b
        groups: dict[tuple, list[int]] = {}
        for i, lay in enumerate(layouts):
            groups.setdefault(lay, []).append(i)
        if len(groups) == 1:
            out = _core(work, norms, scores, local_scores, grid, config, list(layouts[0]), x.dtype, with_mix, single)
            if single:
                return out
        else:  # dynamic clips that differ between videos: one batched run per distinct layout
            parts: list = [None] * b
            for lay, idx in groups.items():
                sel = torch.tensor(idx, device=x.device)
                res = _core(work[sel], norms[sel], scores[sel], local_scores[sel], grid, config, list(lay), x.dtype,
                            with_mix)
                for k, i in enumerate(idx):
                    parts[i] = _unbatch(res, k)
            out = stack(parts)
    return _unbatch(out, 0) if single else out


def _unbatch(out: Compressed, i: int) -> Compressed:
    mix = None if out.mix is None else Mix(*(t[i] for t in out.mix))
    return Compressed(*(t[i] for t in out[:6]), mix=mix)


def prepare(x: Tensor, retention: float) -> tuple[Tensor, Tensor, int]:
    """The preamble every method shares, for one video x (F, N, d).

    Returns (work: x in float32, or float64 if it is float64, without a copy for float32;
    norms (F, N), checked finite and nonzero; total: the exact budget, >= 1).
    """
    f, n, _ = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    norms = torch.linalg.vector_norm(work, dim=-1)  # (F, N); also our cheap NaN/Inf/zero detector
    _check_norms(work, norms)
    total = budget(retention, f, n)
    if total == 0:
        raise ValueError(f"retention={retention} keeps 0 of {f * n} tokens (F={f}, N={n}); "
                         f"use retention >= {1 / (f * n):.4g}")
    return work, norms, total


def _core(work: Tensor, norms: Tensor, scores: Tensor, local_scores: Tensor, grid, config: AOTConfig,
          clips: list[tuple[int, int]], out_dtype, with_mix: bool = True, single: bool = False) -> Compressed:
    """_core_once with its Sinkhorn stop checks deferred to one host read (aot.stops): the same
    outputs bit for bit; a call whose learned caps were short is computed again with a read per check."""
    key = (tuple(work.shape), work.dtype, str(work.device), config, tuple(clips), grid)
    return stops.run(lambda: _core_once(work, norms, scores, local_scores, grid, config, clips, out_dtype, with_mix,
                                        single),
                     key, eligible=config.tol is not None and not tracks_grad(work))


def _core_once(work: Tensor, norms: Tensor, scores: Tensor, local_scores: Tensor, grid, config: AOTConfig,
               clips: list[tuple[int, int]], out_dtype, with_mix: bool = True, single: bool = False) -> Compressed:
    """V videos (V, F, N, d) with the same clips, all at once; fields with a leading V (single: V = 1
    and the fields without it).

    Every index here comes from Python ints (the clips and the budget), so nothing is read back
    from the device except by the Sinkhorn early stop (one read per check for all videos).
    """
    v, f, n, d = work.shape
    lead = () if single else (v,)
    dev = work.device
    total = budget(config.retention, f, n)
    per_clip, n_keep = plan_budget(total, f, n, len(clips), config.anchor_share)
    counts = [per_clip[c] for c, (_, length) in enumerate(clips) for _ in range(length)] * v  # (V F,) Python
    if config.anchor_select == "random":  # ablation: uniformly random anchors, reproducible by seed, same per video
        gen = torch.Generator().manual_seed(config.seed)
        scores = local_scores = torch.rand(f, n, generator=gen).to(dev).expand(v, f, n)
    f32 = lambda t: t.reshape(v * f, n) if t.dtype == torch.float32 else t.reshape(v * f, n).float()  # noqa: E731
    flat_scores = f32(scores)
    anchors, valid = select_anchors_varied(flat_scores, flat_scores if local_scores is scores else f32(local_scores),
                                           grid, counts,
                                           global_share=1.0 if config.anchor_select == "random" else config.global_share,
                                           windows=config.windows)
    m = anchors.shape[1]  # (V F, M) padded where a frame has fewer anchors
    intra = aggregate_intra(work.reshape(v * f, n, d), norms.reshape(v * f, n), anchors, valid, reg=config.reg,
                            n_iters=config.n_iters, tol=config.tol, lam=config.lam_intra, mass=config.mass,
                            merge=config.intra_merge, videos=v, counts=counts)
    inter = aggregate_inter(intra.tokens, intra.sizes, clips, n_keep, valid, reg=config.reg,
                            n_iters=config.n_iters, tol=config.tol, lam=config.lam_inter, merge=config.inter_merge,
                            keep_by=config.keep_by, keep_ref=config.keep_ref,
                            guard=config.unmatched_anchors == "skip", videos=v, counts=counts)

    # every (frame, anchor slot) either is an output row (clip first frames, kept tokens) or is
    # merged into its clip's anchor; rows in row-major order are sorted by (frame, position)
    starts = [s for s, _ in clips]
    starts_all = const([i * f + s for i in range(v) for s in starts], dev)
    clip_start = const([i * f + s for i in range(v) for s, c in clips for _ in range(c)], dev)  # (V F,)
    first = const([[t in starts] for _ in range(v) for t in range(f)], dev, torch.bool)  # (V F, 1)
    is_row = (first | inter.kept) & valid  # (V F, M)
    row_of = (torch.cumsum(is_row.view(v, f * m), 1) - 1).view(v * f, m)  # row within its video where is_row
    key_row = row_of[clip_start]  # (V F, M): the row of each clip-anchor slot of frame f's clip
    merged_row = key_row.gather(1, inter.owner.clamp(min=0))
    if config.inter_merge != "ot":  # -1: dropped (merge "none"; "cosine": a token that resembles no anchor)
        merged_row = torch.where(inter.owner >= 0, merged_row, -1)
    # (OT: every merged slot has an owner; the other slots are rows, or padding no token points at)
    slot_row = torch.where(is_row, row_of, merged_row)  # (V F, M)
    mix = None
    with torch.no_grad():
        if with_mix:
            mix = clip_mix(intra.weights, anchors, valid, inter.coef, inter.decay, clips, row_of, inter.kept,
                           n, v, n_keep, config.inter_merge != "none", counts[:f], key_row)
    tokens = intra.tokens
    if tracks_grad(tokens):  # intra.tokens is saved by the inter pass's products: keep it intact
        tokens = tokens.index_put((starts_all,), inter.anchors)
    else:
        tokens[starts_all] = inter.anchors  # intra.tokens is ours: overwrite the keyframes in place
    sizes = intra.sizes
    sizes[starts_all] = inter.anchor_sizes
    local = const([[t] for _ in range(v) for t in range(f)], dev)  # (V F, 1) frame within its video
    pos = anchors + local * n  # (V F, M) flat positions within the video
    if config.intra_merge == "ot":  # every token has an owner
        assignment = slot_row.gather(1, intra.owner).view(*lead, f * n)  # (V F, N)
    else:
        assignment = slot_row.gather(1, intra.owner.clamp(min=0))  # (V F, N)
        assignment = torch.where(intra.owner >= 0, assignment, -1).view(*lead, f * n)
    # the R rows of each video in ascending (frame, slot) order: a stable sort, no count read back
    sel = torch.argsort((~is_row).view(v, f * m).to(torch.uint8), dim=1, stable=True)[:, :total]  # (V, R)

    flat_sel = sel.view(-1) if v == 1 else (sel + const([[i * f * m] for i in range(v)], dev)).flatten()

    def rows(t: Tensor) -> Tensor:
        return t.reshape(-1).gather(0, flat_sel) if single else t.reshape(v, f * m).gather(1, sel)

    if single and mix is not None:
        mix = Mix(*(t[0] for t in mix))
    return Compressed(
        tokens=_cast(tokens.reshape(v * f * m, d).index_select(0, flat_sel).view(*lead, total, d), out_dtype),
        sizes=rows(sizes),
        frames=rows(local.expand(v * f, m)),
        positions=rows(pos),
        assignment=assignment,
        dynamic=rows(inter.kept),
        mix=mix,
    )


def clip_mix(intra_w: Tensor | None, anchors: Tensor, valid: Tensor, coef: Tensor, decay: Tensor,
             clips: list[tuple[int, int]], row_of: Tensor, kept: Tensor, n: int, videos: int, n_keep: int,
             merged: bool, counts: list[int], key_row: Tensor | None = None) -> Mix:
    """The Mix of V videos with the same clips, (V, E) fields, from the two stages' linear maps (no graph).

    intra_w: (V F, M, N) tokens[f] = intra_w[f] @ x[f] (None: tokens[f, j] = x[f, anchors[f, j]]);
    coef (V F, M, M), decay (V F, M): the Eq. 16 step of each later frame, A <- decay A + coef tokens[t].
    Unrolled over a clip, its anchors are A = sum_f G_f tokens[f] with G_f = S_f coef_f for later
    frames and G_s = diag(S_s) for the keyframe, S_f the product of the decays of the clip's frames
    after f. Rows: clip anchors (row_of at the keyframe) take every frame of their clip through G_f;
    kept tokens their own intra map; merged tokens no row; dropped tokens (merge "none") no entry.
    counts: anchors per frame of one video (Python ints). Every video has the same number of entries
    (the same layout and n_keep), so nothing is padded.
    """
    vf, m = anchors.shape
    f = vf // videos
    dev = anchors.device
    width = max(c for _, c in clips)
    if all(c == width for _, c in clips):  # every clip the same length: the frames are a (V C, L) grid
        incl = decay.view(-1, width, m).flip(1).cumprod(1).flip(1)  # product over the clip's frames from p on
        suffix = torch.cat([incl[:, 1:], incl.new_ones(incl.shape[0], 1, m)], 1).view(vf, m)  # ... after p
    else:
        tab = const([[i * f + s + p if p < c else vf for p in range(width)] for i in range(videos) for s, c in clips],
                    dev)  # (V C, L) frames of each clip, padded with a dummy frame
        dec = torch.cat([decay, decay.new_ones(1, m)])[tab]  # (V C, L, M)
        incl = dec.flip(1).cumprod(1).flip(1)  # product over the clip's frames from position p on
        after = torch.cat([incl[:, 1:], incl.new_ones(incl.shape[0], 1, m)], 1)  # ... after position p
        suffix = torch.empty(vf + 1, m, dtype=decay.dtype, device=dev)
        suffix[tab.flatten()] = after.flatten(0, 1)
        suffix = suffix[:vf]  # (V F, M)
    starts = const([i * f + s for i in range(videos) for s, _ in clips], dev)
    g = suffix.unsqueeze(-1) * coef  # (V F, M_anc, M_tok)
    g[starts] += torch.diag_embed(suffix[starts])
    base = const([[[t * n]] for _ in range(videos) for t in range(f)], dev)  # (V F, 1, 1) first column of each frame
    if intra_w is None:  # the intra stage left the anchors as they are: columns are the anchors
        w_anchor, cols = g, (anchors.unsqueeze(1) + base).expand(vf, m, m)
        w_kept, cols_kept = torch.ones(vf, m, 1, dtype=g.dtype, device=dev), anchors.unsqueeze(-1) + base
    else:
        w_anchor, w_kept = torch.bmm(g, intra_w), intra_w  # (V F, M, N)
    if key_row is None:
        clip_start = const([i * f + s for i in range(videos) for s, c in clips for _ in range(c)], dev)
        key_row = row_of[clip_start]  # (V F, M): the row of each clip-anchor slot of frame f's clip
    # slots that feed a clip anchor (keyframes; later frames too when merged), ascending: the same in
    # every video (the counts follow the clips), listed from Python
    key_frames = {s for s, _ in clips}
    used = [(t, j) for t in range(f) if merged or t in key_frames for j in range(counts[t])]
    use_idx = const([t * m + j for t, j in used], dev)  # (U,)
    q = w_anchor.shape[-1]
    keep = (kept & valid).view(videos, f * m)
    kidx = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :n_keep]  # (V, K) ascending
    qk = w_kept.shape[-1]

    voff = None if videos == 1 else const([[i * f * m] for i in range(videos)], dev)  # (V, 1)

    def take(t: Tensor, idx: Tensor, width: int) -> Tensor:  # t (V F, M, width) rows idx (V, U) -> (V, U * width)
        flat = idx.reshape(-1) if voff is None else (idx + voff).flatten()
        return t.reshape(videos * f * m, width).index_select(0, flat).view(videos, -1)

    use_v = use_idx.unsqueeze(0).expand(videos, -1)
    # rows (and dense columns) are one value per slot broadcast over its q entries: cat writes the
    # broadcast once, no (V F M, q) int64 copies are made
    slot_rows = (key_row.view(videos, f * m)[:, use_idx], row_of.view(videos, f * m).gather(1, kidx))  # (V, U), (V, K)
    if intra_w is None:
        rows = torch.cat([r.unsqueeze(-1).expand(-1, -1, w).flatten(1) for r, w in zip(slot_rows, (q, qk))], 1)
        cols = torch.cat([take(cols, use_v, q), take(cols_kept, kidx, qk)], 1)
    else:  # q == qk == N: slot s of frame t (within its video) reads columns t * N + 0..N-1; one buffer each
        rows = torch.cat(slot_rows, 1).unsqueeze(-1).expand(-1, -1, n).flatten(1)
        first_col = torch.cat([const([t * n for t, _ in used], dev).expand(videos, -1), (kidx // m) * n], 1)
        cols = (first_col.unsqueeze(-1) + const(list(range(n)), dev)).flatten(1)  # (V, (U + K) N)
    weights = torch.cat([take(w_anchor, use_v, q), take(w_kept, kidx, qk)], 1)
    return Mix(rows, cols, weights)


def _cast(t: Tensor, dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _identity(x: Tensor) -> Compressed:
    f, n, d = x.shape
    r = torch.arange(f * n, device=x.device)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return Compressed(x.reshape(f * n, d).clone(), torch.ones_like(r), r // n, r, r.clone(),
                      torch.zeros(f * n, dtype=torch.bool, device=x.device),
                      Mix(r.clone(), r.clone(), torch.ones(f * n, dtype=acc, device=x.device)))


def _check_config(config) -> None:
    if not isinstance(config, AOTConfig):
        raise TypeError(f"config must be an aot.AOTConfig, got {type(config).__name__}")


def _check_inputs(x, scores, local_scores, grid, finite: bool = True):
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (F, N, d) or (B, F, N, d), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor (float16/bfloat16/float32/float64), got dtype {x.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must have shape (F, N, d) or (B, F, N, d), got {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"x must have at least one frame, token and channel (F, N, d >= 1), got {tuple(x.shape)}")
    local_scores = scores if local_scores is None else local_scores
    for name, s in (("scores", scores), ("local_scores", local_scores)):
        if not isinstance(s, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(s).__name__}")
        if not s.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {s.dtype}")
        if tuple(s.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"{name} must have shape {tuple(x.shape[:-1])} (x without d), got {tuple(s.shape)}")
        if finite and not torch.isfinite(s).all():  # finite=False: the caller checks them with _check_values
            raise ValueError(f"{name} contains NaN or Inf; allowed: finite values")
    n = x.shape[-2]
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"N = {n} tokens per frame is not a square; pass grid=(h, w) with h * w = {n}")
        grid = (side, side)
    if (len(grid) != 2 or not all(isinstance(g, int) and g >= 1 for g in grid) or grid[0] * grid[1] != n):
        raise ValueError(f"grid must be two ints (h, w) with h * w = N = {n}, got {grid!r}")
    return x, scores, local_scores, tuple(grid)


def _check_norms(x: Tensor, norms: Tensor) -> None:
    if not torch.isfinite(norms).all():
        # the norm is non-finite if a value is NaN/Inf, or (rarely) if the squares overflow
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or Inf; allowed: finite values")
        raise ValueError("x has values too large to square in its dtype; rescale the tokens")
    zero = norms == 0
    if zero.any():
        f, i = torch.nonzero(zero)[0].tolist()
        raise ValueError(f"x has zero-norm tokens (first: frame {f}, token {i}); cosine cost needs nonzero tokens")


def _check_values(x: Tensor, norms: Tensor, scores: Tensor, local_scores: Tensor) -> None:
    """Finite scores, finite nonzero token norms: one host read for all of them (the messages of
    _check_inputs and _check_norms, in their order, only when something is wrong)."""
    ok = torch.isfinite(scores).all()
    if local_scores is not scores:
        ok = ok & torch.isfinite(local_scores).all()
    if bool(ok & torch.isfinite(norms.log()).all()):  # log: -inf at 0, inf at inf, NaN at NaN
        return
    for name, s in (("scores", scores), ("local_scores", local_scores)):
        if not torch.isfinite(s).all():
            raise ValueError(f"{name} contains NaN or Inf; allowed: finite values")
    for i in range(x.shape[0]):  # (B, F, N, d): the first video at fault, as the per-video loop said
        _check_norms(x[i], norms[i])
