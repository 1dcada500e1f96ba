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


def _check_max_bytes(max_bytes, name: str = "max_bytes") -> None:
    if max_bytes is None:
        return
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"{name} must be a positive int (bytes) or None, got {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"{name} must be a positive int (bytes) or None, got {max_bytes}")


# The default working set of the score reductions off the CPU (CUDA and other accelerators): see
# attention_received.  A 32-frame SigLIP layer (32 x 16 heads x 729 x 729 float32 logits) is 1.09 GB
# in full; 256 MiB holds 6 of its frames, so the layer takes 6 steps instead of 96 query chunks.
DEVICE_SCORE_BYTES = 256 * 2**20


def step_bytes(n: int, heads: int, c: int, tk: int, dh: int) -> int:
    """Bytes of one step's float32 working set: the (n, heads, c, Tk) logits and float32 copies of
    its (n, heads, c, dh) queries and (n, heads, Tk, dh) keys (the keys, scaled, always; the queries
    only for non-float32 inputs, counted anyway)."""
    return 4 * heads * n * (c * tk + (c + tk) * dh)


def score_bytes(device: torch.device, heads: int, tq: int, tk: int, dh: int, chunk: int | None = 256,
                max_bytes: int | None = None) -> int:
    """The working set (bytes, :func:`step_bytes`) that :func:`attention_received` steps in for
    (heads, Tq, Tk, dh) elements on ``device``: ``max_bytes`` if given, else one element's
    ``min(chunk, Tq)`` queries (the query chunk of the loop before budgets) on the CPU, and at least
    :data:`DEVICE_SCORE_BYTES` elsewhere."""
    _check_chunk(chunk)
    _check_max_bytes(max_bytes)
    if max_bytes is not None:
        return max_bytes
    rows = tq if chunk is None else min(chunk, tq)
    base = step_bytes(1, heads, max(rows, 1), tk, dh)
    return base if torch.device(device).type == "cpu" else max(base, DEVICE_SCORE_BYTES)


