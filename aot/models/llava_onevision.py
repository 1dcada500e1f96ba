"""AOT (or any registered method) inside transformers' ``LlavaOnevisionForConditionalGeneration``.

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(...)
    aot.patch(model, aot.AOTConfig(retention=0.1))
    inputs = processor(text=prompt, videos=frames, return_tensors="pt")
    out = model.generate(**inputs)          # unchanged usage; out starts with inputs["input_ids"]

How (transformers 5.x; checked in ``check_transformers``): every call that carries
``pixel_values_videos`` is rewritten before the model sees it. A forward pre-hook (``model(...)``)
and a wrapper of the instance's ``generate`` encode the videos once with the model's own
``get_video_features`` while two attention layers of the vision tower are scored by hooks
(``aot.models.scores``: q and k recomputed, attention received reduced in query chunks, no map
kept, the tower keeps SDPA), compress the LLM-facing tokens with the method, and pass them as
precomputed encoder outputs (``mm_encoder_outputs={"video": ...}``, transformers' own multimodal
hook) with a prompt whose video placeholders, attention mask (and optionally positions) shrink to
match (``aot.models.splice``). Images in the same prompt are encoded by the model's own
``get_image_features`` and left alone. Nothing of the model's classes is replaced; accelerate's
hooks (``device_map``, offload) stay in place because module pre-hooks run before them.

Two video layouts:
* ``"onevision"`` (default, transformers' class): 2x2 bilinear pooling (27x27 -> 14x14 at 384 px),
  one newline after the video. Retention 1.0 gives exactly the unpatched model's logits.
* ``"llava-video"``: LLaVA-Video-7B-Qwen2's original code (lmms-eval's ``llava_vid`` with
  ``mm_spatial_pool_mode=average``, ``mm_newline_position=grid``): 2x2 average pooling
  (27x27 -> 13x13 = 169) and a newline after every grid row. After compression a newline follows
  the last kept token of every grid row that keeps one (at retention 1.0: the original layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inllm_patch import attach, detach
from .scores import attention_received, hf_qk, record_scores
from .patching import PatchState as _BaseState
from .patching import install, missing_members, pad_token_id, resolve_method, timer, uninstall, uses_local_scores
from .splice import lay_out_video, splice_prompt

__all__ = ["patch", "unpatch", "PatchState", "VIDEO_LAYOUTS", "check_transformers", "vision_attention", "llm_grid", "config_grid"]

VIDEO_LAYOUTS = ("onevision", "llava-video")
# methods of transformers' classes this adapter calls, with the arguments it passes
_RELIED_ON = {
    "LlavaOnevisionModel.get_video_features": ("pixel_values_videos", "vision_feature_layer",
                                               "vision_feature_select_strategy"),
    "LlavaOnevisionModel.get_image_features": ("pixel_values", "image_sizes"),
    "LlavaOnevisionModel.apply_pooling": ("image_features",),
    "LlavaOnevisionModel.forward": ("input_ids", "attention_mask", "position_ids", "mm_encoder_outputs"),
    "LlavaOnevisionForConditionalGeneration.forward": ("input_ids", "pixel_values_videos", "attention_mask",
                                                       "position_ids", "mm_encoder_outputs"),
}


def check_transformers() -> None:
    """Raise an ImportError naming what is missing if the installed transformers lacks a method
    (or an argument) this adapter relies on (supported: transformers >= 5.0, < 6)."""
    import transformers
    from transformers.models.llava_onevision import modeling_llava_onevision as mod

    missing = missing_members(mod, _RELIED_ON)
    if missing:
        raise ImportError(f"transformers {transformers.__version__} lacks what aot.patch relies on: "
                          f"{', '.join(missing)}; install transformers>=5.0,<6")


@dataclass
class PatchState(_BaseState):
    """Everything aot.patch keeps on a LLaVA-OneVision model (``model._aot``): the shared state and the
    layout options."""

    video_layout: str = "onevision"
    positions: str = "contiguous"


def vision_attention(tower: nn.Module, layer: int) -> nn.Module:
    """The self-attention module of layer ``layer`` of a transformers vision tower (SigLIP, CLIP,
    DINOv2); an out-of-range index is a ValueError naming the range."""
    core = getattr(tower, "vision_model", tower)
    enc = getattr(core, "encoder", None)
    blocks = getattr(enc, "layers", None) if enc is not None else None
    if blocks is None and enc is not None:
        blocks = getattr(enc, "layer", None)
    if blocks is None:
        raise TypeError(f"cannot find the encoder layers of the vision tower {type(tower).__name__}")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"vision layer indices must be ints, got {layer!r}")
    n = len(blocks)
    if not -n <= layer < n:
        raise ValueError(f"vision layer {layer} is out of range: the tower has {n} layers, "
                         f"so use an index in [-{n}, {n - 1}]")
    block = blocks[layer]
    attn = getattr(block, "self_attn", None) or getattr(block, "attention", None)
    if attn is None:
        raise TypeError(f"cannot find the attention module of {type(block).__name__}")
    return attn


def patch(model: nn.Module, config, *, method: str | None = None, video_layout: str = "onevision",
          positions: str = "contiguous", local_layer: int = 5, global_layer: int = -2,
          chunk: int | None = 256, score_bytes: int | None = None) -> nn.Module:
    """Make a loaded LlavaOnevisionForConditionalGeneration compress its videos; see aot.patch."""
    check_transformers()
    from transformers import LlavaOnevisionForConditionalGeneration

    if not isinstance(model, LlavaOnevisionForConditionalGeneration):
        raise TypeError(f"expected a LlavaOnevisionForConditionalGeneration, got {type(model).__name__}")
    if video_layout not in VIDEO_LAYOUTS:
        raise ValueError(f"video_layout must be one of {VIDEO_LAYOUTS}, got {video_layout!r}")
    if positions not in ("contiguous", "original"):
        raise ValueError(f"positions must be 'contiguous' or 'original', got {positions!r}")
    m = resolve_method(model, config, method)
    tower = model.model.vision_tower
    vision_attention(tower, local_layer), vision_attention(tower, global_layer)  # range check now
    state = PatchState(m, config, local_layer, global_layer, chunk, video_layout=video_layout, positions=positions,
                       score_bytes=score_bytes)
    install(model, state, lambda mdl, kwargs, for_generate: _rewrite(mdl, kwargs))  # forward and generate alike
    if m.in_llm:
        try:
            attach(state, model.model.language_model, tower, model.model.config.video_token_id)
        except Exception:
            unpatch(model)  # nothing half-done: a schedule that does not fit leaves the model as it was
            raise
    return model


def unpatch(model: nn.Module) -> nn.Module:
    detach(uninstall(model))
    return model


# ---------------------------------------------------------------------------------------------
# the rewrite of one call

def _rewrite(model: nn.Module, kwargs: dict) -> dict:
    """kwargs of a call with ``pixel_values_videos`` -> kwargs with compressed ``mm_encoder_outputs``."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    state: PatchState = model._aot
    inner = model.model
    kwargs = dict(kwargs)
    pixels = kwargs.pop("pixel_values_videos")
    mm = dict(kwargs.pop("mm_encoder_outputs", None) or {})
    if mm.get("video") is not None:
        raise ValueError("pass either pixel_values_videos or mm_encoder_outputs['video'], not both")
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("a compressing model needs input_ids with the processor's video placeholders "
                         "(inputs_embeds alone cannot be shortened)")
    if kwargs.get("position_ids") is not None:
        raise ValueError("do not pass position_ids with a video: aot computes them for the shortened prompt")
    if pixels.dim() != 5:
        raise ValueError(f"pixel_values_videos must be (videos, frames, 3, H, W), got {tuple(pixels.shape)}")
    cfg = inner.config
    n_videos, frames = pixels.shape[:2]
    h, w = llm_grid(model, state.video_layout)
    state.method.check(state.config, frames, h * w)  # an infeasible budget fails before the tower runs
    times: dict[str, float] = {}
    dev = pixels.device

    # 1. the tower once, with the two score layers hooked and the projector's output captured
    feats, local, deep, grid, per_video = _encode(model, state, pixels, kwargs, times)
    # 2. compress: (V, F, N, d) -> V x R tokens
    with timer(times, "compress", feats.device), torch.no_grad():  # training-free: no autograd through it
        out = state.method(feats, deep, local_scores=local, grid=grid, config=state.config)
    # 3. lay the tokens out as the LLM sees them and shorten the prompt to match
    newline = inner.image_newline
    laid = [lay_out_video(out.tokens[v], out.positions[v], newline, frames=frames, grid=grid,
                          layout="onevision" if state.video_layout == "onevision" else "grid")
            for v in range(n_videos)]
    pad_id = pad_token_id(model)
    spliced = splice_prompt(input_ids, kwargs.get("attention_mask"), token_id=cfg.video_token_id,
                            per_video=per_video, videos=[s for _, s in laid], positions=state.positions,
                            pad_token_id=pad_id)
    lengths = {f.shape[0] for f, _ in laid}
    video = (torch.stack([f for f, _ in laid]) if len(lengths) == 1
             else torch.cat([f for f, _ in laid]).unsqueeze(0))  # forward flattens (0, 1) either way
    mm["video"] = BaseModelOutputWithPooling(pooler_output=video)

    if kwargs.get("pixel_values") is not None and mm.get("image") is None:
        # images in the same prompt: the model's own path, untouched (mm_encoder_outputs excludes pixels)
        mm["image"] = inner.get_image_features(
            kwargs.pop("pixel_values"), kwargs.pop("image_sizes", None),
            vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
            vision_aspect_ratio=kwargs.get("vision_aspect_ratio"),
            batch_num_images=kwargs.pop("batch_num_images", None), return_dict=True)

    kwargs["input_ids"] = spliced.input_ids.to(input_ids.device)
    kwargs["attention_mask"] = spliced.attention_mask.to(input_ids.device)
    if spliced.position_ids is not None:
        kwargs["position_ids"] = spliced.position_ids.to(input_ids.device)
    kwargs["mm_encoder_outputs"] = mm
    n = grid[0] * grid[1]
    state.last = {
        "method": state.method.name, "videos": n_videos, "frames": frames, "grid": grid,
        "tokens_in": frames * n, "tokens_out": int(out.tokens.shape[1]),
        "llm_video_tokens": spliced.video_lengths, "placeholders_in": per_video,
        "prompt_length_in": int(input_ids.shape[1]), "prompt_length_out": int(spliced.input_ids.shape[1]),
        "times": times, "device": str(dev),
    }
    return kwargs


