"""What every model adapter's patch shares: the patch state, the forward pre-hook and generate
wrapper around the adapter's rewrite of a video call, the method and transformers checks, call
arguments, the prompt given back by generate, stage timers, the pad token. Pure torch; each adapter
(one file per model family) supplies its rewrite and uses these."""

from __future__ import annotations

import inspect
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .inllm_patch import announce, wants_pruning
from .scores import _check_max_bytes

__all__ = ["PatchState", "resolve_method", "missing_members", "install", "uninstall", "forward_kwargs",
           "generate_kwargs", "give_back_prompt", "timer", "pad_token_id"]


@dataclass
class PatchState:
    """Everything aot.patch keeps on a model (``model._aot``); an adapter subclasses it for its own options."""

    method: Any  # aot.methods.Method
    config: Any  # the method's frozen config
    local_layer: int  # vision layers whose attention scores the anchors
    global_layer: int
    chunk: int | None  # query chunk of the score hooks
    handle: Any = None  # the forward pre-hook
    pruner: Any = None  # in-LLM methods: aot.models.inllm.InLLMPruner on the language model's layers
    llm_handles: list = field(default_factory=list)  # in-LLM methods: hooks on the language model and tower
    pending: Any = None  # in-LLM methods: (visual, query, stages) of the prefill about to reach the language model
    video_token_id: int | None = None  # in-LLM methods: which input ids are the video's tokens
    had_generate: bool = False  # an instance attribute `generate` existed before patching
    old_generate: Any = None
    last: dict = field(default_factory=dict)  # what the last compression did: token counts, times (s)
    score_bytes: int | None = None  # logits buffer of the score hooks (None: device-aware, see scores.py)

    def __post_init__(self) -> None:
        _check_max_bytes(self.score_bytes, "score_bytes")  # before anything is installed on the model


def uses_local_scores(state: PatchState) -> bool:
    """Whether the patched method reads the shallow block's scores (``Method.reads_local_scores``: AOT
    with global_share < 1, no longer the default); else the adapters hook one score block, not two."""
    return state.method is not None and state.config is not None and state.method.reads_local_scores(state.config)


def resolve_method(model: nn.Module, config, method: str | None):
    """The registry Method that ``config`` (or the name ``method``) selects, after refusing a model that
    is already patched and a config of another method."""
    from .. import methods

    if getattr(model, "_aot", None) is not None:
        raise ValueError("this model is already patched; call aot.unpatch(model) first")
    m = methods.get(method) if method is not None else methods.for_config(config)
    if not isinstance(config, m.config_cls):
        raise TypeError(f"method {m.name!r} takes a {m.config_cls.__name__}, got {type(config).__name__}")
    return m


def missing_members(module, relied_on: dict[str, tuple[str, ...]]) -> list[str]:
    """Which of ``relied_on`` ({"Class.method": (argument, ...)}) ``module`` lacks: "Class.method"
    for a missing method, "Class.method(argument)" for a missing argument."""
    missing = []
    for qual, args in relied_on.items():
        cls_name, meth = qual.split(".")
        fn = getattr(getattr(module, cls_name, None), meth, None)
        if fn is None:
            missing.append(qual)
            continue
        params = inspect.signature(fn).parameters
        missing += [f"{qual}({a})" for a in args if a not in params]
    return missing


Rewrite = Callable[[nn.Module, dict, bool], dict]  # (model, call kwargs, for_generate) -> kwargs for the model


def install(model: nn.Module, state: PatchState, rewrite: Rewrite) -> None:
    """Patch ``model`` in place: a forward pre-hook (module hooks run before accelerate's replaced
    forward, so device_map/offload hooks keep working) and an instance ``generate`` that pass every
    call carrying ``pixel_values_videos`` through ``rewrite`` (pre-LLM methods) or announce the
    prefill to the pruner (in-LLM methods, ``state.pruner`` set), ``state`` as ``model._aot``.
    ``state`` gets ``handle``, ``had_generate`` and ``old_generate`` (the generate to call and to restore)."""
    state.had_generate = "generate" in model.__dict__
    state.old_generate = model.generate
    state.handle = model.register_forward_pre_hook(partial(_pre_hook, rewrite), with_kwargs=True)
    model.generate = types.MethodType(partial(_generate, rewrite), model)
    model._aot = state


def _pre_hook(rewrite: Rewrite, module: nn.Module, args: tuple, kwargs: dict):
    kwargs = forward_kwargs(module, args, kwargs)
    state: PatchState = module._aot
    if state.pruner is not None:  # in-LLM: announce the prefill, the model runs as it is
        state.pending = None
        # generate (transformers 5) encodes the video once and passes it as mm_encoder_outputs["video"]
        if wants_pruning(kwargs):
            announce(state, kwargs)
        return ((), kwargs) if args else None
    if kwargs.get("pixel_values_videos") is None:
        return ((), kwargs) if args else None
    if kwargs.get("labels") is not None:
        raise NotImplementedError("labels with a compressing model: compression changes the sequence "
                                  "length, so labels no longer line up; compute the loss unpatched")
    return (), rewrite(module, kwargs, False)


