"""A registry of token-compression methods that all share aot.compress's call shape.

    method = aot.methods.get("visionzip")
    out = method(x, scores, local_scores=None, grid=None, config=method.config(retention=0.1))

Every method takes tokens (F, N, d) or (B, F, N, d), scores (F, N) (+ optional local_scores and
grid) and its own frozen config dataclass (which always has a ``retention`` field), and returns
an ``aot.Compressed``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..compress import Compressed

__all__ = ["Method", "register", "get", "names", "for_config"]


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Compressed]  # fn(x, scores, *, local_scores, grid, config) -> Compressed
    config_cls: type  # frozen dataclass with a `retention` field
    summary: str  # one line for --help and tables
    preset: dict[str, Any] = field(default_factory=dict)  # config overrides that define this name
    exact_budget: bool = True  # False when the method cannot hit every budget exactly (say why in summary)

    def config(self, **overrides) -> Any:
        """This method's config: its preset, then ``overrides`` (e.g. retention=0.1)."""
        return self.config_cls(**{**self.preset, **overrides})

    def __call__(self, x, scores, *, local_scores=None, grid=None, config=None) -> Compressed:
        if config is None:
            config = self.config()
        elif not isinstance(config, self.config_cls):
            raise TypeError(f"method {self.name!r} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        elif self.preset:
            config = replace(config, **self.preset)  # an ablation's switches always apply
        return self.fn(x, scores, local_scores=local_scores, grid=grid, config=config)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The method registered as ``name``; a typo gets the list of names (and the closest ones)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; choose one of: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def for_config(config) -> Method:
    """The method whose own config class ``config`` is (an AOTConfig -> "aot": the ablation switches
    live in the config, so a config made by an ablation's ``.config()`` runs that ablation)."""
    for method in _REGISTRY.values():
        if type(config) is method.config_cls and not method.preset:
            return method
    kinds = sorted({m.config_cls.__name__ for m in _REGISTRY.values()})
    raise TypeError(f"config must be a method config ({', '.join(kinds)}), e.g. aot.AOTConfig(retention=0.1) "
                    f"or aot.methods.get('visionzip').config(retention=0.1); got {type(config).__name__}")
