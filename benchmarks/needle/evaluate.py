"""Evaluate compression methods by the frozen reader's accuracy on their compressed token sets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .data import QUESTIONS, NeedleSet
from .reader import Reader, accuracy, predict_full


@dataclass(frozen=True)
class Variant:
    """A row of the results: a registered method plus config overrides, under a label."""

    label: str
    method: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def build(self, retention: float):
        import aot.methods as M

        m = M.get(self.method)
        return m, m.config(retention=retention, **dict(self.overrides))

    def key(self) -> str:
        return f"{self.method}:{','.join(f'{k}={v!r}' for k, v in self.overrides)}"


def _value(text: str):
    low = text.lower()
    if low == "none":
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_variant(text: str) -> Variant:
    """``LABEL=method:key=value,key=value`` (e.g. ``unit-lit=aot:mass=literal,anchor_share=0.7``)."""
    if "=" not in text:
        raise ValueError(f"--variant must look like LABEL=method:key=value,..., got {text!r}")
    label, rest = text.split("=", 1)
    method, _, opts = rest.partition(":")
    overrides = []
    for part in filter(None, opts.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise ValueError(f"bad override {part!r} in --variant {text!r} (want key=value)")
        overrides.append((k.strip(), _value(v.strip())))
    return Variant(label.strip(), method.strip(), tuple(overrides))


def predict_sets(reader: Reader, sets: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Predictions (B, Q) for token sets [(tokens (R, d), frames (R,), cells (R,))], padded and masked."""
    B = len(sets)
    R = max(1, max(t.shape[0] for t, _, _ in sets))
    d = sets[0][0].shape[-1]
    x = torch.zeros(B, R, d)
    fr = torch.zeros(B, R, dtype=torch.long)
    ce = torch.zeros(B, R, dtype=torch.long)
    mask = torch.zeros(B, R, dtype=torch.bool)
    for b, (t, f, c) in enumerate(sets):
        r = t.shape[0]
        x[b, :r], fr[b, :r], ce[b, :r], mask[b, :r] = t.float(), f, c, True
    with torch.inference_mode():
        logits = reader(x, fr, ce, mask)
    return torch.stack([lg.argmax(-1) for lg in logits], 1)


def predict_method(reader: Reader, ds: NeedleSet, compress: Callable | None, *, batch_size: int = 32,
                   progress: bool = True, desc: str = "") -> Tensor:
    """Predictions (M, Q) of ``reader`` on each item compressed once by ``compress(x, s, ls, grid)``
    (-> aot.Compressed); ``compress=None`` feeds the full tokens through the generic path."""
    from tqdm.auto import tqdm

    reader.eval()
    N = ds.base_x.shape[2]
    out = []
    bar = tqdm(total=len(ds), desc=desc, unit="item", leave=False, disable=not progress)
    for s in range(0, len(ds), batch_size):
        sets = []
        for i in range(s, min(s + batch_size, len(ds))):
            x, sc, ls = ds.full(i)
            if compress is None:
                F = x.shape[0]
                sets.append((x.flatten(0, 1), torch.arange(F).repeat_interleave(N), torch.arange(N).repeat(F)))
            else:
                with torch.inference_mode():
                    c = compress(x, sc, ls, ds.grid)
                sets.append((c.tokens, c.frames.long(), (c.positions % N).long()))
            bar.update(1)
        out.append(predict_sets(reader, sets))
    bar.close()
    return torch.cat(out)


@dataclass
class Result:
    label: str
    retention: float
    acc: dict[str, float] | None  # absolute accuracies, None if n/a
    rel: dict[str, float] | None  # relative to full tokens, %
    correct: list[list[int]] | None = None  # per item, per question: 1/0 (-1 undefined), for paired stats
    note: str = ""
    extra: dict = field(default_factory=dict)


def relative(acc: dict[str, float], full: dict[str, float]) -> dict[str, float]:
    rel = {q: 100.0 * acc[q] / full[q] if full[q] > 0 else float("nan") for q in QUESTIONS}
    rel["mean"] = sum(rel[q] for q in QUESTIONS) / len(QUESTIONS)
    return rel


def correctness(pred: Tensor, answers: Tensor) -> Tensor:
    """(M, Q) int: 1 correct, 0 wrong, -1 undefined question."""
    c = (pred == answers).int()
    return torch.where(answers >= 0, c, torch.full_like(c, -1))


def evaluate(reader: Reader, ds: NeedleSet, variant: Variant, retention: float, full_acc: dict[str, float], *,
             batch_size: int = 32, progress: bool = True) -> Result:
    try:
        method, config = variant.build(retention)
    except ValueError as e:
        return Result(variant.label, retention, None, None, note=f"n/a ({e})")

    def fn(x, s, ls, grid):
        return method(x, s, local_scores=ls, grid=grid, config=config)

    try:
        pred = predict_method(reader, ds, fn, batch_size=batch_size, progress=progress,
                              desc=f"{variant.label} @{retention:g}")
    except ValueError as e:  # e.g. dycoke below its minimum retention
        return Result(variant.label, retention, None, None, note=f"n/a ({str(e).splitlines()[0][:120]})")
    acc = accuracy(pred, ds.answers)
    return Result(variant.label, retention, acc, relative(acc, full_acc), correctness(pred, ds.answers).tolist())


def paired_diff(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """Mean over questions of (acc_a - acc_b) in points, and its standard error (items paired)."""
    A, B = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    diffs, var = 0.0, 0.0
    for q in range(A.shape[1]):
        m = A[:, q] >= 0
        d = A[m, q] - B[m, q]
        diffs += float(d.mean())
        var += float(d.var(unbiased=True)) / max(1, int(m.sum())) if m.sum() > 1 else 0.0
    Q = A.shape[1]
    return 100.0 * diffs / Q, 100.0 * math.sqrt(var) / Q  # questions treated as independent for the s.e.


__all__ = ["Variant", "parse_variant", "predict_sets", "predict_method", "evaluate", "Result", "relative",
           "paired_diff", "predict_full", "correctness"]
