"""A registry of token-compression methods that all share aot.compress's call shape.

    method = aot.methods.get("visionzip")
    out = method(x, scores, local_scores=None, grid=None, config=method.config(retention=0.1))

Every method takes tokens (F, N, d) or (B, F, N, d), scores (F, N) (+ optional local_scores and
grid) and its own frozen config dataclass (which always has a ``retention`` field), and returns
an ``aot.Compressed``.

``method.check(config, frames, tokens_per_frame)`` says, before any decoding or encoding, whether
the method can produce the exact budget for F x N tokens (a ValueError naming what would work).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..compress import Compressed
from ..config import budget

__all__ = ["Method", "register", "get", "names", "for_config"]


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Compressed]  # fn(x, scores, *, local_scores, grid, config) -> Compressed
    config_cls: type  # frozen dataclass with a `retention` field
    summary: str  # one line for --help and tables
    preset: dict[str, Any] = field(default_factory=dict)  # config overrides that define this name
    exact_budget: bool = True  # False when the method cannot hit every budget exactly (say why in summary)
    # extra feasibility rule checker(config, frames, tokens_per_frame) -> None, raising ValueError
    checker: Callable[[Any, int, int], None] | None = None
    # "pre-llm": compresses the visual tokens before the LLM (called as fn(x, scores, ...));
    # "llm": prunes inside the language model (FastV, PDrop); it only runs through aot.patch, and
    # ``schedule(config, n_visual, n_layers)`` gives its stages (aot.methods.inllm.Stage).
    stage: str = "pre-llm"
    schedule: Callable[[Any, int, int], list] | None = None

    def config(self, **overrides) -> Any:
        """This method's config: its preset, then ``overrides`` (e.g. retention=0.1)."""
        return self.config_cls(**{**self.preset, **overrides})

    def effective_config(self, config=None) -> Any:
        """The config this method actually runs with: ``config`` (default: ``self.config()``)
        with the preset's switches applied over it (an ablation's switches always apply)."""
        if config is None:
            return self.config()
        if not isinstance(config, self.config_cls):
            raise TypeError(f"method {self.name!r} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        return replace(config, **self.preset) if self.preset else config

    def reads_local_scores(self, config=None) -> bool:
        """Whether this method, run with ``config``, reads ``local_scores``: only AOT's attention-chosen
        windowed (local) anchors do, when the effective ``global_share`` is below 1 (since issue 22 the
        default is 1.0). Model adapters hook the shallow score block only when this is True."""
        eff = self.effective_config(config)
        share = getattr(eff, "global_share", None)
        return share is not None and share < 1.0 and getattr(eff, "anchor_select", "attention") == "attention"

    def check(self, config, frames: int, tokens_per_frame: int) -> None:
        """Raise ValueError if this method cannot compress F x N tokens under ``config``.

        Needs only the shapes, so callers run it before decoding or encoding anything. Every
        method: the exact budget keeps at least one token; then the method's own rule
        (``checker``: e.g. DyCoke's floor of one whole frame in four, AOT's one token per clip).
        """
        config = self.effective_config(config)
        for name, value in (("frames", frames), ("tokens_per_frame", tokens_per_frame)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        total = budget(config.retention, frames, tokens_per_frame)
        if total == 0:
            raise ValueError(f"retention={config.retention} keeps 0 of {frames * tokens_per_frame} tokens "
                             f"(F={frames}, N={tokens_per_frame}); use retention >= {1 / (frames * tokens_per_frame):.4g}")
        if self.checker is not None and total < frames * tokens_per_frame:
            self.checker(config, frames, tokens_per_frame)

    @property
    def in_llm(self) -> bool:
        """True for methods that prune inside the language model (they run only through aot.patch)."""
        return self.stage == "llm"

    def __call__(self, x, scores, *, local_scores=None, grid=None, config=None) -> Compressed:
        if self.in_llm:
            raise TypeError(f"method {self.name!r} prunes inside the language model, so it cannot compress "
                            f"tokens on their own; run it through aot.patch(model, config) "
                            f"(pre-LLM methods: {', '.join(names(stage='pre-llm'))})")
        config = self.effective_config(config)
        return self.fn(x, scores, local_scores=local_scores, grid=grid, config=config)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {method.stage!r}")
    if (method.stage == "llm") != (method.schedule is not None):
        raise ValueError("an in-LLM method (stage='llm') needs a schedule, and only it")
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


STAGES = ("pre-llm", "llm")


def names(stage: str | None = None) -> list[str]:
    """Registered names, sorted; ``stage="pre-llm"`` or ``"llm"`` selects one kind."""
    if stage is None:
        return sorted(_REGISTRY)
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES} or None, got {stage!r}")
    return sorted(n for n, m in _REGISTRY.items() if m.stage == stage)


def for_config(config) -> Method:
    """The method whose own config class ``config`` is (an AOTConfig -> "aot": the ablation switches
    live in the config, so a config made by an ablation's ``.config()`` runs that ablation)."""
    for method in _REGISTRY.values():
        if type(config) is method.config_cls and not method.preset:
            return method
    kinds = sorted({m.config_cls.__name__ for m in _REGISTRY.values()})
    raise TypeError(f"config must be a method config ({', '.join(kinds)}), e.g. aot.AOTConfig(retention=0.1) "
                    f"or aot.methods.get('visionzip').config(retention=0.1); got {type(config).__name__}")
