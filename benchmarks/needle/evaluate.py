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
    names = [q for q in QUESTIONS if q in acc]
    rel = {q: 100.0 * acc[q] / full[q] if full[q] > 0 else float("nan") for q in names}
    asked = [rel[q] for q in names if not math.isnan(rel[q])]
    rel["mean"] = sum(asked) / len(asked) if asked else float("nan")
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


def item_scores(correct, full: dict[str, float] | None = None) -> Tensor:
    """Per-item contributions z_i (M,) to the headline score, so that ``z.sum()`` is the mean over
    questions of each question's accuracy (in points; relative to ``full`` accuracies, in % of
    full, if given).  An item answers only some questions (-1 = not asked); z_i sums its answered
    questions' 1/0 weighted by 1 / (Q * n_q * full_q).  Sums of per-item terms make paired
    statistics exact about the correlation between an item's questions."""
    C = torch.as_tensor(correct, dtype=torch.float64)
    asked = C >= 0
    n_q = asked.sum(0).clamp_min(1).double()
    scale = torch.ones(C.shape[1], dtype=torch.float64)
    if full is not None:
        scale = torch.tensor([1.0 / full[q] if full[q] > 0 else 0.0 for q in QUESTIONS[: C.shape[1]]], dtype=torch.float64)
    n_asked = int((asked.sum(0) > 0).sum())  # questions asked of at least one item (the mean is over these)
    w = 100.0 * scale / (max(1, n_asked) * n_q)
    return (C.clamp_min(0) * asked * w).sum(1)


def paired_diff(a, b, full: dict[str, float] | None = None) -> tuple[float, float]:
    """Mean-over-questions score of a minus b (points; % of full if ``full`` is given) and its
    standard error, items paired: se = sqrt(M) * std(z_a - z_b) (see item_scores)."""
    return paired_diff_avg([(a, b)], full)


def paired_diff_avg(pairs, full: dict[str, float] | None = None) -> tuple[float, float]:
    """``paired_diff`` of scores averaged over several settings (e.g. retentions) of the same items:
    ``pairs`` = [(a, b), ...] correctness lists over the same M items; the per-item difference is
    averaged over the pairs first, so the s.e. accounts for an item's correlation across them."""
    if not pairs:
        raise ValueError("paired_diff_avg needs at least one (a, b) pair")
    d = torch.stack([item_scores(a, full) - item_scores(b, full) for a, b in pairs]).mean(0)
    M = d.numel()
    se = math.sqrt(M) * float(d.std(unbiased=True)) if M > 1 else 0.0
    return float(d.sum()), se


def score_se(a, full: dict[str, float] | None = None) -> float:
    """Standard error of one method's score over a random draw of items (unpaired)."""
    z = item_scores(a, full)
    return math.sqrt(z.numel()) * float(z.std(unbiased=True)) if z.numel() > 1 else 0.0


def items_needed(diff: float, se: float, n: int, z: float = 2.0) -> int | None:
    """Items needed for |diff| to be ``z`` standard errors, if se shrinks as 1/sqrt(n) (None: diff 0)."""
    if diff == 0:
        return None
    return int(math.ceil(n * (z * se / abs(diff)) ** 2))


def group_accuracy(correct, groups: list, full: dict[str, float] | None = None) -> dict:
    """Per group label: per-question accuracy (%, or % of full) and item count, over the items of
    that group (``groups[i]`` a hashable label of item i, e.g. its kind or needle-size bin)."""
    C = torch.as_tensor(correct)
    out = {}
    for g in dict.fromkeys(groups):
        m = torch.tensor([x == g for x in groups])
        row = {"n": int(m.sum())}
        for q, name in enumerate(QUESTIONS[: C.shape[1]]):
            c = C[m, q]
            c = c[c >= 0]
            if len(c):
                acc = 100.0 * float(c.float().mean())
                row[name] = acc / full[name] if full is not None and full.get(name) else acc
        out[g] = row
    return out


__all__ = ["Variant", "parse_variant", "predict_sets", "predict_method", "evaluate", "Result", "relative",
           "paired_diff", "item_scores", "score_se", "items_needed", "group_accuracy", "predict_full", "correctness"]
