"""What every model adapter's patch shares: call arguments, the prompt given back by generate,
stage timers, the pad token. Pure torch; each adapter (one file per model family) uses these."""

from __future__ import annotations

import inspect
import time
import types
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["install", "uninstall", "forward_kwargs", "generate_kwargs", "give_back_prompt", "timer", "pad_token_id"]


def install(model: nn.Module, state, pre_hook, generate) -> None:
    """Patch ``model`` in place: ``pre_hook`` as a forward pre-hook (module hooks run before
    accelerate's replaced forward, so device_map/offload hooks keep working), ``generate`` as an
    instance method, ``state`` as ``model._aot``. ``state`` gets ``handle``, ``had_generate`` and
    ``old_generate`` (the generate to call and to restore)."""
    state.had_generate = "generate" in model.__dict__
    state.old_generate = model.generate
    state.handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    model.generate = types.MethodType(generate, model)
    model._aot = state


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
