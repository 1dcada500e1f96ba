"""Pruning visual tokens inside a transformers decoder (FastV, PDrop), shared by the model adapters.

``InLLMPruner(layers, rope=None)`` puts a forward pre-hook on every decoder layer of a Qwen2-style
language model (``layer.input_layernorm``, ``layer.self_attn.{q,k}_proj``, RoPE given to the layer as
``position_embeddings=(cos, sin)``, each (B, L, head_dim); Qwen2, Llama, Qwen2.5-VL's text model,
whose rotary embedding merges the three M-RoPE sections (t, h, w) into those tables before the layers
run, so ``rotate_half_rope`` is its attention's RoPE). ``rope``: (x, cos, sin) -> x rotated; by default
the ``apply_rotary_pos_emb`` of the attention's own module. The wiring into ``aot.patch`` is in
``aot.models.inllm_patch``. An adapter announces a prefill with ``pruner.expect(visual, query,
stages)`` right before the language model runs on it (visual: (B, L) bool, which positions are
visual tokens; query: (B,) the position of the last prompt token; stages: ``aot.methods.inllm.Stage``
list), and ``pruner.done()`` after it.

During that prefill, at a stage's ``score_layer`` the hook recomputes q (for the one query row) and
k (all rows) from the layer's input with the layer's own norm, projections and RoPE, softmaxes that
one row (mask and scaling as the layer has them), averages over heads and keeps the (B, L) scores;
no attention map is stored and the model keeps its attention implementation (SDPA). At the stage's
``prune_before`` layer the top ``keep`` visual tokens (and every non-visual token) stay, in their
order; hidden states are gathered, and from then on every layer gets the matching rows of the
position embeddings (kept tokens keep their original positions), position ids and 4-D mask.

KV cache: layers that ran pruned write only the kept tokens' keys and values (earlier layers keep
them all). The kept positions of every pruned layer are recorded on the cache object
(``cache._aot_inllm``), so that later calls with that cache (``generate``'s decoding steps) give
those layers only the matching columns of their mask. Positions of new tokens come from the full
length (layer 0's cache), so decoding continues at the unpruned positions.

Limits: a DynamicCache (the default) or none; a prefill on an empty cache; every row of a batch must
hold the same number of visual tokens (so rows stay equally long); masks as None or a 4-D tensor
(SDPA, eager), not flash-attention's 2-D padding mask or flex attention's block masks.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

__all__ = ["InLLMPruner", "CacheRecord", "last_prompt_token", "query_scores", "rotate_half_rope"]


@dataclass
class CacheRecord:
    """What a pruned prefill left in a KV cache: its full length and each pruned layer's kept positions."""

    full_length: int
    kept: dict[int, Tensor] = field(default_factory=dict)  # layer -> (B, n_layer) original positions


@dataclass
class _Plan:
    visual: Tensor  # (B, L) bool
    query: Tensor  # (B,) original position of the ranking query
    stages: list  # [Stage]
    idx: Tensor | None = None  # (B, n) original positions of the current sequence; None: all
    scores: dict = field(default_factory=dict)  # prune_before -> ((B, n) scores, idx they refer to)
    record: CacheRecord | None = None
    counts: list = field(default_factory=list)  # visual tokens left after each stage
    seconds: float = 0.0


def last_prompt_token(attention_mask: Tensor | None, shape: tuple[int, int], device) -> Tensor:
    """(B,) position of each row's last real token (mask 1); L - 1 without a mask."""
    b, length = shape
    if attention_mask is None:
        return torch.full((b,), length - 1, dtype=torch.long, device=device)
    m = attention_mask.to(device).bool()
    pos = torch.arange(length, device=device).expand(b, length)
    return torch.where(m, pos, torch.full_like(pos, -1)).amax(1)


def rotate_half_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE with per-token tables: x (B, H, n, dh), cos/sin (B, n, dh) -> (B, H, n, dh).

    Each token's angle table covers the whole head (the second half repeats the first), and
    x * cos + (-x2, x1) * sin rotates every pair (i, i + dh / 2). Qwen2.5-VL's text model hands its
    layers such tables with the three M-RoPE sections already merged (frequency i takes the t, h or
    w position by ``mrope_section``), so this is exactly what its attention applies."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + turned * sin[:, None]


def _check_tables(cos: Tensor, b: int, n: int, dh: int) -> None:
    if cos.dim() != 3 or cos.shape[0] not in (1, b) or cos.shape[1] != n or cos.shape[2] != dh:
        raise ValueError(
            f"in-LLM pruning needs the layer's position_embeddings as (cos, sin) of shape (B, n, head_dim) = "
            f"({b}, {n}, {dh}) (M-RoPE sections already merged, as Qwen2.5-VL's text model gives them), got "
            f"{tuple(cos.shape)}; a model that applies its RoPE sections inside attention needs another scorer")


def _default_rope(attn: nn.Module):
    fn = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    if fn is None:
        raise TypeError(f"cannot find apply_rotary_pos_emb beside {type(attn).__name__}; pass rope= to InLLMPruner")
    return lambda x, cos, sin: fn(x, x, cos, sin)[0]


