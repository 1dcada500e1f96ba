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
from .common import assemble, check_retention, cosine_sim, even_split, run, top_by_score
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
    f, n, d = x.shape
    dev = x.device
    toks, poss = [], []
    assignment = torch.full((f * n,), -1, dtype=torch.long, device=dev)
    weight = torch.ones(f * n, dtype=x.dtype, device=dev)  # coefficient of each input token in its row
    row = 0
    for t, share in enumerate(even_split(total, f)):
        n_dom = min(share, math.floor(share * config.dominant_share + 0.5))
        n_ctx = share - n_dom
        dom = top_by_score(scores[t], n_dom)
        rest_mask = torch.ones(n, dtype=torch.bool, device=dev)
        rest_mask[dom] = False
        rest = torch.nonzero(rest_mask).flatten()  # non-dominant tokens in grid order
        toks.append(x[t, dom])
        poss.append(dom + t * n)
        assignment[t * n + dom] = torch.arange(row, row + n_dom, device=dev)
        row += n_dom
        if n_ctx == 0:
            continue
        step = max(1, rest.numel() // n_ctx)
        is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=dev)
        is_target[torch.arange(0, rest.numel(), step, device=dev)[:n_ctx]] = True
        targets, others = rest[is_target], rest[~is_target]
        owner = cosine_sim(x[t, others], x[t, targets], norms[t, others], norms[t, targets]).argmax(-1)
        counts = torch.bincount(owner, minlength=n_ctx).to(x.dtype).unsqueeze(1)
        summed = torch.zeros(n_ctx, d, dtype=x.dtype, device=dev).index_add_(0, owner, x[t, others])
        if config.merge == "sum":
            ctx = x[t, targets] + summed / counts.clamp(min=1)
            weight[t * n + others] = (1 / counts.clamp(min=1))[owner, 0]  # the target keeps 1
        else:
            ctx = (x[t, targets] + summed) / (1 + counts)
            weight[t * n + targets] = 1 / (1 + counts[:, 0])
            weight[t * n + others] = (1 / (1 + counts))[owner, 0]
        toks.append(ctx)
        poss.append(targets + t * n)
        assignment[t * n + targets] = torch.arange(row, row + n_ctx, device=dev)
        assignment[t * n + others] = row + owner
        row += n_ctx
    return assemble(torch.cat(toks), torch.cat(poss), assignment, n, weight=weight)


register(Method("visionzip", visionzip, VisionZipConfig,
                "VisionZip per frame: top-attention dominant tokens + strided contextual tokens with similar tokens merged in"))
