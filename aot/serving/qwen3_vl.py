"""AOT inside vLLM's Qwen3-VL and Qwen3.5 (read and run with vLLM 0.32; ``options.TESTED_VLLM``).

The code is ``AotQwen3Mixin``; ``AotQwen3VLForConditionalGeneration``, ``AotQwen3VLMoeForConditionalGeneration``,
``AotQwen3_5ForConditionalGeneration`` and ``AotQwen3_5MoeForConditionalGeneration`` put it over vLLM's
classes (all four subclass vLLM's Qwen3-VL class; Qwen3.5: same tower, no DeepStack).

Selected with ``--hf-overrides '{"architectures": ["AotQwen3VLForConditionalGeneration"], "aot": {...}}'``
and turned on with ``--video-pruning-rate`` > 0 (the rate is not used; the budget comes from the aot
config; ``aot serve`` sets 1 - retention).

Layout (the choice, and why it matches the transformers adapter). vLLM's Qwen3-VL writes a video as t
blocks ``<s seconds><|vision_start|>`` + pads + ``<|vision_end|>``; with pruning on, the whole run
(timestamps and markers included) is one multimodal embedding, so the *prompt's* token ids only fix
its length: the processor puts all K = ``aot.budget`` pads in slice 0's block (vLLM's lumped form,
K sized by aot, never by vLLM's floor rule) and the model, once the method has chosen, writes the
embedding rows slice by slice: slice f's block gets exactly the tokens the method kept in slice f
(0 to h * w of them), every timestamp and start/end marker as the text embedding of its own token.
That is the transformers adapter's layout (``aot.models.qwen3_vl``: pads shrink slice by slice, every
``<t seconds>``, vision start and end stays); the lumped ids never reach the language model. The run
has the same length whatever the split (the timestamps are tokenised one by one), so the placeholder
count is K per video whatever the method keeps where (asserted).

* Processor: vLLM computes the pad count in two places from module-level count functions
  (``compute_retained_tokens_count``, ``vidcom2_compute_retained_tokens_count``); this module wraps
  both once so that, while an aot processor is working (a thread-local), they return ``aot.budget``
  with the request's retention (``mm_processor_kwargs={"aot_retention": r}``); otherwise vLLM's own.
* Scores: forward pre-hooks on two blocks' ``MMEncoderAttention`` (q, k after rotary), attention
  received within each temporal slice (no windows in this tower), in query chunks, merge-group mean,
  per-slice normalised: ``aot.models.qwen3_vl.llm_grid_scores``'s rule. TP: per-key sums all-reduced.
* DeepStack: vLLM's tower returns [main | level 1 | level 2 ...] along channels; the method runs on the
  main channels and the levels are reduced with its mix (``aot.models.qwen3_vl.reduce_levels``, the
  same selection and merge weights), as the transformers adapter does.
* Positions: every row of the run carries 7 columns (``run_columns``: t, h, w relative to the run's
  first row, the row's index in the run, the run length, the rows before its first pad, the run's
  largest position), each sent as two base-256 digits (``options.encode_columns``, exact in bfloat16):
  a kept token has the uncompressed prompt's M-RoPE position of its source cell, every marker and
  timestamp its own uncompressed position, so the text after the video continues where the
  uncompressed prompt would (the transformers adapter's positions). ``place_runs`` writes them into
  the prompt's positions chunk by chunk (chunked prefill); ``get_mrope_input_positions`` gives the text
  after each run its final position before the encoder runs (a prefix-cache hit that ends after a run
  schedules none of its rows, so ``place_runs`` never sees it). vLLM's own recompute is not used: it finds
  a run by the first ``<|vision_start|>`` at or after the chunk start, which with transformers 5.x's
  processors (they expand only ``<|video_pad|>``, so the template's own ``<|vision_start|>`` precedes
  the first timestamp) is the marker *before* the run; on the tiny checkpoint it failed with a shape error.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from ..models.qwen3_vl import default_layers, reduce_levels
from . import options as opts
from .qwen_common import FIELD, AotQwenMixin, AotRetentionFieldMixin, retention_field, retention_of, split_columns, \
    with_columns

import vllm
from vllm.model_executor.models import qwen3_vl as _v
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_5 import (
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeProcessingInfo,
    Qwen3_5ProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeProcessingInfo
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig

opts.check_vllm_version(vllm.__version__)

__all__ = ["AotQwen3VLForConditionalGeneration", "AotQwen3VLMoeForConditionalGeneration",
           "AotQwen3_5ForConditionalGeneration", "AotQwen3_5MoeForConditionalGeneration", "AotQwen3Mixin",
           "AotQwen3VLMultiModalProcessor", "ARCH", "slice_counts", "run_columns", "place_runs"]

ARCH = "AotQwen3VLForConditionalGeneration"
COLS = 7  # t, h, w, row in run, run length, lead, run max (run_columns)

_ACTIVE = threading.local()  # .options: the ServeOptions of the request an aot processor is working on


def _counting(original):
    def count(*args, **kw):
        o = getattr(_ACTIVE, "options", None)
        if o is None:
            return original(*args, **kw)
        return opts.video_budget(o, int(kw["num_frames"]), int(kw["tokens_per_frame"]))

    count.aot_original = original
    return count


for _name in ("compute_retained_tokens_count", "vidcom2_compute_retained_tokens_count"):
    if not hasattr(getattr(_v, _name), "aot_original"):
        setattr(_v, _name, _counting(getattr(_v, _name)))


def _options(hf_config) -> opts.ServeOptions:
    arch = (getattr(hf_config, "architectures", None) or [ARCH])[0]
    return opts.options_of(hf_config, arch)


def slice_counts(positions: Tensor, frames: int, per_frame: int) -> list[int]:
    """Kept tokens per slice from their flat grid indices (R,), which must run slice by slice (the
    transformers adapter lays the tokens out in this order too)."""
    f = positions.long().cpu() // per_frame
    if f.numel() and bool((f[1:] < f[:-1]).any()):
        raise RuntimeError("aot: the method returned tokens out of slice order; Qwen3-VL's layout needs them "
                           "slice by slice")
    return torch.bincount(f, minlength=frames).tolist()


class AotQwen3VLMultiModalProcessor(AotRetentionFieldMixin, Qwen3VLMultiModalProcessor):
    def _with(self, retention):
        o = opts.with_retention(_options(self.info.get_hf_config()), retention)  # a bad value fails here
        _ACTIVE.options = o
        return o

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        hf_kwargs = dict(hf_kwargs)
        r = hf_kwargs.pop(opts.REQUEST_KWARG, None)
        self._with(r)
        try:
            out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        finally:
            _ACTIVE.options = None
        thw = out.get("video_grid_thw")
        if thw is not None:
            out[FIELD] = retention_field(len(thw), r)
        return out

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        kwargs = {k: v for k, v in hf_processor_mm_kwargs.items() if k != opts.REQUEST_KWARG}
        updates = list(super()._get_prompt_updates(mm_items, kwargs, out_mm_kwargs))
        for i, u in enumerate(updates):
            if u.modality != "video":
                continue
            inner = u.replacement

            def video(item_idx: int, inner=inner):
                item = out_mm_kwargs["video"][item_idx]
                self._with(retention_of(item.get(FIELD)) if FIELD in item else None)
                try:
                    return inner(item_idx)
                finally:
                    _ACTIVE.options = None

            updates[i] = type(u)(modality=u.modality, target=u.target, replacement=video)
        return updates


class AotQwen3Mixin(AotQwenMixin):
    """What aot adds to vLLM's Qwen3-VL class and its subclasses (Qwen3.5: the same tower, no DeepStack);
    the shared part (scores, tower run, retention field, one video's compression) is ``AotQwenMixin``.
    Every block of this tower attends within temporal slices (no windows): ``AotQwenMixin``'s defaults."""

    aot_default_layers = staticmethod(default_layers)  # the first DeepStack tap and the last block

    # ------------------------------------------------------------------ compression, layout, positions

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        grid_thw = [[int(v) for v in row] for row in video_input["video_grid_thw"].tolist()]
        merge = self.visual.spatial_merge_size
        out, last = [], []
        for v, (emb, (t, h, w)) in enumerate(zip(video_embeds_split, grid_thw)):
            gh, gw = h // merge, w // merge
            o, c = self._aot_compress(v, emb[:, : self.visual_dim], (t, gh, gw))
            tokens, positions = c.tokens[0].to(emb.dtype), c.positions[0]
            if self.use_deepstack:
                if c.mix is None:
                    raise ValueError(f"method {o.method.name!r} returns no mix, so Qwen3-VL's DeepStack levels "
                                     f"cannot be reduced with its weights")
                (levels,) = reduce_levels(c, [emb[:, self.visual_dim:].float()])
                tokens = torch.cat([tokens, levels.to(emb.dtype)], dim=1)
            counts = slice_counts(positions, t, gh * gw)
            rows = self._aot_rows(tokens, counts, positions, video_input.timestamps[v], (t, h, w))
            out.append(rows)
            last.append({"grid": (t, gh, gw), "retention": o.config.retention, "kept": int(tokens.shape[0]),
                         "slice_tokens": counts, "rows": int(rows.shape[0]), "positions": positions.cpu(),
                         "scores": tuple(s.cpu() for s in self._aot_scores[v])})
        self.aot_last = {"videos": last}
        self._aot_scores = []
        return tuple(out)

    def _video_ids(self, counts: list[int], timestamps) -> list[int]:
        return list(Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=counts, timestamps=timestamps, tokenizer=self._tokenizer,
            vision_start_token_id=self.config.vision_start_token_id,
            vision_end_token_id=self.config.vision_end_token_id, video_token_id=self.config.video_token_id,
            select_token_id=True).full)

    def _aot_rows(self, tokens: Tensor, counts: list[int], positions: Tensor, timestamps, thw) -> Tensor:
        """(K, visual_dim * (1 + levels)) kept rows -> (L, that + 2 * COLS): the video's whole run (markers and
        timestamps as text embeddings, slice f's pads = its kept tokens), then its encoded position columns."""
        t, h, w = thw
        merge = self.visual.spatial_merge_size
        dev = tokens.device
        ids = torch.tensor(self._video_ids(counts, timestamps), device=dev)
        is_video = ids == self.config.video_token_id
        text = self.get_language_model().embed_input_ids(ids).to(tokens.dtype)
        rows = torch.zeros(len(ids), tokens.shape[1], dtype=tokens.dtype, device=dev)
        rows[:, : self.visual_dim] = text
        rows[is_video] = tokens
        # the uncompressed run's M-RoPE positions (relative to its first timestamp token), gathered
        full = self._video_ids([(h // merge) * (w // merge)] * t, timestamps)
        full_ids = torch.tensor(full)
        pos_full = self._full_run_positions(full, thw)
        full_video = full_ids == self.config.video_token_id
        cols = torch.zeros(len(ids), COLS, dtype=torch.long)
        cols[is_video.cpu(), :3] = pos_full[full_video][positions.long().cpu()]
        cols[~is_video.cpu(), :3] = pos_full[~full_video]
        return with_columns(rows, run_columns(cols[:, :3], int(is_video.nonzero()[0, 0])))

    def _full_run_positions(self, full: list[int], thw) -> Tensor:
        """(L, 3) M-RoPE positions of an uncompressed video run's ids (every slice's h * w pads), relative to
        its first row: vLLM's own Qwen3-VL rule, which is transformers'."""
        feature = _v.MultiModalFeatureSpec(
            data=_v.MultiModalKwargsItem({"video_grid_thw": _v.MultiModalFieldElem(
                data=torch.tensor(list(thw)), field=MultiModalFieldConfig.batched("video").field)}),
            modality="video", identifier="aot", mm_position=_v.PlaceholderRange(offset=0, length=len(full)))
        return Qwen3VLForConditionalGeneration._get_mrope_input_positions(full, [feature], self.config)[0].T

    def _run_top(self, run: list[int], feature) -> int:
        """The largest position of a media item's run relative to its first row, from the prompt alone: an
        image, max(h, w) - 1 of its LLM grid; a video, that of its uncompressed run (each slice block's pads,
        however many the prompt holds, become h * w: the top depends on the grid and timestamps only)."""
        merge = self.config.vision_config.spatial_merge_size
        if feature.modality == "image":
            _, h, w = (int(v) for v in feature.data["image_grid_thw"].data.tolist())
            return max(h // merge, w // merge) - 1
        t, h, w = (int(v) for v in feature.data["video_grid_thw"].data.tolist())
        video, start = self.config.video_token_id, self.config.vision_start_token_id
        full: list[int] = []
        for token in run:
            if token != video:
                full.append(token)
                if token == start:
                    full.extend([video] * ((h // merge) * (w // merge)))
        return int(self._full_run_positions(full, (t, h, w)).max())

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """The prompt's M-RoPE positions before the encoder runs: text at its final positions (after a media
        run, one past the uncompressed run's largest position: what ``place_runs`` writes too), each run's
        rows provisional (``place_runs`` writes them when the run is computed). The text must be right here
        already: a prefix-cache hit that ends after a run schedules no row of it, so ``place_runs`` never
        sees that run (vLLM's own rule, on the lumped run, put the text elsewhere: the repeat of a request
        decoded other tokens)."""
        cols, cursor, pos = [], 0, 0
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            off, length = f.mm_position.offset, f.mm_position.length
            n = off - cursor
            cols.append(np.broadcast_to(np.arange(n), (3, n)) + pos)
            pos += n
            top = self._run_top(list(input_tokens[off: off + length]), f)
            cols.append(np.broadcast_to(np.minimum(np.arange(length), top), (3, length)) + pos)
            pos += top + 1
            cursor = off + length
        n = len(input_tokens) - cursor
        cols.append(np.broadcast_to(np.arange(n), (3, n)) + pos)
        positions = np.concatenate(cols, axis=1).reshape(3, -1)
        return torch.from_numpy(positions), int(positions.max() + 1 - len(input_tokens))

    def _postprocess_image_embeds_evs(self, image_embeds_split, image_input):
        """Images with pruning on: their full grid's positions in the same columns as the videos'."""
        merge = self.visual.spatial_merge_size
        out = []
        for emb, (t, h, w) in zip(image_embeds_split, image_input["image_grid_thw"].tolist()):
            grid = torch.from_numpy(np.indices((int(t), int(h) // merge, int(w) // merge)).reshape(3, -1).T.copy())
            out.append(with_columns(emb, run_columns(grid, 0)))
        return tuple(out)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """The positions of this prefill chunk's runs from our columns (``place_runs``)."""
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed

        ids = (input_ids.to(device="cpu", dtype=torch.long) if isinstance(input_ids, Tensor)
               else torch.tensor(input_ids, dtype=torch.long))
        embeds, cols = split_columns(multimodal_embeddings, COLS)
        with gpu_sync_allowed():
            positions = place_runs(ids, [c.cpu() for c in cols], mrope_positions.cpu(), num_computed_tokens,
                                   (self.config.video_token_id, self.config.image_token_id))
        delta = int(positions.max()) + 1 - int(ids.numel())
        return embeds, positions.to(mrope_positions.device), delta


@MULTIMODAL_REGISTRY.register_processor(AotQwen3VLMultiModalProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class AotQwen3VLForConditionalGeneration(AotQwen3Mixin, Qwen3VLForConditionalGeneration):
    pass


@MULTIMODAL_REGISTRY.register_processor(AotQwen3VLMultiModalProcessor, info=Qwen3_5ProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class AotQwen3_5ForConditionalGeneration(AotQwen3Mixin, Qwen3_5ForConditionalGeneration):
    """Qwen3.5 (dense): vLLM's class subclasses Qwen3-VL's; no DeepStack (``use_deepstack`` is False)."""


@MULTIMODAL_REGISTRY.register_processor(AotQwen3VLMultiModalProcessor, info=Qwen3VLMoeProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class AotQwen3VLMoeForConditionalGeneration(AotQwen3Mixin, Qwen3VLMoeForConditionalGeneration):
    """Qwen3-VL-MoE: vLLM's class subclasses Qwen3-VL's (same tower and DeepStack, MoE text model)."""


@MULTIMODAL_REGISTRY.register_processor(AotQwen3VLMultiModalProcessor, info=Qwen3_5MoeProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class AotQwen3_5MoeForConditionalGeneration(AotQwen3Mixin, Qwen3_5MoeForConditionalGeneration):
    """Qwen3.5-MoE: vLLM's class subclasses its Qwen3.5 class (no DeepStack, MoE text model)."""


def run_columns(pos: Tensor, lead: int) -> Tensor:
    """(L, 3) positions of a run's rows relative to its first row -> (L, COLS): t, h, w, the row's index in
    the run, the run length, ``lead`` (rows before its first media token: timestamps and vision start) and
    the run's largest position (text after it continues one further)."""
    n = pos.shape[0]
    extra = torch.tensor([n, lead, int(pos.max())]).expand(n, 3)
    return torch.cat([pos.long(), torch.arange(n)[:, None], extra], dim=1)


def place_runs(ids: Tensor, runs: list[Tensor], positions: Tensor, computed: int, media_ids) -> Tensor:
    """M-RoPE positions (3, N) after placing this chunk's rows of each run.

    ids (N,) the prompt; runs: per media item in this chunk, (n, COLS) columns of its rows (``run_columns``);
    the rows of the first item start at ``computed`` if its run began before, else at the run's start:
    ``lead`` rows before the first media token (video or image id) at or after the cursor. Each run's rows
    get base + their columns (base: one past the position before the run); once a run is complete, the
    text after it counts on from base + its largest position + 1 (a later run fixes its own rows)."""
    positions = positions.clone()
    media = torch.isin(ids, torch.tensor(list(media_ids)))
    cursor = computed
    for cols in runs:
        n = cols.shape[0]
        if n == 0:
            continue
        j, length, lead, top = (int(v) for v in cols[0, 3:7])
        if j > 0:
            first = cursor
        else:
            later = media[cursor:].nonzero()
            if not len(later):
                raise RuntimeError("aot: no media token left in the prompt for a multimodal run")
            first = cursor + int(later[0, 0]) - lead
        start = first - j
        base = int(positions[:, start - 1].max()) + 1 if start > 0 else 0
        positions[:, first: first + n] = cols[:, :3].T + base
        cursor = first + n
        if j + n == length:  # the run is complete: the text after it
            after = positions.shape[1] - cursor
            positions[:, cursor:] = torch.arange(after) + base + top + 1
    return positions
