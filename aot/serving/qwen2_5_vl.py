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

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.qwen2_5_vl import segment_received
from . import options as opts

import vllm
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

opts.check_vllm_version(vllm.__version__)

__all__ = ["AotQwen2_5_VLForConditionalGeneration", "AotQwen2_5_VLMultiModalProcessor", "ARCH"]

ARCH = "AotQwen2_5_VLForConditionalGeneration"
FIELD = "aot_retention"


def _options(hf_config) -> opts.ServeOptions:
    return opts.options_of(hf_config, ARCH)


def _retention_of(item_or_value) -> float | None:
    data = getattr(item_or_value, "data", item_or_value)
    if data is None:
        return None
    value = float(data.reshape(-1)[0]) if isinstance(data, Tensor) else float(data)
    return None if np.isnan(value) else value


class AotQwen2_5_VLMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
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
            out[FIELD] = torch.full((len(thw),), float("nan") if r is None else float(r), dtype=torch.float64)
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields[FIELD] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = [u for u in super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
                   if u.modality != "video"]
        config = self.info.get_hf_config()
        base = _options(config)
        merge = config.vision_config.spatial_merge_size

        def video(i: int) -> list[int]:
            item = out_mm_kwargs["video"][i]
            t, h, w = (int(v) for v in item["video_grid_thw"].data.tolist())
            r = _retention_of(item.get(FIELD)) if FIELD in item else None
            return [config.video_token_id] * opts.video_budget(opts.with_retention(base, r), t,
                                                               (h // merge) * (w // merge))

        return updates + [PromptReplacement(modality="video", target=[config.video_token_id], replacement=video)]


@MULTIMODAL_REGISTRY.register_processor(AotQwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class AotQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    aot_serving = True  # what aot.serving.cpu_fix looks for
    supported_video_pruning_methods = ("evs", "vidcom2")  # either switch turns the machinery on; aot decides

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        from ..models.qwen2_5_vl import default_layers

        self.aot_options = _options(self.config)
        if not self.is_multimodal_pruning_enabled:
            raise ValueError(f"{ARCH} needs vLLM's pruning switch on: add --video-pruning-rate "
                             f"{1 - self.aot_options.config.retention:.4g} (any value in (0, 1); aot serve sets it)")
        n = len(self.visual.blocks)
        d_local, d_global = default_layers(self.config.vision_config)
        layers = []
        for name, given, default in (("local_layer", self.aot_options.local_layer, d_local),
                                     ("global_layer", self.aot_options.global_layer, d_global)):
            layer = default if given is None else given
            if not -n <= layer < n:
                raise ValueError(f"aot override {name}={layer} is out of range: the tower has {n} blocks, "
                                 f"so use an index in [-{n}, {n - 1}]")
            layers.append(layer % n)
        self.aot_layers = tuple(layers)
        self.aot_last: dict[str, Any] = {}  # what the last video batch did (tests, logging)
        self._aot_scores: list[tuple[Tensor, Tensor]] = []
        self._aot_retentions: list[float | None] = []

    # ------------------------------------------------------------------ scores from the tower

    def _score_hook(self, out: list, full: bool, grid_thw: list[list[int]]):
        tp = self.visual.blocks[0].attn.num_attention_heads_per_partition
        total_heads = self.config.vision_config.num_heads

        def hook(module, args, kwargs):
            q = kwargs.get("query", args[0] if args else None)
            k = kwargs.get("key", args[1] if len(args) > 1 else None)
            if full:  # a temporal slice per segment, from the grid (FlashInfer rewrites cu_seqlens)
                sizes = [h * w for t, h, w in grid_thw for _ in range(t)]
                cu = torch.tensor([0] + sizes).cumsum(0)
            else:
                cu = kwargs.get("cu_seqlens")
            with torch.no_grad():
                q2, k2 = q[0].transpose(0, 1), k[0].transpose(0, 1)  # (heads, T, dh)
                s = segment_received(q2, k2, cu, chunk=self.aot_options.chunk) * q2.shape[0]  # summed over heads
                if tp != total_heads:  # tensor parallelism: each rank holds some heads
                    from vllm.distributed import tensor_model_parallel_all_reduce

                    s = tensor_model_parallel_all_reduce(s)
                out.append(s / total_heads)

        return hook

    def _to_llm_grid(self, raw: Tensor, window_index: Tensor, grid_thw: list[list[int]]) -> list[Tensor]:
        """(T,) patch scores in the tower's window order -> per video (t, h/2 * w/2), as the HF adapter."""
        unit = self.visual.spatial_merge_unit
        groups = raw.reshape(-1, unit).mean(-1)
        groups = groups[torch.argsort(window_index.to(groups.device))]
        out, first = [], 0
        for t, h, w in grid_thw:
            n = t * h * w // unit
            out.append(groups[first: first + n].reshape(t, -1) / (h * w) * unit)
            first += n
        return out

    def _process_video_input(self, video_input):
        if video_input["type"] == "video_embeds":
            raise ValueError(f"{ARCH} compresses from pixels (it needs the tower's attention); precomputed "
                             f"video_embeds are not supported")
        if self.use_data_parallel:
            raise NotImplementedError(f"{ARCH}: --mm-encoder-tp-mode data is not supported; use the default")
        grid_thw = [[int(v) for v in row] for row in video_input["video_grid_thw"].tolist()]
        meta = self.visual.prepare_encoder_metadata(grid_thw)
        full = set(int(i) for i in self.visual.fullatt_block_indexes)
        rec: dict[int, list] = {layer: [] for layer in set(self.aot_layers)}
        handles = [self.visual.blocks[layer].attn.attn.register_forward_pre_hook(
            self._score_hook(rec[layer], layer in full, grid_thw), with_kwargs=True) for layer in rec]
        try:
            embeds = self.visual(video_input["pixel_values_videos"], grid_thw=grid_thw, encoder_metadata=meta)
        finally:
            for h in handles:
                h.remove()
        local = self._to_llm_grid(rec[self.aot_layers[0]][0], meta["window_index"], grid_thw)
        deep = self._to_llm_grid(rec[self.aot_layers[1]][0], meta["window_index"], grid_thw)
        self._aot_scores = list(zip(local, deep))
        merge = self.visual.spatial_merge_size
        sizes = [t * h * w // merge // merge for t, h, w in grid_thw]
        return embeds.split(sizes)

    def _parse_and_validate_video_input(self, **kwargs):
        values = kwargs.get(FIELD)
        if values is None:
            self._aot_retentions = []
        else:
            flat = values if isinstance(values, Tensor) else torch.stack([torch.as_tensor(v).reshape(()) for v in values])
            self._aot_retentions = [_retention_of(v) for v in flat.reshape(-1)]
        return super()._parse_and_validate_video_input(**kwargs)

    # ------------------------------------------------------------------ compression and position columns

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        grid_thw = [[int(v) for v in row] for row in video_input["video_grid_thw"].tolist()]
        seconds = video_input.get("second_per_grid_ts")
        merge = self.visual.spatial_merge_size
        tps = float(getattr(self.config.vision_config, "tokens_per_second", 1.0))
        out, last = [], []
        for v, (emb, (t, h, w)) in enumerate(zip(video_embeds_split, grid_thw)):
            gh, gw = h // merge, w // merge
            r = self._aot_retentions[v] if v < len(self._aot_retentions) else None
            o = opts.with_retention(self.aot_options, r)
            want = opts.video_budget(o, t, gh * gw)
            local, deep = self._aot_scores[v]
            x = emb.reshape(1, t, gh * gw, -1)
            c = o.method(x.float(), deep.reshape(1, t, gh * gw).float(),
                         local_scores=local.reshape(1, t, gh * gw).float(), grid=(gh, gw), config=o.config)
            tokens, positions = c.tokens[0].to(emb.dtype), c.positions[0]
            if tokens.shape[0] != want:  # never reaches the engine: the placeholders were sized to `want`
                raise RuntimeError(f"aot: method {o.method.name!r} kept {tokens.shape[0]} rows of video {v}, "
                                   f"not its budget {want} (grid {t}x{gh}x{gw}, retention {o.config.retention})")
            sec = 1.0 if seconds is None else float(seconds[v])
            cols = opts.qwen_position_columns(positions, (t, gh, gw), tps * sec)
            out.append(torch.cat([tokens, opts.encode_columns(cols, emb.dtype).to(emb.device)], dim=1))
            last.append({"grid": (t, gh, gw), "retention": o.config.retention, "kept": int(tokens.shape[0]),
                         "positions": positions.cpu(), "scores": (local.cpu(), deep.cpu())})
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
            cols = opts.qwen_position_columns(torch.arange(int(t) * gh * gw), (int(t), gh, gw), 1.0)
            out.append(torch.cat([emb, opts.encode_columns(cols, emb.dtype).to(emb.device)], dim=1))
        return tuple(out)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """vLLM's recompute (``video_prune.evs.recompute_mrope_positions``) on our columns, decoded exactly."""
        from vllm.multimodal.video_prune.evs import recompute_mrope_positions

        width = 2 * 4
        device = multimodal_embeddings[0].device if len(multimodal_embeddings) else mrope_positions.device
        ids = (input_ids.to(device=device, dtype=torch.long) if isinstance(input_ids, Tensor)
               else torch.tensor(input_ids, dtype=torch.long, device=device))
        embeds = [mm[:, :-width] for mm in multimodal_embeddings]
        cols = [opts.decode_columns(mm[:, -width:]).T.contiguous() for mm in multimodal_embeddings]
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed

        with gpu_sync_allowed():
            positions, delta = recompute_mrope_positions(ids, cols, mrope_positions, num_computed_tokens,
                                                         self.config.vision_start_token_id,
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
