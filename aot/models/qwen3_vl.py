"""AOT (or any registered method) inside transformers' Qwen3-VL (dense and MoE) and, through
``aot.models.qwen3_5``, Qwen3.5 (dense and MoE).

    model = Qwen3VLForConditionalGeneration.from_pretrained(...)
    aot.patch(model, aot.AOTConfig(retention=0.1))
    inputs = processor(text=prompt, videos=frames, return_tensors="pt")
    out = model.generate(**inputs)          # unchanged usage; out starts with inputs["input_ids"]

How (transformers 5.25, read in ``models/qwen3_vl``, ``qwen3_vl_moe``, ``qwen3_5``, ``qwen3_5_moe``;
the members relied on are checked in ``check_transformers``): every call that carries
``pixel_values_videos`` is rewritten before the model sees it, by a forward pre-hook and a wrapper of
the instance's ``generate`` (``aot.models.patching``), as for Qwen2.5-VL:

* Layout. The processor writes a video of t temporal slices (2 frames each) as t blocks
  ``<{s:.1f} seconds><|vision_start|>`` + h * w ``<|video_pad|>`` + ``<|vision_end|>``. Only the pads
  change: slice f's run of h * w pads becomes the tokens the method kept in slice f (a clip anchor
  sits in its clip's first slice, a kept token in its own), in (row, column) order; every timestamp
  and start/end marker stays where it is. A slice may keep no token: its block is then
  ``<s seconds><|vision_start|><|vision_end|>`` (the exact budget is spread by the method, not by
  slice; the markers and the timestamp keep the time axis readable and the positions of what follows
  unchanged).
* The tower runs once (``get_video_features``) while two blocks are scored by hooks (no windows in
  this tower: every block attends within its temporal slice; no eager attention, no stored map); a
  merge group's score is the mean of its 4 patches, normalised per slice.
* AOT's "frames" are the slices and the grid is (h / 2, w / 2); each video is compressed on its own
  grid. The compressed tokens go in as ``mm_encoder_outputs={"video": ...}``.
* DeepStack (Qwen3-VL): every ``deepstack_features`` level (the merged output of a
  ``deepstack_visual_indexes`` block, added to the text model's hidden states at the visual positions
  after its first layers) is reduced with the method's own selection and merge weights
  (``Compressed.reduce``), so a token that absorbed inputs with weights w carries the same weighted
  merge of every level; ``visual_pos_masks`` is the model's own (the shortened prompt's pads).
* Positions: interleaved 3-D M-RoPE of the *uncompressed* prompt from the model's own
  ``get_rope_index`` (which splits each video into slices of t = 1), gathered for the kept tokens;
  text keeps its own; decoding continues where the uncompressed prompt would (``rope_deltas``).

In-LLM methods (FastV, PDrop) on Qwen3-VL: the video reaches the text decoder whole and
``aot.models.inllm.InLLMPruner`` prunes inside it (q_norm / k_norm applied as the attention does);
the DeepStack injections after the first layers go to the visual positions that remain after a
pruning layer. Qwen3.5 refuses them: its Gated DeltaNet layers (3 of every 4) carry a recurrent state
over every token, so dropping tokens part-way changes the state every later token reads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .inllm import rotate_half_rope
from .inllm_patch import attach, detach
from .patching import (PatchState, install, missing_members, pad_token_id, resolve_method, take_video_call, timer,
                       uninstall)
from .qwen2_5_vl import hook_score_blocks, score_hook  # noqa: F401 (score_hook: also reached as qwen3_vl.score_hook)
from .splice import VideoSlots, gather_positions, placeholder_blocks, splice_prompt

__all__ = ["patch", "unpatch", "check_transformers", "default_layers", "ClassInfo", "CLASSES", "deepstack_at",
           "llm_grid_scores", "reduce_levels"]


@dataclass(frozen=True)
class ClassInfo:
    """Where one transformers class this adapter patches keeps what the adapter uses (the family's
    own entry, what it refuses included, is in ``aot.families``)."""

    label: str  # for messages
    module: str  # transformers module of the modeling file
    prefix: str  # class-name prefix in that module
    deepstack: bool  # the tower returns deepstack_features


CLASSES = {
    "Qwen3VLForConditionalGeneration": ClassInfo("Qwen3-VL", "transformers.models.qwen3_vl.modeling_qwen3_vl",
                                                 "Qwen3VL", True),
    "Qwen3VLMoeForConditionalGeneration": ClassInfo("Qwen3-VL-MoE",
                                                    "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe",
                                                    "Qwen3VLMoe", True),
    "Qwen3_5ForConditionalGeneration": ClassInfo("Qwen3.5", "transformers.models.qwen3_5.modeling_qwen3_5",
                                                 "Qwen3_5", False),
    "Qwen3_5MoeForConditionalGeneration": ClassInfo("Qwen3.5-MoE", "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
                                                    "Qwen3_5Moe", False),
}


def _relied_on(prefix: str) -> dict[str, tuple[str, ...]]:
    return {
        f"{prefix}Model.get_video_features": ("pixel_values_videos", "video_grid_thw"),
        f"{prefix}Model.get_image_features": ("pixel_values", "image_grid_thw"),
        f"{prefix}Model.get_rope_index": ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw",
                                          "attention_mask"),
        f"{prefix}Model.forward": ("input_ids", "attention_mask", "position_ids", "mm_encoder_outputs"),
        f"{prefix}ForConditionalGeneration.forward": ("input_ids", "pixel_values_videos", "video_grid_thw",
                                                      "attention_mask", "position_ids", "mm_encoder_outputs",
                                                      "mm_token_type_ids"),
        f"{prefix}VisionAttention.forward": ("hidden_states", "cu_seqlens", "position_embeddings"),
    }


def _class_name(model) -> str:
    for cls in type(model).__mro__:
        if cls.__name__ in CLASSES:
            return cls.__name__
    raise TypeError(f"expected one of {', '.join(CLASSES)}, got {type(model).__name__}")


def _family(model) -> ClassInfo:
    return CLASSES[_class_name(model)]


def check_transformers(family: str = "Qwen3VLForConditionalGeneration") -> None:
    """Raise an ImportError naming what is missing if the installed transformers lacks a class, method,
    argument or helper this adapter relies on for ``family`` (a model class name; verified on 5.25)."""
    import transformers

    fam = CLASSES[family]
    try:
        mod = importlib.import_module(fam.module)
    except ImportError:
        raise ImportError(f"transformers {transformers.__version__} has no {fam.module} ({fam.label}); "
                          f"install transformers>=5.25,<6") from None
    missing = missing_members(mod, _relied_on(fam.prefix))
    extra = ["apply_rotary_pos_emb_vision"] + (["BaseModelOutputWithDeepstackFeatures"] if fam.deepstack else [])
    missing += [f"{fam.module.rsplit('.', 1)[-1]}.{n}" for n in extra if getattr(mod, n, None) is None]
    if fam.deepstack and getattr(getattr(mod, f"{fam.prefix}TextModel", None), "_deepstack_process", None) is None:
        missing.append(f"{fam.prefix}TextModel._deepstack_process")
    if missing:
        raise ImportError(f"transformers {transformers.__version__} lacks what aot.patch relies on: "
                          f"{', '.join(missing)}; install transformers>=5.25,<6")


def default_layers(vision_config) -> tuple[int, int]:
    """(local, global) score blocks: local = the first DeepStack tap (``deepstack_visual_indexes[0]``,
    the shallowest block whose features the language model itself reads; 8 of 27 for Qwen3-VL-8B/32B,
    5 of 24 for 2B/4B), or block depth // 3 - 1 without taps (Qwen3.5: 8 of 27); global = the last
    block (26 of 27), whose output the merger hands the LLM. Kept by the measurement on real frames in
    ``benchmarks/qwen3_score_blocks.py`` (random towers of the real geometry: no block degenerate;
    trained DINOv2 ViT-S/14: its last block not sink-dominated, the local block's relative depth not
    a repeat of it); why in docs/models.md "Score blocks"."""
    depth = int(vision_config.depth)
    taps = sorted(int(i) for i in (getattr(vision_config, "deepstack_visual_indexes", None) or []))
    local = taps[0] if taps else max(depth // 3 - 1, 0)
    return local, depth - 1


def _block(tower: nn.Module, layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"vision layer indices must be ints, got {layer!r}")
    n = len(tower.blocks)
    if not -n <= layer < n:
        raise ValueError(f"vision layer {layer} is out of range: the tower has {n} blocks, "
                         f"so use an index in [-{n}, {n - 1}]")
    return layer % n


def patch(model: nn.Module, config, *, method: str | None = None, local_layer: int | None = None,
          global_layer: int | None = None, chunk: int | None = 256, score_bytes: int | None = None,
          **options) -> nn.Module:
    """Make a loaded Qwen3-VL / Qwen3.5 model (dense or MoE) compress its videos; see aot.patch.

    ``local_layer`` / ``global_layer``: vision blocks whose attention gives the local and global
    anchor scores (default: ``default_layers``)."""
    from .. import families

    name = _class_name(model)
    fam = CLASSES[name]
    check_transformers(name)
    if options:
        raise TypeError(f"options not supported for {fam.label}: {', '.join(sorted(options))} "
                        f"(positions are the model's own 3-D M-RoPE, gathered)")
    m = resolve_method(model, config, method)
    why = families.refusal(families.of_class(name), m.stage)
    if why is not None:
        raise ValueError(f"{m.name} prunes inside the language model, which {fam.label} does not allow: {why}")
    tower = model.model.visual
    d_local, d_global = default_layers(tower.config)
    local_layer = _block(tower, d_local if local_layer is None else local_layer)
    global_layer = _block(tower, d_global if global_layer is None else global_layer)
    state = PatchState(m, config, local_layer, global_layer, chunk, score_bytes=score_bytes)
    install(model, state, _rewrite)
    if m.in_llm:  # FastV/PDrop: the video goes in whole, the text decoder prunes it
        try:
            attach(state, model.model.language_model, tower, model.config.video_token_id, rope=rotate_half_rope)
            if fam.deepstack:
                _wrap_deepstack(model.model.language_model, state)
        except Exception:
            unpatch(model)  # nothing half-done: a schedule that does not fit leaves the model as it was
            raise
    return model


def unpatch(model: nn.Module) -> nn.Module:
    state = uninstall(model)
    detach(state)
    lm = model.model.language_model
    if "_deepstack_process" in lm.__dict__:
        del lm._deepstack_process
    model.model.rope_deltas = None
    return model


# --- in-LLM pruning: DeepStack at the remaining positions -----------------------------------------

def deepstack_at(mask: Tensor, embeds: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """The DeepStack injection of a pruned sequence: mask (B, L) bool, the visual positions of the
    unpruned prompt; embeds (V, c), one row per True of ``mask`` in row-major order; kept (B, n), the
    original positions still in the sequence. Returns (mask (B, n), embeds (V', c)): the visual
    positions among the kept ones and their rows, in the same order."""
    rank = mask.flatten().long().cumsum(0).view(mask.shape) - 1  # row of embeds of each visual position
    sub = mask.gather(1, kept)
    return sub, embeds[rank.gather(1, kept)[sub]]


def _wrap_deepstack(language_model: nn.Module, state: PatchState) -> None:
    original = language_model._deepstack_process  # bound method of the class

    def process(hidden_states, visual_pos_masks, visual_embeds):
        plan = state.pruner.plan if state.pruner is not None else None
        if plan is not None and plan.idx is not None and visual_pos_masks is not None:
            visual_pos_masks, visual_embeds = deepstack_at(visual_pos_masks.to(plan.idx.device),
                                                           visual_embeds.to(plan.idx.device), plan.idx)
        return original(hidden_states, visual_pos_masks, visual_embeds)

    language_model._deepstack_process = process


# --- DeepStack -------------------------------------------------------------------------------------

DENSE_LIMIT = 1 << 26  # R x F*N entries up to which the mix is applied as one dense matmul


def reduce_levels(out, levels: list[Tensor]) -> list[Tensor]:
    """Every DeepStack level of one video reduced with the compression's mix: ``out`` a Compressed of
    one video or a batch of one (``out.mix`` set), levels [(F * N, c_i)] aligned with its input ->
    [(R, c_i)] in each level's dtype (accumulated in float32, float64 for float64).

    The same linear map as ``out.reduce`` (``Compressed.reduce``), applied to all levels at once: as a
    dense (R, F * N) matrix times the levels side by side while R * F * N <= ``DENSE_LIMIT`` (AOT's OT
    merges give every row many inputs: at 8 x 98 tokens and 25% its mix has 33k entries, and the
    entry-by-entry path took 2.6 s for three 2048-wide levels on one CPU thread, the matmul 0.09 s),
    entry by entry beyond that."""
    from ..compress import Mix, apply_mix

    mix = out.mix
    rows, cols, weights = mix.rows.reshape(-1), mix.cols.reshape(-1), mix.weights.reshape(-1)
    r, fn = out.tokens.shape[-2], levels[0].shape[0]
    y = torch.cat(levels, -1)
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    if r * fn <= DENSE_LIMIT:
        dense = torch.zeros(r, fn, dtype=acc, device=y.device)
        dense.index_put_((rows.to(y.device), cols.to(y.device)), weights.to(y.device, acc), accumulate=True)
        z = (dense @ y.to(acc)).to(y.dtype)
    else:
        z = apply_mix(Mix(rows, cols, weights), y, r)
    return list(z.split([lv.shape[-1] for lv in levels], -1))


# --- scores ----------------------------------------------------------------------------------------

def llm_grid_scores(raw: Tensor, thw: Tensor, unit: int) -> list[Tensor]:
    """Scores of a block, (T,) over the patches in the processor's order (each merge group of ``unit``
    patches contiguous) summed over the queries of their slice -> per video (t, h * w / unit) on the
    LLM grid: a merge group's mean, divided by the slice's patch count, x unit (each slice sums to 1)."""
    groups = raw.reshape(-1, unit).mean(-1)
    out, first = [], 0
    for t, h, w in thw.tolist():
        n = t * h * w // unit
        out.append(groups[first: first + n].reshape(t, -1) / (h * w) * unit)
        first += n
    return out


# --- the rewrite -----------------------------------------------------------------------------------

def _rewrite(model: nn.Module, kwargs: dict, for_generate: bool) -> dict:
    state: PatchState = model._aot
    fam = _family(model)
    mod = importlib.import_module(fam.module)
    inner = model.model
    cfg = model.config
    kwargs = dict(kwargs)
    call = take_video_call(state, inner, kwargs, fam.label)
    pixels, thw, types_, mm, input_ids, grids = call.pixels, call.thw, call.types, call.mm, call.input_ids, call.grids
    per_slice = [h * w for t, h, w in grids for _ in range(t)]  # one run of pads per temporal slice
    attention_mask = kwargs.get("attention_mask")
    times: dict[str, float] = {}
    # the prompt first: a hand-edited prompt fails before any work
    found = int((input_ids == cfg.video_token_id).sum())
    if found != sum(per_slice):
        sizes = ", ".join(f"{t} slices x {h * w}" for t, h, w in grids)
        raise ValueError(f"the prompt holds {found} video placeholders (token id {cfg.video_token_id}) but "
                         f"{len(grids)} video(s) of {sizes} tokens need {sum(per_slice)}; let the processor expand "
                         f"the video token and do not edit its placeholders")
    placeholder_blocks(input_ids, cfg.video_token_id, per_slice, len(per_slice))  # one run per slice, in order

    # 1. the tower once, two blocks scored by hooks
    tower = inner.visual
    rec, handles = hook_score_blocks(tower, state, times, mod.apply_rotary_pos_emb_vision)
    try:
        with timer(times, "vision", pixels.device), torch.no_grad():
            enc = inner.get_video_features(pixels, thw, return_dict=True)
    finally:
        for hnd in handles:
            hnd.remove()
    times["vision"] -= times.get("scores", 0.0)
    feats = list(enc.pooler_output)  # per video (t * h * w, d), processor order
    levels = [list(lv) for lv in (getattr(enc, "deepstack_features", None) or [])] if fam.deepstack else []
    unit = tower.spatial_merge_unit
    deep = llm_grid_scores(rec["global"][0], thw, unit)
    local = llm_grid_scores(rec["local"][0], thw, unit) if rec["local"] else deep

    # 2. compress every video on its own grid; DeepStack levels with the same linear map
    tokens, stacks, slots = [], [[] for _ in levels], []
    with timer(times, "compress", pixels.device), torch.no_grad():
        for v, (t, h, w) in enumerate(grids):
            x = feats[v].reshape(1, t, h * w, -1)
            o = state.method(x, deep[v].reshape(1, t, h * w).to(x.device),
                             local_scores=local[v].reshape(1, t, h * w).to(x.device), grid=(h, w),
                             config=state.config)
            if levels and o.mix is None:
                raise ValueError(f"method {state.method.name!r} returns no mix (Compressed.mix) for this input, so "
                                 f"{fam.label}'s DeepStack features cannot be reduced with its selection and merge "
                                 f"weights; use a method that returns its mix (every registered one does)")
            for i, red in enumerate(reduce_levels(o, [lv[v] for lv in levels]) if levels else []):
                stacks[i].append(red)
            tokens.append(o.tokens[0])
            pos = o.positions[0]
            for f in range(t):  # the kept tokens of slice f, as indices into its h * w pads
                sel = pos[(pos >= f * h * w) & (pos < (f + 1) * h * w)] - f * h * w
                slots.append(VideoSlots(sel, h * w))

    # 3. the shortened prompt and its positions (gathered from the uncompressed prompt's M-RoPE)
    spliced = splice_prompt(input_ids, attention_mask, token_id=cfg.video_token_id, per_video=per_slice,
                            videos=slots, pad_token_id=pad_token_id(model))
    if types_ is None:  # the processor's mm_token_type_ids, rebuilt from the ids when not given
        types_ = (input_ids == cfg.image_token_id).int() + 2 * (input_ids == cfg.video_token_id).int()
    full_pos, full_delta = inner.get_rope_index(
        input_ids, mm_token_type_ids=types_, image_grid_thw=kwargs.get("image_grid_thw"), video_grid_thw=thw,
        attention_mask=attention_mask)
    dev = input_ids.device
    pos = gather_positions(full_pos, spliced.source).to(dev)
    new_mask = spliced.attention_mask.to(dev)
    real_in = (attention_mask.sum(-1) if attention_mask is not None
               else torch.full((input_ids.shape[0],), input_ids.shape[1], device=dev))
    delta = full_delta.to(dev) + (real_in.to(dev) - new_mask.sum(-1)).unsqueeze(1)
    inner.rope_deltas = delta  # a manual continuation (cache, no position_ids) decodes at the right place
    if for_generate:  # generate's own layout: text positions (for the mask), then t, h, w
        text = (new_mask.long().cumsum(-1) - 1).masked_fill(new_mask == 0, 0)
        pos = torch.cat([text[None], pos])
    if fam.deepstack:
        mm["video"] = mod.BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(tokens), deepstack_features=[tuple(s) for s in stacks])
    else:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        mm["video"] = BaseModelOutputWithPooling(pooler_output=tuple(tokens))
    if kwargs.get("pixel_values") is not None and mm.get("image") is None:
        mm["image"] = inner.get_image_features(kwargs.pop("pixel_values"), kwargs.get("image_grid_thw"),
                                               return_dict=True)
    kwargs.pop("image_grid_thw", None)
    kwargs["input_ids"] = spliced.input_ids.to(dev)
    kwargs["attention_mask"] = new_mask
    kwargs["position_ids"] = pos
    kwargs["mm_encoder_outputs"] = mm
    lengths = [len(s.index) for s in slots]
    per_video, first = [], 0
    for t, _, _ in grids:
        per_video.append(lengths[first: first + t])
        first += t
    state.last = {
        "method": state.method.name, "videos": len(grids), "frames": [t for t, _, _ in grids],
        "grid": [(h, w) for _, h, w in grids], "tokens_in": sum(t * h * w for t, h, w in grids),
        "tokens_out": sum(int(tok.shape[0]) for tok in tokens),
        "llm_video_tokens": [sum(p) for p in per_video], "slice_tokens": per_video,
        "deepstack_levels": len(levels), "placeholders_in": [t * h * w for t, h, w in grids],
        "prompt_length_in": int(input_ids.shape[1]), "prompt_length_out": int(spliced.input_ids.shape[1]),
        "rope_deltas": delta.flatten().tolist(), "times": times, "device": str(pixels.device),
    }
    return kwargs
