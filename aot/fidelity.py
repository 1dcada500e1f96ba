"""How faithfully a compressed token set stands for the original tokens (pure torch).

Two views, both computed for every original token:

* token cosine: cos(x_i, y_{a(i)}) between original token i and the output token a(i) that absorbed
  it (0 for a dropped token);
* attention readout: with every original token as a query, softmax(q K^T / sqrt(d)) V over the
  compressed set versus over the full set (keys = values = the tokens), compared by cosine. The
  "size-aware" variant adds log(size) to the logits (each output token then weighs as much as the
  tokens it stands for); a plain LLM does not, so the plain number is the honest one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Fidelity", "fidelity", "full_readout"]


class Fidelity(NamedTuple):
    token_cos_mean: float  # mean over original tokens of cos(x_i, its absorbing output token)
    token_cos_p05: float  # 5th percentile of the same
    readout_cos_mean: float  # mean cosine of attention readouts, compressed vs full keys
    readout_cos_p05: float  # 5th percentile of the same
    readout_sized_cos_mean: float  # same with log(size) added to the compressed logits


def _readout(q: Tensor, kv: Tensor, bias: Tensor | None, chunk: int) -> Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = []
    for s in range(0, q.shape[0], chunk):
        logits = (q[s:s + chunk] @ kv.T) * scale  # (chunk, K)
        if bias is not None:
            logits = logits + bias
        out.append(torch.softmax(logits, dim=-1) @ kv)
    return torch.cat(out)


def _p05(v: Tensor) -> float:
    return float(torch.quantile(v, 0.05))


def full_readout(x: Tensor, *, chunk: int = 1024) -> Tensor:
    """The attention readout over the full set, (F*N, d) float32, for x (F, N, d).

    It depends on x only: compute it once per video and pass it to :func:`fidelity` as ``full``
    when comparing several compressions of the same tokens (the costliest part: (F*N)^2 d).
    """
    flat = x.reshape(-1, x.shape[-1]).float()
    return _readout(flat, flat, None, chunk)


def fidelity(x: Tensor, tokens: Tensor, sizes: Tensor, assignment: Tensor, *, chunk: int = 1024,
             full: Tensor | None = None) -> Fidelity:
    """x: (F, N, d) original tokens; tokens (R, d), sizes (R,), assignment (F*N,) from a compression.

    full: :func:`full_readout` of x, if already computed (same result, less work).
    """
    flat = x.reshape(-1, x.shape[-1]).float()  # (F*N, d)
    y = tokens.float()
    absorbed = y[assignment.clamp(min=0)]
    cos = torch.nn.functional.cosine_similarity(flat, absorbed, dim=-1)
    cos = torch.where(assignment >= 0, cos, torch.zeros_like(cos))
    if full is None:
        full = _readout(flat, flat, None, chunk)
    elif full.shape != flat.shape:
        raise ValueError(f"full must be the full-set readout of x, shape {tuple(flat.shape)}, got {tuple(full.shape)}")
    comp = _readout(flat, y, None, chunk)
    sized = _readout(flat, y, sizes.float().log(), chunk)
    rcos = torch.nn.functional.cosine_similarity(full, comp, dim=-1)
    scos = torch.nn.functional.cosine_similarity(full, sized, dim=-1)
    return Fidelity(float(cos.mean()), _p05(cos), float(rcos.mean()), _p05(rcos), float(scos.mean()))
