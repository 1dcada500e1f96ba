"""What ``aot eval`` and the lmms-eval plugin share: a method's config from strings, a left-padded
batch from single-video inputs, and one batched ``generate`` with or without compression that
reports the visual tokens the LLM received for every row.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch

__all__ = ["VANILLA", "parse_field", "method_config", "config_dict", "collate", "Generated",
           "generate_batch", "pad_token_id", "sub_batches"]

VANILLA = "vanilla"  # no compression, the model unpatched (retention 1)


def _coerce(hint, raw, name: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    text = str(raw).strip()
    if origin in (Union, types.UnionType):
        if type(None) in args and (raw is None or text.lower() == "none"):
            return None
        errors = []
        for sub in (a for a in args if a is not type(None)):
            try:
                return _coerce(sub, raw, name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        if text not in [str(a) for a in args]:
            raise ValueError(f"{name} must be one of {', '.join(map(str, args))}, got {raw!r}")
        return next(a for a in args if str(a) == text)
    if origin is tuple:  # e.g. windows: "3x3" (commas separate model args in lmms-eval)
        parts = raw if isinstance(raw, (list, tuple)) else [p for p in text.lower().replace(";", "x").split("x")]
        kinds = [a for a in args if a is not Ellipsis]
        if Ellipsis not in args and len(parts) != len(kinds):
            raise ValueError(f"{name} needs {len(kinds)} values like 3x3, got {raw!r}")
        return tuple(_coerce(kinds[min(i, len(kinds) - 1)], p, name) for i, p in enumerate(parts))
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool):
            raise ValueError(f"{name} must be an int, got {raw!r}")
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an int, got {raw!r}") from None
    if hint is float:
        if isinstance(raw, bool):
            raise ValueError(f"{name} must be a number, got {raw!r}")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if hint is str:
        return text
    raise ValueError(f"cannot parse a value for {name} (type {hint})")


def parse_field(cls, name: str, raw):
    """``raw`` (a string, or what lmms-eval's arg parser made of it) as the type of ``cls``'s field."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise ValueError(f"{cls.__name__} has no field {name!r}; fields: {', '.join(hints)}")
    return _coerce(hints[name], raw, name)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``--set FIELD=VALUE`` items -> {field: raw value}; an item without ``=`` is a ValueError."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set needs FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def method_config(method: str, retention=None, overrides: dict[str, Any] | None = None):
    """(Method, config) for a registry name, or (None, None) for ``"vanilla"``. ``overrides``: field
    name -> value (strings parsed to the field's type); an unknown field is a ValueError listing them."""
    from .. import methods

    overrides = dict(overrides or {})
    if method == VANILLA:
        if overrides:
            raise ValueError(f"method 'vanilla' (no compression) takes no config fields, got {', '.join(overrides)}")
        if retention is not None and float(retention) != 1.0:
            raise ValueError(f"method 'vanilla' is retention 1, got retention={retention}")
        return None, None
    m = methods.get(method)
    names = [f.name for f in dataclasses.fields(m.config_cls)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise ValueError(f"method {method!r} ({m.config_cls.__name__}) has no field {', '.join(map(repr, unknown))}; "
                         f"its fields: {', '.join(names)}")
    values = {k: parse_field(m.config_cls, k, v) for k, v in overrides.items()}
    if retention is not None:
        values["retention"] = parse_field(m.config_cls, "retention", retention)
    return m, m.config(**values)


def config_dict(config) -> dict:
    """A config as plain JSON values (tuples as lists); {} for vanilla."""
    if config is None:
        return {}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def pad_token_id(model) -> int:
    for src in (getattr(model, "generation_config", None), getattr(model.config, "text_config", None), model.config):
        pad = getattr(src, "pad_token_id", None) if src is not None else None
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        if isinstance(pad, int):
            return pad
    return 0


# per-token inputs, left-padded with this value (the Qwen processors give mm_token_type_ids: 0 is text)
_PER_TOKEN = {"attention_mask": 0, "mm_token_type_ids": 0}


def collate(items: list[dict], pad_id: int) -> dict:
    """One batch from per-video processor outputs (each with batch size 1): ``input_ids``,
    ``attention_mask`` (and Qwen2.5-VL's ``mm_token_type_ids``) left-padded, every other tensor
    concatenated (LLaVA: same frames per video; Qwen2.5-VL's flattened patches may differ in number)."""
    keys = set(items[0])
    if any(set(it) != keys for it in items):
        raise ValueError("inputs of one batch must carry the same keys")
    length = max(it["input_ids"].shape[1] for it in items)
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if key == "input_ids" or key in _PER_TOKEN:
            fill = pad_id if key == "input_ids" else _PER_TOKEN[key]
            out[key] = torch.cat([torch.cat([torch.full((1, length - v.shape[1]), fill, dtype=v.dtype), v], 1)
                                  for v in vals])
        elif isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape[1:]) for v in vals}
            if len(shapes) > 1:
                raise ValueError(f"{key}: shapes differ within a batch ({sorted(shapes)}); use batch size 1")
            out[key] = torch.cat(vals)
        else:
            raise ValueError(f"cannot batch input {key!r} of type {type(vals[0]).__name__}")
    if "attention_mask" not in out:
        out["attention_mask"] = (out["input_ids"] != pad_id).long()
    return out