def _generate(rewrite: Rewrite, self: nn.Module, *args, **kwargs):
    state: PatchState = self._aot
    args, kwargs = generate_kwargs(args, kwargs)
    if kwargs.get("pixel_values_videos") is None or state.pruner is not None:
        return state.old_generate(*args, **kwargs)  # in-LLM methods: the hooks do it all, call by call
    original_ids = kwargs["input_ids"]
    new = rewrite(self, kwargs, True)
    return give_back_prompt(state.old_generate(*args, **new), original_ids, new["input_ids"].shape[1])


def uninstall(model: nn.Module):
    """Undo :func:`install`; returns the state, for the adapter's own clean-up."""
    state = getattr(model, "_aot", None)
    if state is None:
        raise ValueError("this model is not patched by aot")
    state.handle.remove()
    if state.had_generate:
        model.generate = state.old_generate
    else:
        del model.generate
    del model._aot
    return state


def forward_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A forward's positional arguments as keywords, so a pre-hook's rewrite sees them by name."""
    if not args:
        return kwargs
    names = list(inspect.signature(module.forward).parameters)
    return {**dict(zip(names, args)), **kwargs}


def generate_kwargs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``generate(inputs, ...)``: the first positional argument is the input_ids."""
    if args:
        return args[1:], {"input_ids": args[0], **kwargs}
    return args, kwargs


def give_back_prompt(out, original_ids: Tensor, cut: int):
    """generate's output (a tensor or a GenerateOutput) with the caller's prompt in front of the new
    tokens instead of the shortened one (``cut`` columns), so ``out[:, input_ids.shape[1]:]`` still
    gives the new tokens; with num_return_sequences each prompt is repeated in place."""
    seq = out if isinstance(out, Tensor) else out.sequences
    prompt = original_ids.to(seq.device).repeat_interleave(seq.shape[0] // original_ids.shape[0], dim=0)
    seq = torch.cat([prompt, seq[:, cut:]], dim=1)
    if isinstance(out, Tensor):
        return seq
    out.sequences = seq
    return out


@contextmanager
def timer(times: dict, key: str, device):
    """Adds the block's wall time (s) to ``times[key]``, synchronising CUDA around it."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    try:
        yield
    finally:
        sync()
        times[key] = times.get(key, 0.0) + time.perf_counter() - start


def pad_token_id(model) -> int:
    """The id to pad re-padded prompt rows with (masked out, so any id works; the model's if set)."""
    for src in (getattr(model, "generation_config", None), getattr(model.config, "text_config", None), model.config):
        pad = getattr(src, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
        if isinstance(pad, (list, tuple)) and pad:
            return int(pad[0])
    return 0


@dataclass
class VideoCall:
    """The video arguments of one Qwen-family call, popped from its kwargs and checked
    (``take_video_call``). grids: per video (t, h, w) on the LLM grid (t temporal slices)."""

    pixels: Tensor
    thw: Tensor  # (V, 3) the processor's video_grid_thw
    types: Tensor | None  # mm_token_type_ids, None when the caller gave none
    mm: dict  # mm_encoder_outputs without a video entry
    input_ids: Tensor
    grids: list[tuple[int, int, int]]


def take_video_call(state: PatchState, inner: nn.Module, kwargs: dict, label: str) -> VideoCall:
    """Pop the video arguments a Qwen-family rewrite replaces from ``kwargs`` (changed in place), refuse
    what cannot be shortened (mm_encoder_outputs' video, no grid, no input_ids, position_ids, a
    continued cache) and check every video's budget and clip length before the tower runs. ``label``
    names the family in messages (its temporal slices are 2 frames each)."""
    pixels = kwargs.pop("pixel_values_videos")
    thw = kwargs.pop("video_grid_thw", None)
    types_ = kwargs.pop("mm_token_type_ids", None)
    mm = dict(kwargs.pop("mm_encoder_outputs", None) or {})
    if mm.get("video") is not None:
        raise ValueError("pass either pixel_values_videos or mm_encoder_outputs['video'], not both")
    if thw is None:
        raise ValueError("pixel_values_videos needs video_grid_thw (pass the processor's output unchanged)")
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("a compressing model needs input_ids with the processor's video placeholders "
                         "(inputs_embeds alone cannot be shortened)")
    if kwargs.get("position_ids") is not None:
        raise ValueError("do not pass position_ids with a video: aot computes them for the shortened prompt")
    if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        raise NotImplementedError("a video in a call that continues a cache: start from the prompt")
    merge = inner.visual.spatial_merge_size
    grids = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in thw.tolist()]
    clip = getattr(state.config, "clip_length", None)
    for v, (t, h, w) in enumerate(grids):  # infeasible budgets fail before the tower runs
        if isinstance(clip, int) and clip > t:
            raise ValueError(f"video {v} has {t} temporal slices ({2 * t} frames; AOT's frames are {label}'s "
                             f"slices of 2 frames), fewer than the clip length of {clip} asked for; "
                             f"use clip_length <= {t} or a longer video")
        state.method.check(state.config, t, h * w)
    return VideoCall(pixels, thw, types_, mm, input_ids, grids)

