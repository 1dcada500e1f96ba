"""The AOT pipeline with an exact token budget: ``aot.compress`` (DESIGN 2, 2.5, 2.6)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .anchors import select_anchors_varied
from aot.config import AOTConfig, budget
from .intra import aggregate_intra, tracks_grad
from aot.temporal import clip_length_of

from .temporal import aggregate_inter, dynamic_clips, uniform_clips

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
    length = clip_length_of(config, f)  # the clip-length rule is config logic, shared (issue 22 added anchor_density)
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
) -> Compressed:
    """Compress one video x (F, N, d), or a batch (B, F, N, d), to exactly round_half_up(rho F N) tokens.

    scores: (F, N) or (B, F, N) global importance (deep-layer attention received) on the grid;
    local_scores: same shape, shallow-layer importance for the local anchors (default: scores);
    grid: (h, w) with h * w = N (default: square). Every clip's budget goes to anchors folded
    from their frame by OT (Eq. 9-12), merged across the clip (Eq. 13-16), plus the tokens that
    changed most. retention 1.0 returns the input unchanged.
    """
    _check_config(config)
    x, scores, local_scores, grid = _check_inputs(x, scores, local_scores, grid)
    if x.dim() == 4:
        return stack([_compress_one(x[i], scores[i], local_scores[i], grid, config) for i in range(x.shape[0])])
    return _compress_one(x, scores, local_scores, grid, config)


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


def _compress_one(x: Tensor, scores: Tensor, local_scores: Tensor, grid, config: AOTConfig) -> Compressed:
    f, n, d = x.shape
    dev = x.device
    work, norms, total = prepare(x, config.retention)
    if total == f * n:
        return _identity(x)
    clips = make_clips(work, config)
    per_clip, n_keep = plan_budget(total, f, n, len(clips), config.anchor_share)
    counts = torch.repeat_interleave(torch.tensor(per_clip, device=dev),
                                     torch.tensor([c for _, c in clips], device=dev))  # (F,)
    if config.anchor_select == "random":  # ablation: uniformly random anchors, reproducible by seed
        gen = torch.Generator().manual_seed(config.seed)
        scores = local_scores = torch.rand(f, n, generator=gen).to(dev)
    anchors, valid = select_anchors_varied(scores.float(), local_scores.float(), grid, counts,
                                           global_share=1.0 if config.anchor_select == "random" else config.global_share,
                                           windows=config.windows)
    m = anchors.shape[1]  # (F, M) padded where a frame has fewer anchors
    intra = aggregate_intra(work, norms, anchors, valid, reg=config.reg, n_iters=config.n_iters,
                            tol=config.tol, lam=config.lam_intra, mass=config.mass, merge=config.intra_merge)
    inter = aggregate_inter(intra.tokens, intra.sizes, clips, n_keep, valid, reg=config.reg,
                            n_iters=config.n_iters, tol=config.tol, lam=config.lam_inter, merge=config.inter_merge,
                            keep_by=config.keep_by, keep_ref=config.keep_ref,
                            guard=config.unmatched_anchors == "skip")

    # every (frame, anchor slot) either is an output row (clip first frames, kept tokens) or is
    # merged into its clip's anchor; rows in row-major order are sorted by (frame, position)
    starts = torch.tensor([s for s, _ in clips], device=dev)
    lengths = torch.tensor([c for _, c in clips], device=dev)
    clip_start = torch.repeat_interleave(starts, lengths)  # (F,)
    first = torch.zeros(f, dtype=torch.bool, device=dev)
    first[starts] = True
    is_row = (first.unsqueeze(1) | inter.kept) & valid  # (F, M)
    row_of = torch.cumsum(is_row.flatten(), 0).view(f, m) - 1  # (F, M) valid where is_row
    merged_row = row_of[clip_start.unsqueeze(1).expand(f, m), inter.owner.clamp(min=0)]
    merged_row = torch.where(inter.owner >= 0, merged_row, -1)  # -1: dropped (merge="none" ablations)
    slot_row = torch.where(is_row, row_of, merged_row)  # (F, M)

    tokens = intra.tokens
    if tracks_grad(tokens):  # intra.tokens is saved by the inter pass's products: keep it intact
        tokens = tokens.index_put((starts,), inter.anchors)
    else:
        tokens[starts] = inter.anchors  # intra.tokens is ours: overwrite the keyframes in place
    sizes = intra.sizes
    sizes[starts] = inter.anchor_sizes
    pos = anchors + torch.arange(f, device=dev).unsqueeze(1) * n  # (F, M) flat positions
    frame_ids = torch.arange(f, device=dev).unsqueeze(1).expand(f, m)
    assignment = slot_row.gather(1, intra.owner.clamp(min=0))  # (F, N)
    assignment = torch.where(intra.owner >= 0, assignment, -1).flatten()  # (F * N,)
    return Compressed(
        tokens=tokens[is_row].to(x.dtype),
        sizes=sizes[is_row],
        frames=frame_ids[is_row],
        positions=pos[is_row],
        assignment=assignment,
        dynamic=inter.kept[is_row],
    )


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


def _check_inputs(x, scores, local_scores, grid):
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
        if not torch.isfinite(s).all():
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
