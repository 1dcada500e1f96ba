"""Per-token attention scores from a vision tower, without eager attention.

Token-pruning methods rank visual tokens by the attention they receive (or the
attention the CLS token pays them).  Asking a transformers model for
``output_attentions=True`` forces the eager path in every layer and keeps every
layer's (B, heads, T, T) map alive until the forward returns.  Instead we hook
only the layers we need: a forward pre-hook takes the attention module's input
``hidden_states``, recomputes q and k with the module's own projections, reduces
them to a (B, T) score on the spot and drops the T x T map.  The model itself
keeps its attention implementation (SDPA).

torch is the only dependency; nothing here imports transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = [
    "attention_received",
    "cls_attention",
    "hf_qk",
    "record_scores",
]

# A qk_fn maps (attention module, its hidden_states input (B, T, d)) to
# (q, k), each (B, heads, T, dh), in the scaling convention softmax(q k^T / sqrt(dh)).
QKFn = Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]
# A reduction maps (q, k) to one score per key token, (B, T).
Reduce = Callable[[Tensor, Tensor], Tensor]


def _check_qk(q: Tensor, k: Tensor) -> None:
    if not isinstance(q, Tensor) or not isinstance(k, Tensor):
        raise TypeError(f"q and k must be torch.Tensor, got {type(q).__name__} and {type(k).__name__}")
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q and k must be 4-D (B, heads, T, dh), got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share batch, heads and head dim: got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )


def _check_chunk(chunk) -> None:
    if chunk is None:
        return
    if isinstance(chunk, bool) or not isinstance(chunk, int):
        raise TypeError(f"chunk must be a positive int or None, got {type(chunk).__name__}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive int or None, got {chunk}")


def attention_received(q: Tensor, k: Tensor, *, chunk: int | None = 256) -> Tensor:
    """Attention each key token receives, averaged over heads and queries.

    ``q`` (B, heads, Tq, dh), ``k`` (B, heads, Tk, dh) -> (B, Tk)::

        softmax(q k^T / sqrt(dh), dim=-1).mean(heads).mean(queries)

    Each row of the softmax sums to 1, so each output row sums to 1 as well.
    Computed in float32 (half-precision softmax over hundreds of keys loses
    the small values we rank by), one batch element and ``chunk`` queries at
    a time, in one reused (heads, chunk, Tk) buffer: the peak extra memory is
    O(heads * chunk * Tk), whatever the batch, never the T x T map.
    ``chunk=None`` takes all queries of a batch element at once.
    """
    _check_qk(q, k)
    _check_chunk(chunk)
    batch, heads, tq, dh = q.shape
    tk = k.shape[2]
    step = tq if chunk is None else min(chunk, tq)
    total = q.new_zeros((batch, tk), dtype=torch.float32)  # (B, Tk)
    buffer = q.new_empty(heads * step * tk, dtype=torch.float32)  # logits of one chunk, reused
    for b in range(batch):
        kt = (k[b].float() * dh**-0.5).transpose(-1, -2)  # (heads, dh, Tk), the scale folded in once
        for start in range(0, tq, step):
            qc = q[b, :, start : start + step].float()  # (heads, c, dh)
            rows = heads * qc.shape[1]
            logits = torch.matmul(qc, kt, out=buffer[: rows * tk].view(heads, -1, tk))  # (heads, c, Tk)
            # softmax in place: exp of the max-shifted logits, normalised below
            logits -= logits.amax(dim=-1, keepdim=True)
            logits.exp_()
            inverse = logits.sum(dim=-1).reciprocal_()  # (heads, c): 1 / row sums
            # sum of the normalised rows over heads and queries as one vector-matrix product,
            # so no normalised copy of the chunk is made
            total[b] += (inverse.view(1, rows) @ logits.view(rows, tk))[0]
    return total / (heads * tq)


def cls_attention(q: Tensor, k: Tensor, *, index: int = 0) -> Tensor:
    """Attention paid by one query token (the CLS token, at ``index``) to every key, averaged over heads.

    ``q`` (B, heads, Tq, dh), ``k`` (B, heads, Tk, dh) -> (B, Tk), rows summing to 1.
    """
    _check_qk(q, k)
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int, got {type(index).__name__}")
    if not -q.shape[2] <= index < q.shape[2]:
        raise ValueError(f"index must address one of the {q.shape[2]} query tokens, got {index}")
    dh = q.shape[-1]
    index %= q.shape[2]  # a negative index counts from the end
    row = q[:, :, index : index + 1].float() * dh**-0.5  # (B, heads, 1, dh)
    logits = row @ k.float().transpose(-1, -2)  # (B, heads, 1, Tk)
    return logits.softmax(dim=-1).mean(dim=1).squeeze(1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)  # (B, heads, T, dh)


def hf_qk(module: nn.Module, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
    """q and k of a transformers ViT-style self-attention module, (B, heads, T, dh) each.

    Works with the projection names of transformers >= 5 (``q_proj``/``k_proj``,
    e.g. Dinov2Attention, SiglipAttention) and of transformers 4.x
    (``query``/``key``, e.g. Dinov2SelfAttention).  Assumes the usual
    1/sqrt(dh) scaling; a module with another scale is rejected rather than
    silently scored wrong.
    """
    if hasattr(module, "q_proj") and hasattr(module, "k_proj"):
        q_lin, k_lin = module.q_proj, module.k_proj
    elif hasattr(module, "query") and hasattr(module, "key"):
        q_lin, k_lin = module.query, module.key
    else:
        raise TypeError(
            f"hf_qk needs an attention module with q_proj/k_proj or query/key projections, "
            f"got {type(module).__name__}; pass your own qk_fn"
        )
    heads = None
    for name in ("num_heads", "num_attention_heads"):
        heads = getattr(module, name, None)
        if heads is not None:
            break
    if heads is None:
        config = getattr(module, "config", None)
        heads = getattr(config, "num_attention_heads", None)
    if heads is None:
        raise TypeError(f"cannot find the number of heads of {type(module).__name__}; pass your own qk_fn")
    q = _split_heads(q_lin(hidden_states), heads)
    k = _split_heads(k_lin(hidden_states), heads)
    scaling = getattr(module, "scaling", getattr(module, "scale", None))
    if scaling is not None and abs(float(scaling) - q.shape[-1] ** -0.5) > 1e-6:
        raise ValueError(
            f"{type(module).__name__} scales attention logits by {scaling}, not 1/sqrt(head_dim); pass your own qk_fn"
        )
    return q, k


def _resolve_reduce(reduce, chunk) -> Reduce:
    if callable(reduce):
        return reduce
    if reduce == "received":
        return lambda q, k: attention_received(q, k, chunk=chunk)
    if reduce == "cls":
        return cls_attention
    raise ValueError(f"reduce must be 'received', 'cls' or a callable (q, k) -> (B, T), got {reduce!r}")


@contextmanager
def record_scores(
    layers: Mapping[str, nn.Module],
    qk_fn: QKFn = hf_qk,
    *,
    reduce: str | Reduce = "received",
    chunk: int | None = 256,
) -> Iterator[dict[str, list[Tensor]]]:
    """Record per-token attention scores of chosen attention modules during forward passes.

    ``layers`` maps a name to an attention module whose first input (or
    ``hidden_states`` keyword) is the (B, T, d) sequence it attends over.  While
    the context is open, every forward of such a module appends one float32
    (B, T) tensor to ``recorded[name]`` -- ``reduce`` applied to
    ``qk_fn(module, hidden_states)``: ``"received"`` (:func:`attention_received`,
    chunked by ``chunk``), ``"cls"`` (:func:`cls_attention`) or a callable.

    Usage::

        with record_scores({"deep": model.encoder.layer[-2].attention}) as rec:
            model(pixel_values)
        scores = torch.cat(rec["deep"])  # (B, T)

    Only the reduced scores are kept.  The hooks are removed when the context
    exits, also on an exception.  Attention masks are not supported (vision
    towers attend over all tokens); a module called with a tensor mask raises
    ``NotImplementedError``.
    """
    if not isinstance(layers, Mapping) or not layers:
        raise TypeError("layers must be a non-empty mapping of name -> torch.nn.Module")
    for name, module in layers.items():
        if not isinstance(module, nn.Module):
            raise TypeError(f"layers[{name!r}] must be a torch.nn.Module, got {type(module).__name__}")
    if not callable(qk_fn):
        raise TypeError(f"qk_fn must be callable (module, hidden_states) -> (q, k), got {type(qk_fn).__name__}")
    _check_chunk(chunk)
    reducer = _resolve_reduce(reduce, chunk)

    recorded: dict[str, list[Tensor]] = {name: [] for name in layers}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if not isinstance(hidden, Tensor):
                raise RuntimeError(
                    f"record_scores: could not find the hidden_states input of layers[{name!r}] "
                    f"({type(module).__name__}); hook the module that receives the token sequence"
                )
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            if isinstance(mask, Tensor):
                raise NotImplementedError(
                    f"record_scores: layers[{name!r}] was called with an attention mask; "
                    "masked attention is not supported"
                )
            # no_grad: the scores are statistics, never part of a training graph
            with torch.no_grad():
                q, k = qk_fn(module, hidden)
                scores = reducer(q, k)
            recorded[name].append(scores.float())

        return hook

    handles = [module.register_forward_pre_hook(make_hook(name), with_kwargs=True) for name, module in layers.items()]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
