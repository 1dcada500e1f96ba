"""AOT inside vLLM's Qwen2.5-VL (read and run with vLLM 0.32; ``options.TESTED_VLLM``).

Selected with ``--hf-overrides '{"architectures": ["AotQwen2_5_VLForConditionalGeneration"], "aot": {...}}'``
and turned on with ``--video-pruning-rate`` > 0 (any value: the rate is not used, the budget comes from
the aot config; ``aot serve`` sets 1 - retention). What each piece replaces in vLLM's class:

* Processor (``_get_prompt_updates``): each video's ``<|video_pad|>`` run is sized with ``aot.budget``
  on its LLM grid (t slices x h/2 x w/2), never vLLM's EVS floor rule. A request may carry its own
  retention, ``mm_processor_kwargs={"aot_retention": 0.25}``; it travels with the video as the
  ``aot_retention`` field, so the model compresses that video to the same count.
* Model (``_process_video_input``): the tower runs once with forward pre-hooks on two blocks'
  ``MMEncoderAttention`` (q and k after rotary, no weights touched); a patch's score is the attention it
  receives within its segment (a full-attention block: its temporal slice; a window block: its window),
  in query chunks, per-slice normalised, taken from the window-permuted order back to the processor's
  and averaged over each 2x2 merge group: the transformers adapter's rule (``aot.models.qwen2_5_vl``).
  Under tensor parallelism each rank sees its heads only; the per-key sums are all-reduced.
* ``_postprocess_video_embeds_evs``: the method compresses each video on its own grid to exactly the
  budget (asserted against the placeholder count), and appends position columns per kept row
  (``options.qwen_position_columns``): the (t, h, w) transformers gives the token's source cell, and
  max(h, w), the text advance after a video in transformers 5.x, each sent as two base-256 digits
  (``options.encode_columns``: exact in bfloat16, where vLLM's 4 plain columns lose positions above
  256); ``recompute_mrope_positions`` decodes them and runs vLLM's recompute (chunked prefill handled
  there), which then yields the transformers adapter's positions. Images in the same prompt get the
  same encoding of their full grid. ``get_mrope_input_positions`` gives the same rule before the encoder runs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.qwen2_5_vl import default_layers
from . import options as opts
from .qwen_common import FIELD, AotQwenMixin, AotRetentionFieldMixin, retention_field, retention_of, split_columns, \
    with_columns

import vllm
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement

opts.check_vllm_version(vllm.__version__)

__all__ = ["AotQwen2_5_VLForConditionalGeneration", "AotQwen2_5_VLMultiModalProcessor", "ARCH"]

ARCH = "AotQwen2_5_VLForConditionalGeneration"


def _options(hf_config) -> opts.ServeOptions:
    return opts.options_of(hf_config, ARCH)


class AotQwen2_5_VLMultiModalProcessor(AotRetentionFieldMixin, Qwen2_5_VLMultiModalProcessor):
    def _call_hf_processor(self, hf_data, hf_kwargs):
        hf_kwargs = {k: v for k, v in hf_kwargs.items() if k != opts.REQUEST_KWARG}
        return super()._call_hf_processor(hf_data, hf_kwargs)

    def _postprocess_hf_mm_data(self, hf_data, hf_kwargs, processed_data):
        out = super()._postprocess_hf_mm_data(hf_data, hf_kwargs, processed_data)
        thw = out.get("video_grid_thw")
        if thw is not None:
            r = hf_kwargs.get(opts.REQUEST_KWARG)
            if r is not None:
                opts.with_retention(_options(self.info.get_hf_config()), r)  # a bad value fails here, per request
            out[FIELD] = retention_field(len(thw), r)
        return out

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = [u for u in super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
                   if u.modality != "video"]
        config = self.info.get_hf_config()
        base = _options(config)
        merge = config.vision_config.spatial_merge_size

        def video(i: int) -> list[int]:
            item = out_mm_kwargs["video"][i]
            t, h, w = (int(v) for v in item["video_grid_thw"].data.tolist())
            r = retention_of(item.get(FIELD)) if FIELD in item else None
            return [config.video_token_id] * opts.video_budget(opts.with_retention(base, r), t,
                                                               (h // merge) * (w // merge))

        return updates + [PromptReplacement(modality="video", target=[config.video_token_id], replacement=video)]


@MULTIMODAL_REGISTRY.register_processor(AotQwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class AotQwen2_5_VLForConditionalGeneration(AotQwenMixin, Qwen2_5_VLForConditionalGeneration):
    aot_default_layers = staticmethod(default_layers)  # the first and last full-attention blocks

    def _aot_slice_blocks(self) -> set[int]:  # full-attention blocks; the others attend within windows
        return set(int(i) for i in self.visual.fullatt_block_indexes)

    def _aot_tower(self, pixels, grid_thw):
        meta = self.visual.prepare_encoder_metadata(grid_thw)
        return self.visual(pixels, grid_thw=grid_thw, encoder_metadata=meta), meta["window_index"]

    # ------------------------------------------------------------------ compression and position columns

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        grid_thw = [[int(v) for v in row] for row in video_input["video_grid_thw"].tolist()]
        seconds = video_input.get("second_per_grid_ts")
        merge = self.visual.spatial_merge_size
        tps = float(getattr(self.config.vision_config, "tokens_per_second", 1.0))
        out, last = [], []
        for v, (emb, (t, h, w)) in enumerate(zip(video_embeds_split, grid_thw)):
            gh, gw = h // merge, w // merge
            o, c = self._aot_compress(v, emb, (t, gh, gw))
            tokens, positions = c.tokens[0].to(emb.dtype), c.positions[0]
            sec = 1.0 if seconds is None else float(seconds[v])
            out.append(with_columns(tokens, opts.qwen_position_columns(positions, (t, gh, gw), tps * sec)))
            last.append({"grid": (t, gh, gw), "retention": o.config.retention, "kept": int(tokens.shape[0]),
                         "positions": positions.cpu(), "scores": tuple(s.cpu() for s in self._aot_scores[v])})
        self.aot_last = {"videos": last}
        self._aot_scores = []
        return tuple(out)

    def _postprocess_image_embeds_evs(self, image_embeds_split, image_input):
        """Images in a prompt with pruning on: their full grid's columns, encoded as the videos' are, with
        the text advance max(h, w) of transformers 5.x (vLLM's image path uses w)."""
        merge = self.visual.spatial_merge_size
        out = []
        for emb, (t, h, w) in zip(image_embeds_split, image_input["image_grid_thw"].tolist()):
            gh, gw = int(h) // merge, int(w) // merge
            out.append(with_columns(emb, opts.qwen_position_columns(torch.arange(int(t) * gh * gw),
                                                                   (int(t), gh, gw), 1.0)))
        return tuple(out)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """vLLM's recompute (``video_prune.evs.recompute_mrope_positions``) on our columns, decoded exactly."""
        from vllm.multimodal.video_prune.evs import recompute_mrope_positions
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed

        device = multimodal_embeddings[0].device if len(multimodal_embeddings) else mrope_positions.device
        ids = (input_ids.to(device=device, dtype=torch.long) if isinstance(input_ids, torch.Tensor)
               else torch.tensor(input_ids, dtype=torch.long, device=device))
        embeds, cols = split_columns(multimodal_embeddings, 4)
        with gpu_sync_allowed():
            positions, delta = recompute_mrope_positions(ids, [c.T.contiguous() for c in cols], mrope_positions,
                                                         num_computed_tokens, self.config.vision_start_token_id,
                                                         self.config.image_token_id, self.config.video_token_id)
        return embeds, positions, delta

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """transformers' rule on the compressed prompt: text counts on, a video's slots take (placeholder)
        positions of its first cells (recomputed once the encoder has chosen them), text after a video
        continues at start + max(h, w) as transformers 5.x does (images: the same rule)."""
        merge = self.config.vision_config.spatial_merge_size
        cols, cursor, pos = [], 0, 0
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            off, length = f.mm_position.offset, f.mm_position.length
            key = "video_grid_thw" if f.modality == "video" else "image_grid_thw"
            t, h, w = (int(v) for v in f.data[key].data.tolist())
            gh, gw = h // merge, w // merge
            n = off - cursor
            cols.append(np.broadcast_to(np.arange(n), (3, n)) + pos)
            pos += n
            idx = np.indices((t, gh, gw)).reshape(3, -1)[:, :length]
            if f.modality == "video":
                sec = f.data.get("second_per_grid_ts")
                interval = float(getattr(self.config.vision_config, "tokens_per_second", 1.0)) * (
                    1.0 if sec is None else float(sec.data))
                idx = idx.copy()
                idx[0] = (torch.arange(t, dtype=torch.float32) * torch.tensor(interval, dtype=torch.float32)
                          ).long().numpy().repeat(gh * gw)[:length]
            cols.append(idx + pos)
            pos += max(gh, gw)
            cursor = off + length
        n = len(input_tokens) - cursor
        cols.append(np.broadcast_to(np.arange(n), (3, n)) + pos)
        positions = np.concatenate(cols, axis=1).reshape(3, -1)
        return torch.from_numpy(positions), int(positions.max() + 1 - len(input_tokens))
