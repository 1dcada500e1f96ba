"""AOT (or any registered method) inside transformers' ``Qwen2_5_VLForConditionalGeneration``.

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(...)
    aot.patch(model, aot.AOTConfig(retention=0.1))
    inputs = processor(text=prompt, videos=frames, return_tensors="pt")
    out = model.generate(**inputs)          # unchanged usage; out starts with inputs["input_ids"]

How (transformers 5.x, read from 5.24; checked in ``check_transformers``): every call that carries
``pixel_values_videos`` is rewritten before the model sees it, by a forward pre-hook (``model(...)``)
and a wrapper of the instance's ``generate``, as for LLaVA-OneVision:

* The videos are encoded once with the model's own ``get_video_features`` while two blocks of the
  vision tower are scored by hooks: q and k recomputed from the block's input (with its rotary
  embedding), the attention each patch receives reduced segment by segment of ``cu_seqlens`` (a
  window-attention block attends within its window, a full-attention block within its temporal
  slice), in query chunks, no map kept, the tower keeps SDPA. A patch's score is the attention it
  receives summed over the queries of its slice and averaged over heads, divided by the slice's
  patch count (so every slice's scores sum to 1 for both kinds of block). Scores are taken from the
  window-permuted order back to the processor's order (the inverse of ``get_vision_window_index``'s
  permutation, as the tower does for its output) and averaged over every 2x2 merge group, so they
  sit on the LLM-facing grid.
* AOT's "frames" are the temporal slices (``temporal_patch_size`` = 2 frames each) and the grid is
  (h / 2, w / 2) per slice; each video is compressed on its own grid (videos may differ in length
  and size).
* The compressed tokens go in as precomputed encoder outputs (``mm_encoder_outputs={"video": ...}``)
  with a prompt whose video placeholders and attention mask shrink to match (``aot.models.splice``).
* 3-D M-RoPE: the (t, h, w) position ids of the *uncompressed* prompt are computed with the model's
  own ``get_rope_index``; every kept token takes those of the column it came from (an anchor: its
  keyframe cell, a kept token its own, ``Compressed.positions``), text keeps its own, and decoding
  continues where the uncompressed prompt would (``rope_deltas`` set for the shorter prompt;
  ``generate`` gets the 4-row position ids it builds itself: text positions, then t, h, w).

In-LLM methods (FastV, PDrop; ``aot.models.inllm_patch``): nothing is rewritten. The video reaches
the text decoder whole, with the model's own M-RoPE ids and ``rope_deltas``; a forward pre-hook
announces each prefill that carries a video (its ``<|video_pad|>`` positions, each row's last real
token as the query) and ``aot.models.inllm.InLLMPruner`` prunes inside the decoder. Qwen2.5-VL's
text model merges the three M-RoPE sections into the (cos, sin) tables it hands every layer, each
(B, L, head_dim) (frequency i takes the t, h or w id by ``mrope_section``), and the layer's attention
applies plain rotate-half RoPE with them, so the scoring row uses ``rotate_half_rope`` on the rows
of those tables: a kept token keeps its original (t, h, w) ids. Decoding continues at the unpruned
positions: ``generate``'s ids extend the full prompt's, and a continuation by hand takes them from
``rope_deltas`` and the cache length (layer 0 holds every token). Images in the prompt are not
pruned. Limits as ``aot.models.inllm``: the same number of video tokens in every row of a batch
(same-sized videos), the question after the video, SDPA or eager attention, a DynamicCache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .inllm import rotate_half_rope
from .inllm_patch import attach, detach
from .patching import (PatchState, install, missing_members, pad_token_id, resolve_method, take_video_call, timer,
                       uninstall, uses_local_scores)
from .scores import _check_chunk, _check_max_bytes, attention_received, score_bytes, step_bytes
from .splice import VideoSlots, gather_positions, placeholder_blocks, splice_prompt

__all__ = ["patch", "unpatch", "PatchState", "check_transformers", "default_layers", "segment_received"]

_RELIED_ON = {
    "Qwen2_5_VLModel.get_video_features": ("pixel_values_videos", "video_grid_thw"),
    "Qwen2_5_VLModel.get_image_features": ("pixel_values", "image_grid_thw"),
    "Qwen2_5_VLModel.get_rope_index": ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw",
                                       "second_per_grid_ts", "attention_mask"),
    "Qwen2_5_VLModel.forward": ("input_ids", "attention_mask", "position_ids", "mm_encoder_outputs"),
    "Qwen2_5_VLForConditionalGeneration.forward": ("input_ids", "pixel_values_videos", "video_grid_thw",
                                                   "attention_mask", "position_ids", "mm_encoder_outputs"),
    "Qwen2_5_VLVisionAttention.forward": ("hidden_states", "cu_seqlens", "position_embeddings"),
}


def check_transformers() -> None:
    """Raise an ImportError naming what is missing if the installed transformers lacks a method (or
    an argument, or the window-index helper) this adapter relies on (transformers >= 5.0, < 6)."""
    import transformers
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mod

    missing = missing_members(mod, _RELIED_ON)
    for name in ("get_vision_window_index", "apply_rotary_pos_emb_vision"):
        if getattr(mod, name, None) is None:
            missing.append(f"modeling_qwen2_5_vl.{name}")
    if missing:
        raise ImportError(f"transformers {transformers.__version__} lacks what aot.patch relies on: "
                          f"{', '.join(missing)}; install transformers>=5.0,<6")


def default_layers(vision_config) -> tuple[int, int]:
    """(local, global) score blocks: the first and the last full-attention block
    (``fullatt_block_indexes``; Qwen2.5-VL-3B/7B/72B: 7 and 31 of 32). See the README for why."""
    full = sorted(int(i) for i in vision_config.fullatt_block_indexes)
    if not full:
        raise ValueError("the vision tower has no full-attention block; pass local_layer= and global_layer=")
    return full[0], full[-1]


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
    """Make a loaded Qwen2_5_VLForConditionalGeneration compress its videos; see aot.patch.

    ``local_layer`` / ``global_layer``: vision blocks whose attention gives the local and global
    anchor scores (default: the first and the last of ``fullatt_block_indexes``)."""
    check_transformers()
    from transformers import Qwen2_5_VLForConditionalGeneration

    if options:
        raise TypeError(f"options not supported for Qwen2.5-VL: {', '.join(sorted(options))} "
                        f"(positions are the model's own 3-D M-RoPE, gathered)")
    if not isinstance(model, Qwen2_5_VLForConditionalGeneration):
        raise TypeError(f"expected a Qwen2_5_VLForConditionalGeneration, got {type(model).__name__}")
    m = resolve_method(model, config, method)
    tower = model.model.visual
    d_local, d_global = default_layers(tower.config)
    local_layer = _block(tower, d_local if local_layer is None else local_layer)
    global_layer = _block(tower, d_global if global_layer is None else global_layer)
    state = PatchState(m, config, local_layer, global_layer, chunk, score_bytes=score_bytes)
    install(model, state, _rewrite)
    if m.in_llm:  # FastV/PDrop: the video goes in whole, the text decoder prunes it
        try:
            attach(state, model.model.language_model, tower, model.config.video_token_id, rope=rotate_half_rope)
        except Exception:
            unpatch(model)  # nothing half-done: a schedule that does not fit leaves the model as it was
            raise
    return model


def unpatch(model: nn.Module) -> nn.Module:
    detach(uninstall(model))
    model.model.rope_deltas = None
    return model


# ---------------------------------------------------------------------------------------------

def segment_received(q: Tensor, k: Tensor, cu_seqlens: Tensor, *, chunk: int | None = 256,
                     max_bytes: int | None = None) -> Tensor:
    """Attention each token receives inside its segment, summed over the segment's queries and
    averaged over heads: q, k (heads, T, dh) (rotary applied), cu_seqlens (S + 1,) -> (T,) float32.

    Segments are those of a Qwen2.5-VL vision block (windows, or temporal slices); a token receives
    nothing from queries outside its segment, exactly as the block attends.  Segments of the same
    length go through :func:`attention_received` together, as its batch elements, as many at once
    as the working set takes (``chunk``, ``max_bytes``: the same meaning and device-aware default,
    for that length; here the working set also counts the q and k of segments gathered from
    non-consecutive places and their float32 layout for the products): on the CPU by default one
    segment a step with the buffer of the loop before budgets, bit for bit that loop's result, one
    call per run of consecutive equal segments; on CUDA by default hundreds of windows a step.
    Consecutive segments of a call are views of q and k; others are gathered through one index
    built on the host and moved to the device once.  One host read: ``cu_seqlens``."""
    if not isinstance(q, Tensor) or not isinstance(k, Tensor):
        raise TypeError(f"q and k must be torch.Tensor, got {type(q).__name__} and {type(k).__name__}")
    if q.ndim != 3 or q.shape != k.shape:
        raise ValueError(f"q and k must be (heads, T, dh) of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    _check_chunk(chunk)
    _check_max_bytes(max_bytes)
    heads, t, dh = q.shape
    bounds = [int(b) for b in cu_seqlens.tolist()]
    by_length: dict[int, list[int]] = {}  # segment length -> starts, in order
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            by_length.setdefault(e - s, []).append(s)
    calls = []  # (length, starts of the segments of one attention_received call)
    for length, starts in by_length.items():
        budget = score_bytes(q.device, heads, length, length, dh, chunk, max_bytes)
        # a segment's q and k gathered (if they are) and laid out again as float32 for the products
        gather = 2 * heads * length * dh * (q.element_size() + 4)
        n = max(1, min(len(starts), budget // (step_bytes(1, heads, length, length, dh) + gather)))
        if n == 1:  # a segment a step: one call per run of consecutive segments, a view, stepped inside
            runs = [[starts[0]]]
            for s in starts[1:]:
                if s == runs[-1][-1] + length:
                    runs[-1].append(s)
                else:
                    runs.append([s])
            calls += [(length, run) for run in runs]
        else:
            calls += [(length, starts[i : i + n]) for i in range(0, len(starts), n)]
    # a call whose segments are not one run reads its tokens through an index: all of them built on
    # the host and moved to the device at once
    apart = [any(s != part[0] + j * length for j, s in enumerate(part)) for length, part in calls]
    index = None
    if any(apart):
        positions = [s + i for (length, part), a in zip(calls, apart) if a for s in part for i in range(length)]
        index = torch.tensor(positions, dtype=torch.long).to(q.device)
    qt, kt = q.transpose(0, 1), k.transpose(0, 1)  # (T, heads, dh): how the hooks' q and k lie in memory
    out = torch.zeros(t, dtype=torch.float32, device=q.device)
    at = 0
    for (length, part), a in zip(calls, apart):
        n = len(part)
        if a:
            where = index[at : at + n * length]
            at += n * length
            qs, ks = qt.index_select(0, where), kt.index_select(0, where)  # (n * L, heads, dh)
        else:
            qs, ks = qt.narrow(0, part[0], n * length), kt.narrow(0, part[0], n * length)
        qs = qs.unflatten(0, (n, length)).permute(0, 2, 1, 3)  # (n, heads, L, dh)
        ks = ks.unflatten(0, (n, length)).permute(0, 2, 1, 3)
        scores = attention_received(qs, ks, chunk=chunk, max_bytes=max_bytes) * length  # (n, L)
        if a:
            out.index_copy_(0, where, scores.view(-1))
        else:
            out[part[0] : part[0] + n * length] = scores.view(-1)
    return out


def hook_score_blocks(tower: nn.Module, state: PatchState, times: dict, rope=None) -> tuple[dict, list]:
    """Score hooks (``score_hook``) on the global block and, only when the method reads it
    (``uses_local_scores``), the local one: ({"local": [...], "global": [...]} filled during the
    tower's forward, the hook handles to remove). Shared by the Qwen2.5-VL and Qwen3-VL adapters."""
    blocks = [("global", state.global_layer)] + ([("local", state.local_layer)] if uses_local_scores(state) else [])
    rec: dict[str, list] = {"local": [], "global": []}
    handles = [tower.blocks[layer].attn.register_forward_pre_hook(score_hook(rec[key], state.chunk, times, rope,
                                                                                      state.score_bytes),
                                                                  with_kwargs=True) for key, layer in blocks]
    return rec, handles


def score_hook(records: list, chunk, times, rope=None, max_bytes=None):
    """A forward hook with kwargs for a Qwen vision block's attention: recomputes q and k, applies
    ``rope(q, k, cos, sin)`` (default: Qwen2.5-VL's vision rotary) and appends the attention each
    patch receives within its segment (``segment_received``) to ``records``. Shared by the
    Qwen2.5-VL and Qwen3-VL adapters, whose blocks differ only in that function."""
    if rope is None:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision as rope

    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cu = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        pos = kwargs.get("position_embeddings", args[2] if len(args) > 2 else None)
        if hidden is None or cu is None or pos is None:
            raise RuntimeError("aot: the vision attention was called without hidden_states, cu_seqlens and "
                               "position_embeddings; this transformers version is not supported")
        with timer(times, "scores", hidden.device), torch.no_grad():
            t = hidden.shape[0]
            q, k, _ = module.qkv(hidden).reshape(t, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            if abs(float(module.scaling) - q.shape[-1] ** -0.5) > 1e-6:
                raise ValueError(f"{type(module).__name__} scales attention by {module.scaling}, not 1/sqrt(head_dim)")
            q, k = rope(q, k, *pos)
            records.append(segment_received(q.transpose(0, 1), k.transpose(0, 1), cu, chunk=chunk,
                                            max_bytes=max_bytes))

    return hook


def _rewrite(model: nn.Module, kwargs: dict, for_generate: bool) -> dict:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    state: PatchState = model._aot
    inner = model.model
    cfg = model.config
    kwargs = dict(kwargs)
    seconds = kwargs.pop("second_per_grid_ts", None)
    call = take_video_call(state, inner, kwargs, "Qwen2.5-VL")
    pixels, thw, types_, mm, input_ids, grids = call.pixels, call.thw, call.types, call.mm, call.input_ids, call.grids
    per_video = [t * h * w for t, h, w in grids]
    attention_mask = kwargs.get("attention_mask")
    times: dict[str, float] = {}

    # the prompt first: a hand-edited prompt fails before any work (slots are filled in below)
    placeholder_blocks(input_ids, cfg.video_token_id, per_video, len(grids))

    # 1. the tower once, two blocks scored by hooks
    tower = inner.visual
    rec, handles = hook_score_blocks(tower, state, times)
    try:
        with timer(times, "vision", pixels.device), torch.no_grad():
            enc = inner.get_video_features(pixels, thw, return_dict=True)
    finally:
        for hnd in handles:
            hnd.remove()
    times["vision"] -= times.get("scores", 0.0)
    feats = list(enc.pooler_output)  # per video (t * h * w, d), processor order
    deep = _to_llm_grid(rec["global"][0], thw, tower)
    local = _to_llm_grid(rec["local"][0], thw, tower) if rec["local"] else deep

    # 2. compress every video on its own grid
    outs = []
    with timer(times, "compress", pixels.device), torch.no_grad():
        for v, (t, h, w) in enumerate(grids):
            x = feats[v].reshape(1, t, h * w, -1)
            o = state.method(x, deep[v].reshape(1, t, h * w).to(x.device),
                             local_scores=local[v].reshape(1, t, h * w).to(x.device), grid=(h, w),
                             config=state.config)
            outs.append((o.tokens[0], o.positions[0]))
    slots = [VideoSlots(p, n) for (_, p), n in zip(outs, per_video)]

    # 3. the shortened prompt and its positions (gathered from the uncompressed prompt's M-RoPE)
    spliced = splice_prompt(input_ids, attention_mask, token_id=cfg.video_token_id, per_video=per_video,
                            videos=slots, pad_token_id=pad_token_id(model))
    if types_ is None:  # the processor's mm_token_type_ids, rebuilt from the ids when not given
        types_ = (input_ids == cfg.image_token_id).int() + 2 * (input_ids == cfg.video_token_id).int()
    full_pos, full_delta = inner.get_rope_index(
        input_ids, mm_token_type_ids=types_, image_grid_thw=kwargs.get("image_grid_thw"), video_grid_thw=thw,
        second_per_grid_ts=seconds, attention_mask=attention_mask)
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
    video = BaseModelOutputWithPooling(pooler_output=tuple(tok for tok, _ in outs))
    mm["video"] = video
    if kwargs.get("pixel_values") is not None and mm.get("image") is None:
        mm["image"] = inner.get_image_features(kwargs.pop("pixel_values"), kwargs.get("image_grid_thw"),
                                               return_dict=True)
    kwargs.pop("image_grid_thw", None)
    kwargs["input_ids"] = spliced.input_ids.to(dev)
    kwargs["attention_mask"] = new_mask
    kwargs["position_ids"] = pos
    kwargs["mm_encoder_outputs"] = mm
    tokens_in = sum(per_video)
    state.last = {
        "method": state.method.name, "videos": len(grids), "frames": [t for t, _, _ in grids],
        "grid": [(h, w) for _, h, w in grids], "tokens_in": tokens_in,
        "tokens_out": sum(int(tok.shape[0]) for tok, _ in outs),
        "llm_video_tokens": spliced.video_lengths, "placeholders_in": per_video,
        "prompt_length_in": int(input_ids.shape[1]), "prompt_length_out": int(spliced.input_ids.shape[1]),
        "rope_deltas": delta.flatten().tolist(), "times": times, "device": str(pixels.device),
    }
    return kwargs


def _to_llm_grid(raw: Tensor, thw: Tensor, tower: nn.Module) -> list[Tensor]:
    """Scores of a block, (T,) over the window-permuted patches, summed over queries -> per video
    (t, h / 2 * w / 2) on the LLM grid: per-slice normalised, un-permuted, averaged per merge group."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import get_vision_window_index

    unit = tower.spatial_merge_unit
    window_index, _ = get_vision_window_index(thw, spatial_merge_size=tower.spatial_merge_size,
                                              window_size=tower.window_size, patch_size=tower.patch_size)
    groups = raw.reshape(-1, unit).mean(-1)  # (T / 4,) merge groups, permuted order
    groups = groups[torch.argsort(window_index.to(groups.device))]  # processor order, as the tower's output
    out, first = [], 0
    for t, h, w in thw.tolist():
        n = t * h * w // unit
        per_slice = groups[first: first + n].reshape(t, -1) / (h * w)  # sum over the slice's queries / patches
        out.append(per_slice * unit)  # a merge group's mean: x 4 so every slice's scores sum to 1
        first += n
    return out