def _encode(model, state: PatchState, pixels: Tensor, kwargs: dict, times: dict):
    """Run the tower once: (feats (V, F, N, d), local (V, F, N), deep (V, F, N), grid, placeholders per video)."""
    inner = model.model
    tower = inner.vision_tower
    n_videos, frames = pixels.shape[:2]
    captured: list[Tensor] = []

    def capture(_module, _inputs, output):
        captured.append(output)

    def qk_timed(module, hidden):
        with timer(times, "scores", hidden.device):
            return hf_qk(module, hidden)

    def reduce_timed(q, k):
        with timer(times, "scores", q.device):
            return attention_received(q, k, chunk=state.chunk, max_bytes=state.score_bytes)

    need_local = uses_local_scores(state)  # no second score hook when nothing reads it
    layers = {"global": vision_attention(tower, state.global_layer)}
    if need_local:
        layers["local"] = vision_attention(tower, state.local_layer)
    hook = inner.multi_modal_projector.register_forward_hook(capture)
    try:
        with record_scores(layers, qk_timed, reduce=reduce_timed) as rec, \
                timer(times, "vision", pixels.device):
            enc = inner.get_video_features(
                pixels, vision_feature_layer=kwargs.get("vision_feature_layer"),
                vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"), return_dict=True)
    finally:
        hook.remove()
    times["vision"] -= times.get("scores", 0.0)  # the tower's own time, without the score hooks
    pooled = enc.pooler_output  # (V, F * N + 1, d): transformers' layout, newline last
    per_video = pooled.shape[1]
    side = inner.config.vision_config.image_size // inner.config.vision_config.patch_size
    strategy = kwargs.get("vision_feature_select_strategy") or inner.config.vision_feature_select_strategy

    def patch_scores(name: str) -> Tensor:  # (V * F, T) over the tower's tokens -> (V * F, side, side)
        s = torch.cat(rec[name]) if len(rec[name]) > 1 else rec[name][0]
        if s.shape[-1] == side * side + 1 and strategy == "default":
            s = s[:, 1:]  # the class token's column, dropped like its feature (not renormalised)
        if s.shape[-1] != side * side:
            raise ValueError(f"scores cover {s.shape[-1]} tokens, expected a {side}x{side} patch grid")
        return s.reshape(-1, side, side)

    if state.video_layout == "onevision":
        feats = pooled[:, :-1]
        pool = lambda s: inner.apply_pooling(s.unsqueeze(-1)).squeeze(-1)  # same pooling as features
        h = w = -(-side // 2)
    else:  # LLaVA-Video: average pooling 2x2 (floor), grid newlines
        proj = captured[-1].reshape(n_videos * frames, side, side, -1).permute(0, 3, 1, 2)
        feats = F.avg_pool2d(proj, 2).permute(0, 2, 3, 1).reshape(n_videos, -1, proj.shape[1])
        pool = lambda s: F.avg_pool2d(s.reshape(-1, 1, side, side), 2).reshape(s.shape[0], -1)
        h = w = side // 2
    n = h * w
    deep = pool(patch_scores("global").reshape(-1, side * side)).reshape(n_videos, frames, n)
    local = pool(patch_scores("local").reshape(-1, side * side)).reshape(n_videos, frames, n) if need_local else deep
    feats = feats.reshape(n_videos, frames, n, -1)
    return feats, local.to(feats.device), deep.to(feats.device), (h, w), per_video


def llm_grid(model, video_layout: str = "onevision") -> tuple[int, int]:
    """(h, w) of the LLM-facing grid of one frame: ceil(side / 2) for transformers' bilinear pooling,
    floor(side / 2) for LLaVA-Video's average pooling (side = image_size // patch_size)."""
    return config_grid(model.model.config.vision_config, video_layout)


def config_grid(vision_config, video_layout: str = "onevision") -> tuple[int, int]:
    """:func:`llm_grid` from the checkpoint's vision config alone (no weights needed)."""
    vc = vision_config
    side = vc.image_size // vc.patch_size
    h = -(-side // 2) if video_layout == "onevision" else side // 2
    return h, h


