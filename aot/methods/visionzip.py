"""VisionZip (Yang et al., CVPR 2025) applied frame by frame, as video LLMs use it (DESIGN 3).

Per frame, with the frame's share s of the budget (the exact total split over frames as evenly as
possible, the larger shares spread evenly over the video):

- dominant tokens: the round_half_up(s * 54/64) tokens with the highest attention score (VisionZip
  keeps 54 dominant + 10 contextual of 64);
- contextual tokens: the other c = s - dominant. Among the non-dominant tokens, in grid order,
  the targets are every ``step``-th one, step = max(1, (N - dominant) // c), the first c of them
  (VisionZip's ``arange(0, n, step)[:c]``); every other non-dominant token goes to the target of
  highest cosine similarity and is merged in. The published code emits
  ``target + mean(tokens merged into it)`` (merge="sum", the default here); merge="mean" is the
  plain average of the target and its merged tokens.

Deviations: VisionZip measures similarity on the attention keys of the vision tower's last layer;
we only have the tokens being compressed, so the cosine is taken on those. The attention score is
the caller's ``scores`` (SigLIP has no [CLS]; DESIGN 2.1). Ties in the score go to the lower grid
index. With c = 0 (tiny shares) the non-dominant tokens are dropped (assignment -1).

Mix (``Compressed.mix``): a dominant token has weight 1 in its row; a contextual row has its target
at 1 and each merged token at 1 / (merged count) (merge="sum"), or every token at
1 / (1 + merged count) (merge="mean"). ``reduce(x)`` equals ``tokens`` to rounding (float sums in
another order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..compress import Compressed
from .common import assemble, check_retention, even_split, run
from .registry import Method, register

__all__ = ["VisionZipConfig", "visionzip"]


@dataclass(frozen=True)
class VisionZipConfig:
    retention: float = 0.1  # rho in (0, 1]: output keeps exactly round_half_up(rho * F * N) tokens
    dominant_share: float = 54 / 64  # share of each frame's tokens kept as dominant (VisionZip: 54 of 64)
    merge: Literal["sum", "mean"] = "sum"  # contextual token: target + mean(merged) (published code) or plain mean

    def __post_init__(self) -> None:
        check_retention(self.retention)
        if not (isinstance(self.dominant_share, (int, float)) and 0.0 <= self.dominant_share <= 1.0):
            raise ValueError(f"dominant_share must be a number in [0, 1], got {self.dominant_share!r}")
        if self.merge not in ("sum", "mean"):
            raise ValueError(f"merge must be 'sum' or 'mean', got {self.merge!r}")


def visionzip(x, scores, *, local_scores=None, grid=None, config: VisionZipConfig = VisionZipConfig()) -> Compressed:
    """VisionZip per frame to exactly round_half_up(retention * F * N) tokens; x (F, N, d) or (B, F, N, d)."""
    return run(_visionzip_one, VisionZipConfig, x, scores, local_scores, grid, config)


def _visionzip_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: VisionZipConfig) -> Compressed:
    """Every frame at once: a fixed number of operators whatever F, and no host read."""
    f, n, d = x.shape
    dev = x.device
    shares = even_split(total, f)
    n_dom = [min(s, math.floor(s * config.dominant_share + 0.5)) for s in shares]
    n_ctx = [s - k for s, k in zip(shares, n_dom)]
    steps = [max(1, (n - k) // c) if c else 1 for k, c in zip(n_dom, n_ctx)]
    n_dom_t, n_ctx_t, step_t = (torch.tensor(v, device=dev).unsqueeze(1) for v in (n_dom, n_ctx, steps))  # (F, 1)
    cells = torch.arange(n, device=dev)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # per frame top_by_score
    rank = torch.empty_like(order).scatter_(1, order, cells.expand(f, n))
    dom = rank < n_dom_t  # (F, N) dominant tokens
    ridx = torch.cumsum(~dom, 1) - 1  # index among the frame's non-dominant tokens, in grid order
    target = ~dom & (ridx % step_t == 0) & (ridx < n_ctx_t * step_t)  # arange(0, rest, step)[:n_ctx]
    other = ~dom & ~target & (n_ctx_t > 0)  # merged into a target (dropped when the frame has none)
    c_max = max(n_ctx)

    flat_x = x.reshape(f * n, d)
    kept = (dom | target).flatten()
    pos = torch.sort(~kept, stable=True).indices[:total]  # kept flat positions, ascending: row r = pos[r]
    row_of = torch.cumsum(kept, 0) - 1  # (F * N,) row of each kept position
    assignment = torch.where(kept, row_of, -1)
    weight = torch.ones(f * n, dtype=x.dtype, device=dev)  # coefficient of each input token in its row
    tokens = flat_x[pos]
    if c_max:
        slots = torch.sort(~target, dim=1, stable=True).indices[:, :c_max]  # (F, C) targets ascending, padded
        valid = torch.arange(c_max, device=dev) < n_ctx_t
        t_feat = x.gather(1, slots.unsqueeze(-1).expand(f, c_max, d))  # (F, C, d)
        t_norm = norms.gather(1, slots)
        cos = torch.bmm(x, t_feat.transpose(1, 2)) / (norms.unsqueeze(2) * t_norm.unsqueeze(1))  # (F, N, C)
        owner = cos.masked_fill(~valid.unsqueeze(1), -math.inf).argmax(-1)  # most similar target (first on ties)
        frame_base = torch.arange(f, device=dev).unsqueeze(1) * n
        owner_row = row_of[(frame_base + slots.gather(1, owner)).flatten()]  # (F * N,) row of that target
        other = other.flatten()
        into = torch.where(other, owner_row, total)  # row total: a sink for every token that is not merged
        summed = torch.zeros(total + 1, d, dtype=x.dtype, device=dev).index_add_(0, into, flat_x)[:total]
        counts = torch.bincount(into, minlength=total + 1)[:total].to(x.dtype).unsqueeze(1)
        is_t = target.flatten()[pos].unsqueeze(1)
        if config.merge == "sum":
            ctx = tokens + summed / counts.clamp(min=1)
            coef = 1 / counts.clamp(min=1)  # the target keeps 1
        else:
            ctx = (tokens + summed) / (1 + counts)
            coef = 1 / (1 + counts)
            weight = torch.where(kept & target.flatten(), coef[row_of.clamp(min=0), 0], weight)
        tokens = torch.where(is_t, ctx, tokens)
        assignment = torch.where(other, owner_row, assignment)
        weight = torch.where(other, coef[owner_row.clamp(max=total - 1), 0], weight)
    return assemble(tokens, pos, assignment, n, weight=weight)


register(Method("visionzip", visionzip, VisionZipConfig,
                "VisionZip per frame: top-attention dominant tokens + strided contextual tokens with similar tokens merged in"))