def sub_batches(model, method, items: list[dict]) -> list[list[int]]:
    """Indices of ``items`` (per-video processor outputs) to run as one ``generate`` call each. One
    group for every method but the in-LLM ones (FastV, PDrop), which need the same number of video
    tokens in every row: their items are grouped by placeholder count, in order of first
    appearance (Qwen2.5-VL videos of different frame sizes then run apart)."""
    if method is None or not getattr(method, "in_llm", False):
        return [list(range(len(items)))]
    groups: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(int((it["input_ids"] == model.config.video_token_id).sum()), []).append(i)
    return list(groups.values())


@dataclass
class Generated:
    texts: list[str]
    new_tokens: list[int]  # generated tokens per row (padding after an early stop not counted)
    visual_tokens: list[int]  # video tokens the LLM received per row (newlines included); in-LLM methods
    # (FastV, PDrop): those its layers after the last pruning stage (and the decoding steps) see
    visual_tokens_in: list[int]  # the processor's video placeholders per row (what enters the LLM unpatched)
    prompt_tokens: list[int]  # prompt length the LLM received per row
    seconds: float  # wall time of the whole generate call (batch)
    last: dict  # model._aot.last ({} for vanilla)


def generate_batch(model, inputs: dict, decode, *, method=None, config=None, gen_kwargs: dict | None = None,
                   video_layout: str = "onevision", positions: str = "contiguous",
                   layers: tuple[int, int] | None = None) -> Generated:
    """``model.generate`` on a batch, patched with (method, config) for the call (None: unpatched).
    ``layers`` None: the model family's default score layers (``aot.families.patch_options``)."""
    from ..families import patch_options
    from ..models.patch import patch, unpatch

    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if inputs.get("pixel_values_videos") is not None:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    gen = {"max_new_tokens": 16, "do_sample": False, **(gen_kwargs or {})}
    ids = inputs["input_ids"]
    placeholders = (ids == model.config.video_token_id).sum(1).tolist()
    lengths = inputs["attention_mask"].sum(1).tolist()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if method is not None:
        patch(model, config, method=method.name,
              **patch_options(model, video_layout=video_layout, positions=positions, layers=layers))
    try:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, **gen)
        sync()
        seconds = time.perf_counter() - t0
        last = dict(model._aot.last) if method is not None else {}
    finally:
        if method is not None:
            unpatch(model)
    new = out[:, ids.shape[1]:]
    pad = pad_token_id(model)
    texts = [decode(row) for row in new]
    new_tokens = [int((row != pad).sum()) for row in new]
    if method is None:
        visual = [int(p) for p in placeholders]
    else:
        visual = [int(v) for v in last["llm_video_tokens"]]
        if len(visual) != len(placeholders):
            raise ValueError("one video per prompt is supported in a batch")
    prompt = [int(n - p + v) for n, p, v in zip(lengths, placeholders, visual)]
    return Generated(texts, new_tokens, visual, [int(p) for p in placeholders], prompt, seconds, last)