def _steps(batch: int, heads: int, tq: int, tk: int, dh: int, budget: int) -> tuple[int, int]:
    """(elements n, queries c) of a step whose working set (:func:`step_bytes`) fits ``budget``
    bytes: whole elements when one fits, else query chunks of one element (at least one query)."""
    element = step_bytes(1, heads, tq, tk, dh)
    if budget >= element:
        return max(1, min(batch, budget // max(element, 1))), tq
    return 1, max(1, min(tq, (budget // (4 * heads) - tk * dh) // max(tk + dh, 1)))


def attention_received(q: Tensor, k: Tensor, *, chunk: int | None = 256, max_bytes: int | None = None) -> Tensor:
    """Attention each key token receives, averaged over heads and queries.

    ``q`` (B, heads, Tq, dh), ``k`` (B, heads, Tk, dh) -> (B, Tk)::

        softmax(q k^T / sqrt(dh), dim=-1).mean(heads).mean(queries)

    Each row of the softmax sums to 1, so each output row sums to 1 as well.
    Computed in float32 (half-precision softmax over hundreds of keys loses
    the small values we rank by) in steps whose working set (float32 logits
    and q, k copies, :func:`step_bytes`) fits ``max_bytes``: a step takes as
    many whole batch elements as fit, logits (n, heads, Tq, Tk), or, when one
    element does not fit, a chunk of its queries, (1, heads, c, Tk), at least
    one query.  One logits buffer is reused; the B x heads x Tq x Tk map is
    never built unless it fits.  A step is about 10 operators whatever its
    size (a GPU kernel launch each), so the launches fall as the budget grows.

    ``max_bytes=None`` (the default) depends on the device.  On the CPU it is
    ``chunk`` queries of one element, as before budgets existed: 12 MB of
    logits (16 heads x 256 x 729) plus 4.5 MB of copies, and the result is
    bit for bit the element-by-element, chunk-by-chunk loop's.  Elsewhere
    (CUDA) it is at least :data:`DEVICE_SCORE_BYTES` (256 MiB): a 32-frame
    SigLIP layer then takes 6 steps (about 90 operators) instead of 96 query
    chunks (about 1,000), i.e. some 5 ms of launches less per hooked layer,
    while 256 MiB stays small beside a GPU's memory and the layer's 1.1 GB
    map.  On a CPU the arithmetic dominates and a larger buffer only costs
    memory and cache.  The GPU default is chosen by counting launches (about
    5 us each), not measured on a GPU.  ``chunk=None`` takes all queries of an
    element (the CPU default is then one element's map).  Other budgets group
    the sums over rows differently, so the last bits may differ from the CPU
    default's; the per-row softmax arithmetic is the same.
    """
    _check_qk(q, k)
    batch, heads, tq, dh = q.shape
    tk = k.shape[2]
    n, c = _steps(batch, heads, tq, tk, dh, score_bytes(q.device, heads, tq, tk, dh, chunk, max_bytes))
    rows = n * heads * c
    total = q.new_empty((batch, 1, tk), dtype=torch.float32)  # (B, 1, Tk): one row per element
    buffer = q.new_empty(rows * tk, dtype=torch.float32)  # logits of one step, reused
    weights = q.new_empty(rows, dtype=torch.float32)  # 1 / row sums of one step
    views = {}  # (elements, queries) of a step -> its buffer views, made once
    for b0 in range(0, batch, n):
        b1 = min(b0 + n, batch)
        kb = k[b0:b1]
        kt = (kb if kb.dtype == torch.float32 else kb.float()) * dh**-0.5  # (n, heads, Tk, dh), scaled once
        kt = kt.transpose(-1, -2)  # (n, heads, dh, Tk)
        qb = q[b0:b1]  # (n, heads, Tq, dh)
        out = total[b0] if b1 - b0 == 1 else total[b0:b1]  # (1, Tk) or (n, 1, Tk)
        for start in range(0, tq, c):
            qc = qb if c == tq else qb.narrow(2, start, min(c, tq - start))  # (n, heads, c, dh)
            if qc.dtype != torch.float32:
                qc = qc.float()
            shape = (qc.shape[0], qc.shape[2])  # a full step, or a last, smaller one
            if shape not in views:
                views[shape] = _step_views(buffer, weights, *shape, heads, tk)
            logits, flat, sums, wrow = views[shape]
            m = shape[0]
            torch.matmul(qc, kt, out=logits)  # (m, heads, c, Tk)
            # softmax in place: exp of the max-shifted logits, normalised below
            logits -= logits.amax(dim=-1, keepdim=True)
            logits.exp_()
            torch.sum(logits, dim=-1, out=sums)  # (m, heads, c)
            wrow.reciprocal_()  # 1 / row sums
            # sum of the normalised rows over heads and queries as one vector-matrix product per
            # element, so no normalised copy of the step is made
            if m > 1:
                torch.bmm(wrow, flat, out=out)  # (m, 1, rows) @ (m, rows, Tk)
            elif start == 0:  # into a fresh (aligned) row, then copied: BLAS rounding can depend on alignment
                out.copy_(torch.mm(wrow, flat))  # (1, rows) @ (rows, Tk)
            else:  # later query chunks of one element add up in chunk order
                out.add_(torch.mm(wrow, flat))
    return (total / (heads * tq)).view(batch, tk)


def _step_views(buffer: Tensor, weights: Tensor, n: int, c: int, heads: int, tk: int):
    """Views of the first n * heads * c rows of the step buffers: logits (n, heads, c, Tk), the same
    rows as (n, heads * c, Tk), row sums (n, heads, c) and the same as (n, 1, heads * c); for one
    element (n = 1) the last two of those are 2-D, (heads * c, Tk) and (1, heads * c)."""
    rows = n * heads * c
    logits = buffer[: rows * tk].view(n, heads, c, tk)
    sums = weights[:rows].view(n, heads, c)
    if n == 1:
        return logits, buffer[: rows * tk].view(rows, tk), sums, weights[:rows].view(1, rows)
    return logits, logits.view(n, heads * c, tk), sums, weights[:rows].view(n, 1, heads * c)


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


def _resolve_reduce(reduce, chunk, max_bytes=None) -> Reduce:
    if callable(reduce):
        return reduce
    if reduce == "received":
        return lambda q, k: attention_received(q, k, chunk=chunk, max_bytes=max_bytes)
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
    max_bytes: int | None = None,
) -> Iterator[dict[str, list[Tensor]]]:
    """Record per-token attention scores of chosen attention modules during forward passes.

    ``layers`` maps a name to an attention module whose first input (or
    ``hidden_states`` keyword) is the (B, T, d) sequence it attends over.  While
    the context is open, every forward of such a module appends one float32
    (B, T) tensor to ``recorded[name]`` -- ``reduce`` applied to
    ``qk_fn(module, hidden_states)``: ``"received"`` (:func:`attention_received`,
    stepped by ``chunk`` and ``max_bytes``), ``"cls"`` (:func:`cls_attention`) or a callable.

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
    _check_max_bytes(max_bytes)
    reducer = _resolve_reduce(reduce, chunk, max_bytes)

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
