"""Two reference points with an exact budget: uniform spatial pooling and uniform random tokens.

pooling: each frame gets its share s of the budget (the exact total split over frames as evenly
as possible, the larger shares spread evenly over the video) and is average-pooled on its (h, w)
grid to s cells:
- the base grid has a = floor(sqrt(s * h / w)) rows (1 <= a <= min(h, s)) and b = min(w, s // a)
  columns; row i covers grid rows [floor(i h / a), floor((i + 1) h / a)), columns likewise. This
  is adaptive average pooling when a divides h and b divides w; otherwise the cells differ by at
  most one row/column and never overlap (torch's adaptive pooling overlaps them);
- the remaining r = s - a * b tokens come from splitting r cells in two: among the cells of at
  least two tokens, in row-major order, the ones at ranks floor((j + 1/2) * M / r), j < r (evenly
  spaced), each split across its longer side (rows when height >= width), first half
  floor(size / 2) rows/columns. There are always enough such cells.
A token is its cell's mean, its size the cell's size, its position the cell's centre
(row (r0 + r1 - 1) // 2, column (c0 + c1 - 1) // 2).

random: R tokens drawn uniformly without replacement over the whole video
(torch.randperm with a generator seeded by ``seed``: every video of a batch gets the same draw),
kept as they are; the others are dropped (assignment -1).

Mix (``Compressed.mix``): pooling gives each token of a cell weight 1 / (cell size), and
``reduce(x)`` equals ``tokens`` to rounding; random is a selection (weight 1), reduced exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from ..compress import Compressed
from ..config import budget
from .common import assemble, check_retention, even_split, run
from .registry import Method, register

__all__ = ["PoolingConfig", "RandomConfig", "pooling", "random_tokens", "pool_cells"]


@dataclass(frozen=True)
class PoolingConfig:
    retention: float = 0.1  # rho in (0, 1]: output keeps exactly round_half_up(rho * F * N) tokens

    def __post_init__(self) -> None:
        check_retention(self.retention)


@dataclass(frozen=True)
class RandomConfig:
    retention: float = 0.1  # rho in (0, 1]: output keeps exactly round_half_up(rho * F * N) tokens
    seed: int = 0  # seed of the torch.Generator that draws the kept tokens

    def __post_init__(self) -> None:
        check_retention(self.retention)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


def pooling(x, scores, *, local_scores=None, grid=None, config: PoolingConfig = PoolingConfig()) -> Compressed:
    """Average pooling of every frame to its share of exactly round_half_up(retention * F * N) tokens."""
    return run(_pooling_one, PoolingConfig, x, scores, local_scores, grid, config)


def random_tokens(x, scores, *, local_scores=None, grid=None, config: RandomConfig = RandomConfig()) -> Compressed:
    """Exactly round_half_up(retention * F * N) tokens drawn uniformly at random; the rest dropped."""
    return run(_random_one, RandomConfig, x, scores, local_scores, grid, config)


@lru_cache(maxsize=256)
def pool_cells(h: int, w: int, s: int) -> tuple[tuple[int, int, int, int], ...]:
    """The s cells (r0, r1, c0, c1) that pooling splits an (h, w) grid into, 1 <= s <= h * w."""
    a = min(max(math.isqrt(s * h // w), 1), h, s)  # floor(sqrt(s h / w)) = isqrt(floor(s h / w))
    b = min(w, s // a)
    rb = [i * h // a for i in range(a + 1)]
    cb = [j * w // b for j in range(b + 1)]
    cells = [(rb[i], rb[i + 1], cb[j], cb[j + 1]) for i in range(a) for j in range(b)]
    r = s - a * b
    if r:
        big = [k for k, (r0, r1, c0, c1) in enumerate(cells) if (r1 - r0) * (c1 - c0) >= 2]
        split = {big[(2 * j + 1) * len(big) // (2 * r)] for j in range(r)}
        out = []
        for k, (r0, r1, c0, c1) in enumerate(cells):
            if k not in split:
                out.append((r0, r1, c0, c1))
            elif r1 - r0 >= c1 - c0:
                mid = r0 + (r1 - r0) // 2
                out += [(r0, mid, c0, c1), (mid, r1, c0, c1)]
            else:
                mid = c0 + (c1 - c0) // 2
                out += [(r0, r1, c0, mid), (r0, r1, mid, c1)]
        cells = out
    return tuple(cells)


def check_one_per_frame(config: PoolingConfig, f: int, n: int) -> None:
    """Pooling keeps at least one cell per frame: a budget below F tokens raises ValueError."""
    total = budget(config.retention, f, n)
    if total < f:
        raise ValueError(f"pooling keeps at least one token per frame ({f} frames), more than the budget of "
                         f"{total} tokens (retention={config.retention}, F={f}, N={n}); use retention >= {1 / n:.4g}")


def _pooling_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: PoolingConfig) -> Compressed:
    f, n, d = x.shape
    check_one_per_frame(config, f, n)
    h, w = grid
    dev = x.device
    cell_of = torch.empty(f, n, dtype=torch.long)
    centres, offset = [], 0
    for t, s in enumerate(even_split(total, f)):
        for k, (r0, r1, c0, c1) in enumerate(pool_cells(h, w, s)):
            cell_of[t].view(h, w)[r0:r1, c0:c1] = offset + k
            centres.append(t * n + (r0 + r1 - 1) // 2 * w + (c0 + c1 - 1) // 2)
        offset += s
    assignment = cell_of.flatten().to(dev)
    summed = torch.zeros(total, d, dtype=x.dtype, device=dev).index_add_(0, assignment, x.reshape(f * n, d))
    counts = torch.bincount(assignment, minlength=total).to(x.dtype).unsqueeze(1)
    return assemble(summed / counts, torch.tensor(centres, device=dev), assignment, n,
                    weight=(1 / counts[:, 0])[assignment])


def _random_one(x: Tensor, norms: Tensor, scores: Tensor, grid, total: int, config: RandomConfig) -> Compressed:
    f, n, d = x.shape
    gen = torch.Generator().manual_seed(config.seed)
    poss = torch.sort(torch.randperm(f * n, generator=gen)[:total]).values.to(x.device)
    assignment = torch.full((f * n,), -1, dtype=torch.long, device=x.device)
    assignment[poss] = torch.arange(total, device=x.device)
    return assemble(x.reshape(f * n, d)[poss], poss, assignment, n)


register(Method("pooling", pooling, PoolingConfig,
                "uniform average pooling of each frame's grid to its share of the budget (reference point)",
                checker=check_one_per_frame))
register(Method("random", random_tokens, RandomConfig,
                "uniformly random tokens over the whole video, the rest dropped (reference point; fixed seed)"))
