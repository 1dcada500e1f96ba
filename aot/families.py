"""The model families aot runs: one table read by ``aot.patch``, ``aot run``, ``aot eval`` and the
lmms-eval models, so that a family is added in one place.

A :class:`Family` says which transformers classes it covers (and the config ``model_type`` of
each), which adapter patches them (``aot.models.<adapter>``), its lmms-eval model, how ``aot run``
writes a video into a prompt without a chat template, its default score layers (or that its
adapter derives them from the vision tower), when a method's budget can be checked, whether the
processor wants the sampled frames' metadata, which patch options it accepts and what it refuses.

Pure Python: nothing here imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "FAMILIES", "LLAVA", "QWEN", "QWEN3_VL", "QWEN3_5", "get", "of_model", "of_class",
           "of_config", "adapters", "lmms_models", "patch_options", "family_options", "refusal"]

LLAVA, QWEN, QWEN3_VL, QWEN3_5 = "llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_5"


@dataclass(frozen=True)
class Family:
    name: str  # the family's key (also its main config model_type)
    label: str  # for messages and tables
    classes: tuple[str, ...]  # transformers model classes, in the order of ``model_types``
    model_types: tuple[str, ...]  # config.json model_type of each class
    adapter: str  # aot.models.<adapter> patches every class of the family
    lmms_model: str  # lmms-eval model name
    lmms_class: str  # its class in aot.eval.lmms_plugin
    video_block: str  # "llava": "<video>\n" before the question; "qwen": vision start + video token + end
    layout_options: bool  # accepts video_layout / positions (LLaVA-Video's layout, original positions)
    default_layers: tuple[int, int] | None  # (local, global) score layers; None: the adapter's rule
    layers_rule: str  # the default in words (help texts)
    budget: str  # "config": tokens per frame known from config.json before the weights load;
    # "grid": from the processor's video_grid_thw after preprocessing (depends on the frame size)
    video_metadata: bool  # pass the sampled frames' fps and indices to the processor
    conv_templates: tuple[str, ...]  # lmms-eval prompt choices, the first the default
    refuses: tuple[tuple[str, str], ...] = ()  # (method stage, why): methods of that stage are refused
    transformers: str = ">=5.24,<6"  # the range the adapter was verified on (docs/models.md)

    def class_for(self, model_type: str | None, architectures=()) -> str:
        """The class a checkpoint loads as: one named in ``architectures``, else its model_type's."""
        for arch in architectures or ():
            if arch in self.classes:
                return arch
        if model_type in self.model_types:
            return self.classes[self.model_types.index(model_type)]
        return self.classes[0]


_HYBRID = ("its text model is hybrid: Gated DeltaNet linear-attention layers (3 of every 4) keep a recurrent "
           "state over every token, so dropping visual tokens inside the language model changes the state "
           "every later token reads; use a pre-LLM method (e.g. aot.AOTConfig)")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(LLAVA, "LLaVA-OneVision / LLaVA-Video", ("LlavaOnevisionForConditionalGeneration",), ("llava_onevision",),
           "llava_onevision", "aot_llava_onevision", "AOTLlavaOneVision", "llava", True, (5, -2),
           "LLaVA 5,-2 (the paper's authors' code)", "config", False, ("qwen_1_5", "chat_template")),
    Family(QWEN, "Qwen2.5-VL", ("Qwen2_5_VLForConditionalGeneration",), ("qwen2_5_vl",), "qwen2_5_vl",
           "aot_qwen2_5_vl", "AOTQwen2_5_VL", "qwen", False, None,
           "Qwen2.5-VL: the first and last full-attention block, 7,31 for 3B/7B", "grid", True, ("chat_template",)),
    Family(QWEN3_VL, "Qwen3-VL", ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
           ("qwen3_vl", "qwen3_vl_moe"), "qwen3_vl", "aot_qwen3_vl", "AOTQwen3VL", "qwen", False, None,
           "Qwen3-VL: the first DeepStack block and the last block, 8,26 for 8B", "grid", True, ("chat_template",),
           transformers=">=5.25,<6"),
    Family(QWEN3_5, "Qwen3.5", ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"),
           ("qwen3_5", "qwen3_5_moe"), "qwen3_5", "aot_qwen3_5", "AOTQwen3_5", "qwen", False, None,
           "Qwen3.5: block depth // 3 - 1 and the last block, 8,26 of 27", "grid", True, ("chat_template",),
           refuses=(("llm", _HYBRID),), transformers=">=5.25,<6"),
)}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def of_class(class_name: str) -> Family | None:
    """The family of a transformers class name, None if no family has it."""
    return next((f for f in FAMILIES.values() if class_name in f.classes), None)


def _supported() -> str:
    return ", ".join(c for f in FAMILIES.values() for c in f.classes)


def of_model(model) -> Family:
    """The family of a loaded model (by its class or a base class, as ``aot.patch`` dispatches)."""
    for cls in type(model).__mro__:
        fam = of_class(cls.__name__)
        if fam is not None:
            return fam
    raise TypeError(f"{type(model).__name__} is not a model aot runs; supported: {_supported()}")


def of_config(model_type: str | None, architectures=()) -> Family:
    """The family of a checkpoint from its config's ``architectures`` or ``model_type``."""
    for fam in FAMILIES.values():
        if any(a in fam.classes for a in architectures or ()) or model_type in fam.model_types:
            return fam
    raise ValueError(f"a {', '.join(architectures or [str(model_type)])} checkpoint; aot supports {_supported()}")


def adapters() -> dict[str, str]:
    """transformers class name -> adapter module, for ``aot.patch``."""
    return {c: f"aot.models.{f.adapter}" for f in FAMILIES.values() for c in f.classes}


def lmms_models() -> dict[str, str]:
    """lmms-eval model name -> class path."""
    return {f.lmms_model: f"aot.eval.lmms_plugin.{f.lmms_class}" for f in FAMILIES.values()}


def refusal(fam: Family, stage: str) -> str | None:
    """Why ``fam`` refuses methods of ``stage`` ("pre-llm" / "llm"), None if it runs them."""
    return dict(fam.refuses).get(stage)


def family_options(fam: str | Family, *, video_layout: str = "onevision", positions: str = "contiguous",
                   layers: tuple[int, int] | None = None) -> dict:
    """The ``aot.patch`` options of a family from the runners' flags (layers None: the default); a
    layout or positions flag the family does not take is a ValueError saying why, before any loading."""
    fam = get(fam) if isinstance(fam, str) else fam
    if fam.layout_options:
        local, deep = layers if layers is not None else fam.default_layers
        return {"video_layout": video_layout, "positions": positions, "local_layer": local, "global_layer": deep}
    if video_layout != "onevision":
        raise ValueError(f"video layout {video_layout!r} is for LLaVA-Video checkpoints; a {fam.label} model keeps "
                         f"its own layout (leave the video layout at its default, onevision)")
    if positions != "contiguous":
        raise ValueError(f"positions {positions!r} is for LLaVA checkpoints; a {fam.label} model keeps the 3-D "
                         f"M-RoPE ids of the uncompressed prompt (leave positions at its default, contiguous)")
    if layers is None:
        layers = fam.default_layers
    return {} if layers is None else {"local_layer": layers[0], "global_layer": layers[1]}


def patch_options(model, *, video_layout: str = "onevision", positions: str = "contiguous",
                  layers: tuple[int, int] | None = None) -> dict:
    """:func:`family_options` for a loaded model."""
    return family_options(of_model(model), video_layout=video_layout, positions=positions, layers=layers)