def _gather_seq(x: Tensor, idx: Tensor) -> Tensor:
    """x (..., Bx, L, D) with Bx in (1, B), idx (B, n) -> (..., B, n, D)."""
    shape = list(x.shape)
    shape[-3] = idx.shape[0]
    x = x.expand(shape)
    return x.gather(-2, idx[..., None].expand(*shape[:-2], idx.shape[1], shape[-1]))


def _gather_last(x: Tensor, idx: Tensor) -> Tensor:
    """x (..., Bx, L) with Bx in (1, B), idx (B, n) -> (..., B, n)."""
    shape = list(x.shape)
    shape[-2] = idx.shape[0]
    x = x.expand(shape)
    return x.gather(-1, idx.expand(*shape[:-2], *idx.shape))


def _gather_mask(mask, rows: Tensor | None, cols: Tensor):
    """4-D mask (Bm, h, Lq, Lk) -> rows (B, nq) (None: all) and columns (B, nk) of each sequence."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        raise NotImplementedError(
            f"in-LLM pruning needs the attention mask as None or a 4-D tensor (attn_implementation 'sdpa' or "
            f"'eager'); got {type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}")
    b = cols.shape[0]
    m = mask.expand(b, *mask.shape[1:])
    if rows is not None:
        m = m.gather(2, rows[:, None, :, None].expand(b, m.shape[1], rows.shape[1], m.shape[3]))
    return m.gather(3, cols[:, None, None, :].expand(b, m.shape[1], m.shape[2], cols.shape[1]))


def query_scores(layer: nn.Module, hidden: Tensor, position_embeddings, mask, query: Tensor, rope=None) -> Tensor:
    """Attention the token at ``query`` (B,) pays every token of ``hidden`` (B, n, d) in ``layer``,
    averaged over heads: (B, n), each row sums to 1.

    q (one row) and k are recomputed from the layer's input with its own ``input_layernorm``,
    ``q_proj``/``k_proj`` (then ``q_norm``/``k_norm`` where the attention has them: Qwen3-VL) and
    RoPE (``position_embeddings`` (cos, sin) of these n tokens), grouped
    k/v heads repeated, scaled by the module's ``scaling``; ``mask`` (4-D, bool or additive, rows and
    columns of these n tokens) or, without one, causal (keys up to the query)."""
    attn = layer.self_attn
    rope = rope or _default_rope(attn)
    b, n, _ = hidden.shape
    dh = attn.head_dim
    x = layer.input_layernorm(hidden)
    rows = torch.arange(b, device=hidden.device)
    xq = x[rows, query][:, None]  # (B, 1, d)
    q = attn.q_proj(xq).view(b, 1, -1, dh)
    k = attn.k_proj(x).view(b, n, -1, dh)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3(-VL): per-head RMSNorm of q and k before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, 1, dh), (B, Hkv, n, dh)
    cos, sin = position_embeddings
    _check_tables(cos, b, n, dh)
    q = rope(q, _gather_seq(cos, query[:, None]), _gather_seq(sin, query[:, None]))
    every = torch.arange(n, device=hidden.device).expand(b, n)
    k = rope(k, _gather_seq(cos, every), _gather_seq(sin, every))
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * float(attn.scaling)  # (B, H, n)
    if mask is not None:
        row = mask[rows if mask.shape[0] == b else torch.zeros_like(rows), 0, query]  # (B, n)
        allowed = row if row.dtype == torch.bool else row == 0
    else:
        allowed = torch.arange(n, device=hidden.device)[None] <= query[:, None]
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return logits.softmax(-1).mean(1)


class InLLMPruner:
    """Pre-hooks on every decoder layer of ``layers`` that prune visual tokens as announced; see module doc."""

    def __init__(self, layers: nn.ModuleList, rope=None):
        self.layers = layers
        self.rope = rope
        self.plan: _Plan | None = None
        self.last: dict = {}
        self.handles = [layer.register_forward_pre_hook(partial(self._pre_hook, i), with_kwargs=True)
                        for i, layer in enumerate(layers)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.plan = None

    # -- announcing a prefill -------------------------------------------------------------------

    def expect(self, visual: Tensor, query: Tensor, stages: list) -> None:
        """The next language-model forward is a prefill of visual (B, L) to prune with ``stages``."""
        b, length = visual.shape
        counts = visual.sum(1)
        if bool((counts != counts[0]).any()):
            raise ValueError(f"in-LLM pruning needs the same number of visual tokens in every row of a batch, "
                             f"got {counts.tolist()}; run the rows one at a time")
        if bool(visual[torch.arange(b, device=visual.device), query].any()):
            raise ValueError("the last prompt token is a visual token: put the question after the video")
        n_layers = len(self.layers)
        last = -1
        for st in stages:
            if not (0 <= st.score_layer <= st.prune_before < n_layers) or st.score_layer < last:
                raise ValueError(f"stage {st} does not fit {n_layers} layers after the stage before it")
            last = st.prune_before
        self.plan = _Plan(visual.bool(), query.long(), list(stages))
        self.last = {"visual_tokens": int(counts[0]), "stages": [], "seconds": 0.0}

    def done(self) -> None:
        plan, self.plan = self.plan, None
        if plan is not None:
            self.last = {"visual_tokens": int(plan.visual.sum(1)[0]), "length": int(plan.visual.shape[1]),
                         "batch": int(plan.visual.shape[0]),
                         "stages": [(st.prune_before, c) for st, c in zip(plan.stages, plan.counts)],
                         "seconds": plan.seconds}

    # -- the hook -------------------------------------------------------------------------------

    def _pre_hook(self, i: int, module: nn.Module, args: tuple, kwargs: dict):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        plan = self.plan
        if plan is None:
            return self._decode_step(i, cache, args, kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        if i == 0:
            self._start(plan, hidden, cache)
        started = time.perf_counter()
        for st in plan.stages:
            if st.score_layer == i:
                kw = self._gathered(plan, kwargs)
                qpos = self._current(plan, plan.query[:, None]).squeeze(1)
                s = query_scores(module, hidden, kw["position_embeddings"], kw["attention_mask"], qpos, self.rope)
                plan.scores[st.prune_before] = (s, plan.idx)
        for st in plan.stages:
            if st.prune_before == i:
                hidden = self._prune(plan, st, hidden)
        plan.seconds += time.perf_counter() - started
        if plan.idx is None:
            return None
        plan.record.kept[i] = plan.idx
        kwargs = self._gathered(plan, kwargs)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _start(self, plan: _Plan, hidden: Tensor, cache) -> None:
        if hidden.shape[:2] != plan.visual.shape:
            raise ValueError(f"announced a prefill of {tuple(plan.visual.shape)} tokens, the language model got "
                             f"{tuple(hidden.shape[:2])}")
        if cache is not None:
            from transformers import DynamicCache

            if not isinstance(cache, DynamicCache):
                raise NotImplementedError(f"in-LLM pruning needs a DynamicCache (the default), "
                                          f"got {type(cache).__name__}")
            if cache.get_seq_length() > 0:
                raise NotImplementedError("in-LLM pruning needs the prefill to start on an empty cache")
        plan.record = CacheRecord(hidden.shape[1])
        if cache is not None:
            cache._aot_inllm = plan.record

    @staticmethod
    def _current(plan: _Plan, positions: Tensor) -> Tensor:
        """Original positions (B, k) -> their index in the current sequence (they must be kept)."""
        if plan.idx is None:
            return positions
        hit = plan.idx[:, None, :] == positions[:, :, None]  # (B, k, n)
        return hit.float().argmax(-1)

    def _prune(self, plan: _Plan, st, hidden: Tensor) -> Tensor:
        scores, at = plan.scores.pop(st.prune_before)
        if at is not plan.idx:
            raise RuntimeError("another stage pruned between this stage's scoring and pruning layers")
        b = hidden.shape[0]
        idx = plan.idx if plan.idx is not None else torch.arange(hidden.shape[1], device=hidden.device).expand(b, -1)
        vis = plan.visual.gather(1, idx)
        left = int(vis.sum(1)[0])
        keep = min(st.keep, left)
        plan.counts.append(keep)
        if keep == left:
            return hidden
        top = scores.masked_fill(~vis, float("-inf")).topk(keep, dim=1).indices
        kept = (~vis).scatter(1, top, True)
        sel = kept.nonzero()[:, 1].view(b, -1)  # row-major: each row's kept indices in order
        plan.idx = idx.gather(1, sel)
        return hidden.gather(1, sel[..., None].expand(-1, -1, hidden.shape[-1]))

    @staticmethod
    def _gathered(plan: _Plan, kwargs: dict) -> dict:
        if plan.idx is None:
            return kwargs
        idx = plan.idx
        kw = dict(kwargs)
        cos, sin = kwargs["position_embeddings"]
        kw["position_embeddings"] = (_gather_seq(cos, idx), _gather_seq(sin, idx))
        if kwargs.get("position_ids") is not None:
            kw["position_ids"] = _gather_last(kwargs["position_ids"], idx)
        kw["attention_mask"] = _gather_mask(kwargs.get("attention_mask"), idx, idx)
        return kw

    @staticmethod
    def _decode_step(i: int, cache, args: tuple, kwargs: dict):
        record = getattr(cache, "_aot_inllm", None) if cache is not None else None
        if record is None or i not in record.kept:
            return None
        mask = kwargs.get("attention_mask")
        if mask is None:
            return None
        kept = record.kept[i]
        if not isinstance(mask, Tensor) or mask.dim() != 4:
            _gather_mask(mask, None, kept)  # raises the message
        extra = torch.arange(record.full_length, mask.shape[-1], device=kept.device).expand(kept.shape[0], -1)
        kw = dict(kwargs)
        kw["attention_mask"] = _gather_mask(mask, None, torch.cat([kept, extra], 1))
        return args, kw
