"""``aot.patch`` / ``aot.unpatch``: dispatch to the adapter of a model's family.

Nothing here imports transformers; the adapter module is imported when a model of its family is
patched. Supported classes are listed in ``SUPPORTED``.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..families import adapters

__all__ = ["patch", "unpatch", "SUPPORTED"]

# model class name -> adapter module (one file per model family), from the family table
SUPPORTED = adapters()


def _adapter(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"aot.patch takes a loaded model (torch.nn.Module), got {type(model).__name__}")
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED:
            return importlib.import_module(SUPPORTED[cls.__name__])
    raise TypeError(f"aot.patch does not support {type(model).__name__}; supported model classes: "
                    f"{', '.join(SUPPORTED)} (LLaVA-OneVision and LLaVA-Video checkpoints load as "
                    f"LlavaOnevisionForConditionalGeneration; each Qwen checkpoint as its own class)")


def patch(model: nn.Module, config, **options) -> nn.Module:
    """Make ``model`` compress the visual tokens of every video it is given, with ``config``'s method.

    ``config``: any registered method's config (``aot.AOTConfig(retention=0.1)``,
    ``aot.methods.get("visionzip").config(retention=0.1)``, ...). After the call, plain usage is
    unchanged: ``model.generate(**processor(text=..., videos=..., return_tensors="pt"))`` and
    ``model(**inputs)``. Options (LLaVA-OneVision): ``method`` (a registry name, when the config
    class alone does not say), ``video_layout`` ("onevision" | "llava-video"), ``positions``
    ("contiguous" | "original"), ``local_layer`` (5) and ``global_layer`` (-2) of the vision tower
    that score the anchors, ``chunk`` (queries per score chunk) and ``score_bytes`` (the score
    hooks' logits buffer in bytes; default: ``chunk``'s on the CPU, 256 MiB on a GPU; see
    ``aot.models.scores.attention_received``). ``model._aot.last`` reports what the last call did
    (token counts, stage times). Qwen2.5-VL: ``method``, ``local_layer`` / ``global_layer``
    (default: the first and last of the tower's ``fullatt_block_indexes``), ``chunk`` and
    ``score_bytes``; positions are its own 3-D M-RoPE, gathered for the kept tokens. Qwen3-VL / Qwen3.5
    (dense and MoE): the same options (``aot.models.qwen3_vl``: timestamps kept, pads shrink per
    temporal slice, DeepStack levels reduced with the method's mix). In-LLM methods
    (``aot.methods.get("fastv")``/``"pdrop"`` configs): the video reaches the language model whole
    and is pruned inside it (``aot.models.inllm``); Qwen3.5 refuses them (its linear-attention layers
    keep a recurrent state over every token; ``aot.families``). Returns the model.
    """
    return _adapter(model).patch(model, config, **options)


def unpatch(model: nn.Module) -> nn.Module:
    """Undo ``aot.patch``: the model behaves exactly as before it was patched."""
    return _adapter(model).unpatch(model)
