"""FastV and PDrop: comparison methods that prune visual tokens *inside* the language model.

They do not compress before the LLM; they run only through ``aot.patch`` (the mechanism is
``aot.models.inllm``). Each is a schedule of stages: before decoder layer ``prune_before`` (0-based)
the visual tokens still in the sequence are ranked by the attention the last prompt token pays them
in decoder layer ``score_layer`` (averaged over heads), and the top ``keep`` stay; every other token
stays. Layers before the first stage see every token.

FastV (Chen et al. 2024, "An image is worth 1/2 tokens after layer 2"): K = 2 layers see every
token; the attention of the K-th layer (0-based K - 1, the map FastV's code takes from the previous
layer) ranks; layers K.. see (1 - R) of the visual tokens. Here ``retention`` = 1 - R: the share of
visual tokens kept after layer K, ``budget(retention, 1, V)`` tokens (round half up). FastV's
published default R = 50% is ``retention=0.5``; the AOT paper's FastV row (9.3 TFLOPs on
LLaVA-OV-7B, Table 1) is K = 2, ``retention=0.2`` (R = 80%), see ``aot.flops``.

PDrop (Xing et al. 2024, PyramidDrop): stages at layers 8, 16, 24, each keeping ``retention`` (the
ratio lambda, published default 0.5) of the visual tokens left, i.e. ``budget(retention ** s, 1, V)``
after stage s = 1, 2, 3. As in PDrop's code, layer 8's own q and k (from its input) rank the tokens,
and layer 8 already runs on the kept ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..config import budget
from .registry import Method, register

__all__ = ["Stage", "FastVConfig", "PDropConfig", "fastv_schedule", "pdrop_schedule"]


class Stage(NamedTuple):
    prune_before: int  # first decoder layer (0-based) that sees only the kept visual tokens
    score_layer: int  # decoder layer whose input, q/k projections and RoPE give the ranking
    keep: int  # visual tokens left after this stage (per sequence)


def _check_retention(retention) -> None:
    if isinstance(retention, bool) or not isinstance(retention, (int, float)) or not 0 < retention <= 1:
        raise ValueError(f"retention must be a number in (0, 1], got {retention!r}")


def _check_layers(name: str, layers: tuple, n_layers: int | None) -> None:
    if not layers or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in layers):
        raise ValueError(f"{name} must be ints >= 1, got {layers!r}")
    if list(layers) != sorted(set(layers)):
        raise ValueError(f"{name} must be strictly increasing, got {layers!r}")
    if n_layers is not None and layers[-1] >= n_layers:
        raise ValueError(f"{name} {layers!r} do not fit a language model of {n_layers} layers "
                         f"(every pruning layer must be < {n_layers})")


@dataclass(frozen=True)
class FastVConfig:
    """FastV: ``k`` layers see every token; then ``retention`` (= 1 - FastV's R) of the visual tokens."""

    retention: float = 0.5  # FastV's published default R = 50% at K = 2
    k: int = 2

    def __post_init__(self):
        _check_retention(self.retention)
        _check_layers("k", (self.k,), None)


@dataclass(frozen=True)
class PDropConfig:
    """PDrop: at each of ``layers``, keep ``retention`` (lambda) of the visual tokens left."""

    retention: float = 0.5  # PDrop's published lambda
    layers: tuple[int, ...] = (8, 16, 24)

    def __post_init__(self):
        _check_retention(self.retention)
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_layers("layers", self.layers, None)


def fastv_schedule(config: FastVConfig, n_visual: int, n_layers: int | None = None) -> list[Stage]:
    _check_layers("fastv k", (config.k,), n_layers)
    keep = budget(config.retention, 1, n_visual) if n_visual else 0
    return [Stage(config.k, config.k - 1, keep)]


def pdrop_schedule(config: PDropConfig, n_visual: int, n_layers: int | None = None) -> list[Stage]:
    _check_layers("pdrop layers", config.layers, n_layers)
    return [Stage(layer, layer, budget(config.retention ** s, 1, n_visual) if n_visual else 0)
            for s, layer in enumerate(config.layers, 1)]


def _no_direct_call(*args, **kwargs):  # Method.__call__ refuses in-LLM methods before this
    raise TypeError("in-LLM methods run only through aot.patch")


register(Method("fastv", _no_direct_call, FastVConfig,
                "FastV (in-LLM): after layer K=2 keep the visual tokens the last prompt token attends most "
                "(retention = 1 - FastV's R)", stage="llm", schedule=fastv_schedule))
register(Method("pdrop", _no_direct_call, PDropConfig,
                "PDrop (in-LLM): at layers 8/16/24 keep retention (lambda, default 0.5) of the visual tokens "
                "left, ranked by the last prompt token's attention", stage="llm", schedule=pdrop_schedule))
