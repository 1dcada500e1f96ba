"""FastV/PDrop through ``aot.patch``: the hooks an adapter puts around its language model.

``attach(state, language_model, vision_tower, video_token_id)`` puts an ``InLLMPruner`` on the
language model's decoder layers (``state.pruner``), a pre-hook on the language model that hands it
the prefill announced by ``announce`` and a hook after it that files the report in ``state.last``,
and two hooks that time the vision tower. The adapter's own forward pre-hook calls
``announce(state, kwargs)`` for every call that carries a video; the model then runs unchanged
(the video reaches the language model whole and is pruned inside it). ``detach(state)`` undoes it.

``state``: the adapter's PatchState, with ``method``, ``config``, ``pruner``, ``llm_handles``,
``pending`` and ``last``. Pure torch (the pruner imports transformers only to check the cache).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .inllm import InLLMPruner, last_prompt_token

__all__ = ["attach", "detach", "announce", "wants_pruning"]


def wants_pruning(kwargs: dict) -> bool:
    """Whether a forward call carries a video (pixels, or generate's pre-encoded outputs)."""
    return (kwargs.get("pixel_values_videos") is not None
            or (kwargs.get("mm_encoder_outputs") or {}).get("video") is not None)


def attach(state, language_model: nn.Module, vision_tower: nn.Module, video_token_id: int, rope=None) -> None:
    """Hooks on ``language_model`` (its ``layers`` are pruned) and ``vision_tower`` (timed); raises a
    ValueError, with nothing attached, if the method's schedule does not fit the model's layers."""
    n_layers = len(language_model.layers)
    state.method.schedule(state.config, 1, n_layers)  # the layers fit this model: fail at patch time
    state.pruner = InLLMPruner(language_model.layers, rope=rope)
    state.video_token_id = video_token_id
    tower = {"seconds": 0.0, "start": None}  # the vision tower's time since the last pruned prefill

    def start(_module, _args, _kwargs):
        if state.pending is not None:
            visual, query, stages = state.pending
            state.pending = None
            state.pruner.expect(visual, query, stages)

    def tower_start(module, _args):
        _sync(module)
        tower["start"] = time.perf_counter()

    def tower_end(module, _args, _output):
        if tower["start"] is not None:
            _sync(module)
            tower["seconds"] += time.perf_counter() - tower["start"]
            tower["start"] = None

    def finish(_module, _args, _kwargs, _output):
        if state.pruner.plan is None:
            return
        state.pruner.done()
        vision, tower["seconds"] = tower["seconds"], 0.0
        state.last = _report(state.method.name, state.pruner.last, vision)

    state.llm_handles = [language_model.register_forward_pre_hook(start, with_kwargs=True),
                         language_model.register_forward_hook(finish, with_kwargs=True, always_call=True),
                         vision_tower.register_forward_pre_hook(tower_start),
                         vision_tower.register_forward_hook(tower_end)]


def detach(state) -> None:
    for h in state.llm_handles:
        h.remove()
    state.llm_handles = []
    if state.pruner is not None:
        state.pruner.remove()
        state.pruner = None


def announce(state, kwargs: dict) -> None:
    """A call with a video: tell the pruner which positions are video tokens (input_ids (B, L) equal
    to the video token id) and which token ranks (each row's last real token)."""
    if kwargs.get("labels") is not None:
        raise NotImplementedError("labels with an in-LLM pruning model: the pruned positions have no "
                                  "logits; compute the loss unpatched")
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("in-LLM pruning needs input_ids with the processor's video placeholders "
                         "(inputs_embeds alone do not say which tokens are the video's)")
    visual = input_ids == state.video_token_id
    query = last_prompt_token(kwargs.get("attention_mask"), tuple(input_ids.shape), input_ids.device)
    stages = state.method.schedule(state.config, int(visual.sum(1).max()), len(state.pruner.layers))
    state.pending = (visual, query, stages)


def _report(name: str, rep: dict, vision_seconds: float) -> dict:
    """``model._aot.last`` of a pruned prefill. ``llm_video_tokens``: per row of the batch, the video
    tokens left after the last stage (all of a row's videos together)."""
    counts = [c for _, c in rep["stages"]]
    out = counts[-1] if counts else rep["visual_tokens"]
    return {"method": name, "stage": "llm", "tokens_in": rep["visual_tokens"], "tokens_out": out,
            "schedule": rep["stages"], "times": {"vision": vision_seconds, "compress": rep["seconds"]},
            "llm_video_tokens": [out] * rep["batch"],  # the prompt reaches the LLM whole
            "prompt_length_in": rep["length"], "prompt_length_out": rep["length"] - rep["visual_tokens"] + out}


def _sync(module: nn.Module) -> None:
    p = next(module.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)
