"""Qwen3.5 (``Qwen3_5ForConditionalGeneration``, ``Qwen3_5MoeForConditionalGeneration``) in ``aot.patch``.

Qwen3.5 carries Qwen3-VL's vision tower without DeepStack and its processor (timestamped slices,
interleaved 3-D M-RoPE from ``get_rope_index``), so the pre-LLM path is Qwen3-VL's, in
``aot.models.qwen3_vl`` (the class table there says what differs: no DeepStack levels to reduce,
FastV/PDrop refused because the hybrid text model's Gated DeltaNet layers keep a recurrent state over
every token). This module is the family's entry in ``aot.models.patch.SUPPORTED``.
"""

from __future__ import annotations

from .qwen3_vl import check_transformers, default_layers, patch, unpatch  # noqa: F401

__all__ = ["patch", "unpatch", "check_transformers", "default_layers"]
