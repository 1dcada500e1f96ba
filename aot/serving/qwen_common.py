"""What the Qwen2.5-VL and Qwen3-VL (Qwen3.5, MoE) model subclasses share (read and run with vLLM 0.32).

``AotQwenMixin`` goes in front of a vLLM Qwen class and holds the parts that are the same for every
Qwen family: the override check and the score blocks (``__init__``), the score hooks on the tower's
``MMEncoderAttention`` (q and k after rotary; attention received per segment, in query chunks; under
tensor parallelism the per-key sums are all-reduced), scores averaged per merge group on the LLM grid,
the tower run with the hooks (``_process_video_input``), the per-request retention field, one video's
compression to exactly its budget, and the position-column plumbing. A family class says what differs:

* ``aot_default_layers(vision_config)``: the transformers adapter's default score blocks;
* ``_aot_slice_blocks()``: blocks whose attention segment is a temporal slice (taken from the grid:
  FlashInfer rewrites ``cu_seqlens``); the other blocks' segments are ``cu_seqlens`` (windows);
* ``_aot_tower(pixels, grid_thw)``: the tower's output (T/4, D) and the window order of its rows
  (a permutation of merge groups, or None).

The processor side shares ``retention_of`` / ``retention_field`` and ``AotRetentionFieldMixin``.
No vLLM import at module level except for the distributed all-reduce inside the hook.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.qwen2_5_vl import segment_received
from . import options as opts

__all__ = ["FIELD", "retention_of", "retention_field", "AotRetentionFieldMixin", "AotQwenMixin", "with_columns",
           "split_columns"]

FIELD = "aot_retention"  # per-video multimodal field: the request's own retention (NaN: the server's)


def retention_of(item_or_value) -> float | None:
    """A field element, a tensor or a number -> the retention it carries (None: NaN, the server's)."""
    data = getattr(item_or_value, "data", item_or_value)
    if data is None:
        return None
    value = float(data.reshape(-1)[0]) if isinstance(data, Tensor) else float(data)
    return None if np.isnan(value) else value


def retention_field(videos: int, retention: float | None) -> Tensor:
    """(videos,) float64: the request's retention for each of its videos (NaN where it gave none)."""
    return torch.full((videos,), float("nan") if retention is None else float(retention), dtype=torch.float64)


class AotRetentionFieldMixin:
    """Processor side: the ``aot_retention`` field travels with each video (batched over videos, kept on
    CPU; it is part of vLLM's multimodal hash, so caches never mix retentions)."""

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        from vllm.multimodal.inputs import MultiModalFieldConfig

        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if FIELD in hf_inputs:
            fields[FIELD] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields


def with_columns(emb: Tensor, cols: Tensor) -> Tensor:
    """(R, D) rows and (R, C) int64 position columns -> (R, D + 2C): the columns encoded in the rows' dtype."""
    return torch.cat([emb, opts.encode_columns(cols, emb.dtype).to(emb.device)], dim=1)


def split_columns(multimodal_embeddings, columns: int) -> tuple[list[Tensor], list[Tensor]]:
    """``with_columns``'s rows -> (the rows without the columns, each item's decoded (R, columns) int64)."""
    width = 2 * columns
    embeds = [mm[:, :-width] for mm in multimodal_embeddings]
    cols = [opts.decode_columns(mm[:, -width:]) for mm in multimodal_embeddings]
    return embeds, cols


class AotQwenMixin:
    """The shared part of aot's Qwen model subclasses (see the module docstring for what a family adds)."""

    aot_serving = True  # what aot.serving.cpu_fix looks for
    supported_video_pruning_methods = ("evs", "vidcom2")  # either switch turns the machinery on; aot decides

    @staticmethod
    def aot_default_layers(vision_config) -> tuple[int, int]:
        raise NotImplementedError

    def __init__(self, *, vllm_config, prefix: str = ""):  # vLLM's loader reads the signature, always passes prefix
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        arch = type(self).__name__
        self.aot_options = opts.options_of(self.config, arch)
        if not self.is_multimodal_pruning_enabled:
            raise ValueError(f"{arch} needs vLLM's pruning switch on: add --video-pruning-rate "
                             f"{1 - self.aot_options.config.retention:.4g} (any value in (0, 1); aot serve sets it)")
        n = len(self.visual.blocks)
        d_local, d_global = self.aot_default_layers(self.config.vision_config)
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

    # ------------------------------------------------------------------ what a family says

    def _aot_slice_blocks(self) -> set[int]:
        return set(range(len(self.visual.blocks)))

    def _aot_tower(self, pixels: Tensor, grid_thw: list[list[int]]) -> tuple[Tensor, Tensor | None]:
        return self.visual(pixels, grid_thw=grid_thw), None

    # ------------------------------------------------------------------ scores from the tower

    def _score_hook(self, out: list, per_slice: bool, grid_thw: list[list[int]]):
        tp = self.visual.blocks[0].attn.num_attention_heads_per_partition
        total_heads = self.config.vision_config.num_heads

        def hook(module, args, kwargs):
            q = kwargs.get("query", args[0] if args else None)
            k = kwargs.get("key", args[1] if len(args) > 1 else None)
            if per_slice:  # a temporal slice per segment, from the grid (FlashInfer rewrites cu_seqlens)
                sizes = [h * w for t, h, w in grid_thw for _ in range(t)]
                cu = torch.tensor([0] + sizes).cumsum(0)
            else:  # a window block: its windows
                cu = kwargs.get("cu_seqlens")
            with torch.no_grad():
                q2, k2 = q[0].transpose(0, 1), k[0].transpose(0, 1)  # (heads, T, dh)
                s = segment_received(q2, k2, cu, chunk=self.aot_options.chunk) * q2.shape[0]  # summed over heads
                if tp != total_heads:  # tensor parallelism: each rank holds some heads
                    from vllm.distributed import tensor_model_parallel_all_reduce

                    s = tensor_model_parallel_all_reduce(s)
                out.append(s / total_heads)

        return hook

    def _to_llm_grid(self, raw: Tensor, grid_thw: list[list[int]], order: Tensor | None) -> list[Tensor]:
        """(T,) patch scores in the tower's row order -> per video (t, h/2 * w/2): the merge-group mean,
        taken back from the window order (``order``, if any) to the processor's, per-slice normalised."""
        unit = self.visual.spatial_merge_size ** 2
        groups = raw.reshape(-1, unit).mean(-1)
        if order is not None:
            groups = groups[torch.argsort(order.to(groups.device))]
        out, first = [], 0
        for t, h, w in grid_thw:
            n = t * h * w // unit
            out.append(groups[first: first + n].reshape(t, -1) / (h * w) * unit)
            first += n
        return out

    def _process_video_input(self, video_input):
        arch = type(self).__name__
        if video_input["type"] == "video_embeds":
            raise ValueError(f"{arch} compresses from pixels (it needs the tower's attention); precomputed "
                             f"video_embeds are not supported")
        if self.use_data_parallel:
            raise NotImplementedError(f"{arch}: --mm-encoder-tp-mode data is not supported; use the default")
        grid_thw = [[int(v) for v in row] for row in video_input["video_grid_thw"].tolist()]
        per_slice = self._aot_slice_blocks()
        rec: dict[int, list] = {layer: [] for layer in set(self.aot_layers)}
        handles = [self.visual.blocks[layer].attn.attn.register_forward_pre_hook(
            self._score_hook(rec[layer], layer in per_slice, grid_thw), with_kwargs=True) for layer in rec]
        try:
            embeds, order = self._aot_tower(video_input["pixel_values_videos"], grid_thw)
        finally:
            for h in handles:
                h.remove()
        local = self._to_llm_grid(rec[self.aot_layers[0]][0], grid_thw, order)
        deep = self._to_llm_grid(rec[self.aot_layers[1]][0], grid_thw, order)
        self._aot_scores = list(zip(local, deep))
        merge = self.visual.spatial_merge_size
        return embeds.split([t * h * w // merge // merge for t, h, w in grid_thw])

    def _parse_and_validate_video_input(self, **kwargs):
        values = kwargs.get(FIELD)
        if values is None:
            self._aot_retentions = []
        else:
            flat = values if isinstance(values, Tensor) else torch.stack([torch.as_tensor(v).reshape(()) for v in values])
            self._aot_retentions = [retention_of(v) for v in flat.reshape(-1)]
        return super()._parse_and_validate_video_input(**kwargs)

    # ------------------------------------------------------------------ one video's compression

    def _aot_compress(self, v: int, main: Tensor, grid: tuple[int, int, int]):
        """Video v's main channels (t * gh * gw, d) -> (its options, the method's Compressed), which kept
        exactly the budget the processor sized its placeholders with (else a RuntimeError: never reaches
        the engine)."""
        t, gh, gw = grid
        r = self._aot_retentions[v] if v < len(self._aot_retentions) else None
        o = opts.with_retention(self.aot_options, r)
        want = opts.video_budget(o, t, gh * gw)
        local, deep = self._aot_scores[v]
        x = main.reshape(1, t, gh * gw, -1).float()
        c = o.method(x, deep.reshape(1, t, gh * gw).float(), local_scores=local.reshape(1, t, gh * gw).float(),
                     grid=(gh, gw), config=o.config)
        if c.tokens.shape[1] != want:
            raise RuntimeError(f"aot: method {o.method.name!r} kept {c.tokens.shape[1]} rows of video {v}, "
                               f"not its budget {want} (grid {t}x{gh}x{gw}, retention {o.config.retention})")
        return o, c
