"""DyCoke (Tao et al., CVPR 2025): its pre-LLM token temporal merging (TTM) stage (DESIGN 3).

The released ``dycole_ttm``: frames form groups of 4 (f0, f1, f2, f3). f0 keeps every token.
f1 is compared with f0 and f3 with f2 (the pair pass), f2 with f0 (the group pass), always cell
by cell (token n against token n of the reference frame, cosine of the *unpruned* reference
tokens). A compared frame keeps only its tokens least similar to the reference cell; the others
are dropped as redundant with the reference token (the released code drops them; nothing is
averaged, so they get assignment -1 and count in no size). Kept tokens are marked ``dynamic``.

Budget: the reference frames (ceil(F / 4) of them) are kept whole, so the output can't hold fewer
than ceil(F / 4) * N tokens: a smaller budget raises a ValueError naming the smallest retention
that works. The rest of the exact budget is split over the compared frames as evenly as possible
(the released code keeps int(0.3 * N) on every compared frame: the published pruning rate 0.7,
i.e. retention (1 + 3 * 0.3) / 4 = 0.475 for a multiple of 4 frames).

Deviations: the released group pass skips the last group (``range(0, F - 4, 4)``: its third frame
stays whole) and drops the last frame when F is odd; here every group, including a short last
one, follows the same rule. DyCoke's second stage (KV-cache pruning inside the LLM while decoding)
is not part of token compression and is left out. Ties go to the lower grid index.

Mix (``Compressed.mix``): a selection, weight 1 for every kept token; ``reduce(x)`` equals
``tokens`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..compress import Compressed
from ..config import budget
from .common import assemble, check_retention, even_split, run, top_by_score
from .registry import Method, register

__all__ = ["DyCokeConfig", "dycoke", "dycoke_reference"]


@dataclass(frozen=True)
class DyCokeConfig:
    retention: float = 0.475  # rho in (0, 1], >= ceil(F/4)/F; DyCoke's pruning rate 0.7 on 3 of 4 frames is 0.475

    def __post_init__(self) -> None:
        check_retention(self.retention)


def dycoke(x, scores, *, local_scores=None, grid=None, config: DyCokeConfig = DyCokeConfig()) -> Compressed:
    """DyCoke's TTM to exactly round_half_up(retention * F * N) tokens; x (F, N, d) or (B, F, N, d).

    scores are validated but unused (DyCoke's TTM needs no attention).
    """
    return run(_dycoke_one, DyCokeConfig, x, scores, local_scores, grid, config)


def dycoke_reference(t: int) -> int | None:
    """The frame that frame t is compared with (None for a group's first frame, kept whole)."""
    return {0: None, 1: t - 1, 2: t - 2, 3: t - 1}[t % 4]


def check_floor(config: DyCokeConfig, f: int, n: int) -> None:
    """Raise ValueError when the budget is below DyCoke's floor: ceil(F / 4) whole frames of N tokens."""
    whole = -(-f // 4)  # frames 0, 4, 8, ...: the first of every group of 4
    total = budget(config.retention, f, n)
    if total < whole * n:
        raise ValueError(
            f"DyCoke keeps the first frame of every group of 4 whole ({whole} frames x {n} tokens = {whole * n}), "
            f"more than the budget of {total} tokens (retention={config.retention}, F={f}, N={n}); "
            f"use retention >= {whole / f:.4g}")


def _dycoke_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: DyCokeConfig) -> Compressed:
    f, n, d = x.shape
    dev = x.device
    compared = [t for t in range(f) if t % 4]
    base = (f - len(compared)) * n
    check_floor(config, f, n)
    keep = dict(zip(compared, even_split(total - base, len(compared))))
    poss = []
    for t in range(f):
        ref = dycoke_reference(t)
        if ref is None:
            poss.append(torch.arange(n, device=dev) + t * n)
            continue
        sim = (x[t] * x[ref]).sum(-1) / (norms[t] * norms[ref])  # cell n against cell n
        poss.append(torch.sort(top_by_score(sim, keep[t], largest=False)).values + t * n)
    poss = torch.cat(poss)
    assignment = torch.full((f * n,), -1, dtype=torch.long, device=dev)
    assignment[poss] = torch.arange(poss.numel(), device=dev)
    dynamic = (poss // n) % 4 != 0
    return assemble(x.reshape(f * n, d)[poss], poss, assignment, n, dynamic)


register(Method("dycoke", dycoke, DyCokeConfig,
                "DyCoke TTM: groups of 4 frames, later frames keep the tokens least like the reference cell; "
                "needs retention >= ceil(F/4)/F", checker=check_floor))
