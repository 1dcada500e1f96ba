"""AOT inside vLLM's LLaVA-OneVision (read and run with vLLM 0.32; ``options.TESTED_VLLM``).

Selected with ``--hf-overrides '{"architectures": ["AotLlavaOnevisionForConditionalGeneration"], "aot": {...}}'``.
1-D RoPE: vLLM numbers the prompt's tokens contiguously, which is the transformers adapter's default
(``positions="contiguous"``), so no pruning machinery is needed (``--video-pruning-rate`` is not used).

* Processor (``_get_prompt_updates``): a video of F frames is ``aot.budget(retention, F, N) + 1``
  placeholders (N pooled tokens a frame, then the one newline), not F * N + 1.
* Model (``_process_video_pixels``): the SigLIP tower runs once with forward pre-hooks on two layers'
  ``MMEncoderAttention`` (q and k as the layer computed them); a patch's score is the attention it
  receives, averaged over heads and queries of its frame, in query chunks, then pooled to the LLM grid
  with the model's own bilinear pooling: the transformers adapter's rule (``aot.models.llava_onevision``,
  layout "onevision"). The method compresses each video to exactly the budget (asserted), the newline
  follows. Layer indices count in the checkpoint's full tower (the adapter's defaults 5 and -2); vLLM
  builds the tower only up to ``vision_feature_layer``, so a layer above it is refused at start-up.
  Per-request retention (``aot_retention``) is not supported for this family (Qwen2.5-VL only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.scores import attention_received
from . import options as opts

import vllm
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import VideoProcessorItems
from vllm.multimodal.processing import PromptReplacement

opts.check_vllm_version(vllm.__version__)

__all__ = ["AotLlavaOnevisionForConditionalGeneration", "AotLlavaOnevisionMultiModalProcessor", "ARCH"]

ARCH = "AotLlavaOnevisionForConditionalGeneration"
DEFAULT_LAYERS = (5, -2)  # aot.models.llava_onevision.patch's defaults


def _no_request_retention(hf_kwargs) -> None:
    if opts.REQUEST_KWARG in hf_kwargs:
        raise ValueError(f"{ARCH} takes its retention from the server's overrides; a per-request "
                         f"{opts.REQUEST_KWARG!r} is supported for Qwen2.5-VL only")


class AotLlavaOnevisionMultiModalProcessor(LlavaOnevisionMultiModalProcessor):
    def _call_hf_processor(self, hf_data, hf_kwargs):
        _no_request_retention(hf_kwargs)
        return super()._call_hf_processor(hf_data, hf_kwargs)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        _no_request_retention(hf_processor_mm_kwargs)
        updates = [u for u in super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
                   if u.modality != "video"]
        config = self.info.get_hf_config()
        options = opts.options_of(config, ARCH)
        token = config.video_token_index

        def video(i: int) -> list[int]:
            videos = mm_items.get_items("video", VideoProcessorItems)  # embeddings: refused (no scores)
            size = videos.get_frame_size(i)
            n = self.info._get_num_frame_tokens(image_width=size.width, image_height=size.height)
            return [token] * (opts.video_budget(options, videos.get_num_frames(i), n) + 1)

        return updates + [PromptReplacement(modality="video", target=[token], replacement=video)]


@MULTIMODAL_REGISTRY.register_processor(AotLlavaOnevisionMultiModalProcessor, info=LlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class AotLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    aot_serving = True

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.aot_options = opts.options_of(self.config, ARCH)
        full = self.config.vision_config.num_hidden_layers
        built = len(self.vision_tower.vision_model.encoder.layers)
        layers = []
        for name, given, default in (("local_layer", self.aot_options.local_layer, DEFAULT_LAYERS[0]),
                                     ("global_layer", self.aot_options.global_layer, DEFAULT_LAYERS[1])):
            layer = default if given is None else given
            if not -full <= layer < full:
                raise ValueError(f"aot override {name}={layer} is out of range: the tower has {full} layers, "
                                 f"so use an index in [-{full}, {full - 1}]")
            if layer % full >= built:
                raise ValueError(f"aot override {name}={layer} is layer {layer % full} of {full}; vLLM builds the "
                                 f"tower only up to vision_feature_layer ({built} layers): use an index below {built}")
            layers.append(layer % full)
        self.aot_layers = tuple(layers)
        self.aot_last: dict[str, Any] = {}

    def _hook(self, out: list):
        def hook(module, args, kwargs):
            q = kwargs.get("query", args[0] if args else None)
            k = kwargs.get("key", args[1] if len(args) > 1 else None)
            b, t = q.shape[:2]
            heads = module.num_heads
            with torch.no_grad():
                q4 = q.reshape(b, t, heads, -1).transpose(1, 2)
                k4 = k.reshape(b, t, module.num_kv_heads, -1).transpose(1, 2)
                s = attention_received(q4, k4, chunk=self.aot_options.chunk) * heads  # summed over local heads
                total = self.config.vision_config.num_attention_heads
                if heads != total:  # tensor parallelism: each rank holds some heads
                    from vllm.distributed import tensor_model_parallel_all_reduce

                    s = tensor_model_parallel_all_reduce(s)
                out.append(s / total)

        return hook

    def _process_video_pixels(self, inputs):
        pixels = inputs["pixel_values_videos"]
        videos = list(pixels) if isinstance(pixels, Tensor) else list(pixels)
        frames = [int(v.shape[0]) for v in videos]
        layers = self.vision_tower.vision_model.encoder.layers
        rec: dict[int, list] = {layer: [] for layer in set(self.aot_layers)}
        handles = [layers[layer].self_attn.attn.register_forward_pre_hook(self._hook(rec[layer]), with_kwargs=True)
                   for layer in rec]
        try:
            feats = self._video_pixels_to_features(self.vision_tower, torch.cat(videos))  # (sum F, N, d)
        finally:
            for h in handles:
                h.remove()
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        n = feats.shape[1]
        grid = (-(-side // 2), -(-side // 2))

        def pooled(layer: int) -> Tensor:  # (sum F, side * side) -> (sum F, N), the features' own pooling
            s = torch.cat(rec[layer]) if len(rec[layer]) > 1 else rec[layer][0]
            return self.apply_pooling(s.reshape(-1, side * side, 1).float()).squeeze(-1)

        local, deep = pooled(self.aot_layers[0]), pooled(self.aot_layers[1])
        out, last, first = [], [], 0
        newline = self.image_newline[None, :]
        for f in frames:
            want = opts.video_budget(self.aot_options, f, n)
            x = feats[first: first + f].reshape(1, f, n, -1)
            c = self.aot_options.method(x.float(), deep[first: first + f].reshape(1, f, n),
                                        local_scores=local[first: first + f].reshape(1, f, n), grid=grid,
                                        config=self.aot_options.config)
            tokens = c.tokens[0].to(feats.dtype)
            if tokens.shape[0] != want:
                raise RuntimeError(f"aot: method {self.aot_options.method.name!r} kept {tokens.shape[0]} rows, "
                                   f"not the budget {want} (F={f}, N={n})")
            out.append(torch.cat([tokens, newline.to(tokens.dtype)]))
            last.append({"frames": f, "kept": int(tokens.shape[0]), "positions": c.positions[0].cpu(),
                         "scores": (local[first: first + f].cpu(), deep[first: first + f].cpu())})
            first += f
        self.aot_last = {"videos": last}
        return out
