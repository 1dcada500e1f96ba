"""Operator launches, host reads and CPU time per call of aot.compress and the registered pre-LLM methods.

On a GPU every top-level operator is a kernel launch (or a few) and every host read (``.item()``,
``.tolist()``, ``bool(tensor)``, ``nonzero``, a boolean-mask index, ``torch.unique``) drains the
queue. Counted on CPU with torch's profiler, the counts do not depend on the machine's load:

* ops: top-level ``aten::`` operators (events without an aten parent), the issue's count,
  counted on a repeated call (the core's constant index tensors are cached per layout, aot/indices.py;
  "first call" counts the call that builds them: a few operators and host-to-device copies each);
* kernels: the ops that do work on the device, i.e. without views and bare allocations (``view``,
  ``transpose``, ``unsqueeze``, ``expand``... unless a copy runs below them): what a GPU would launch;
* first call: with ``--deferred-stops`` also records the Sinkhorn stop caps (aot/stops.py: a read
  per stop check; a repeated call of the same shape reads once for all its solves);
* host reads: ``aten::_local_scalar_dense`` (item/bool/float/int), ``aten::nonzero`` and
  ``aten::unique*`` at any depth (boolean indexing calls nonzero inside), plus ``Tensor.tolist``
  (which reads memory without dispatching; counted by a TorchFunctionMode);
* CPU ms: median wall time of the call at the printed thread count (on a shared machine: noisy).

``--before`` also runs the pre-issue-17 core kept as a test oracle (tests/aot_reference).

    python benchmarks/launches.py [--reps 3] [--threads 1] [--before] [--old-defaults] [--deferred-stops] [--real]
                                  [--methods] [--scores] [--quick] [--breakdown] [--top]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import aot
import aot.methods
import aot.stops
from aot.runtime import torch_threads

_READS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::unique", "aten::_unique", "aten::unique_consecutive",
          "aten::_unique2", "aten::unique_dim")


class _ToList(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:
            self.count += 1
        return func(*args, **(kwargs or {}))


# top-level operators that only make a new view of existing memory (no kernel on a GPU), unless they
# copy (a reshape of a non-contiguous tensor, a dtype change): then a copy appears below them
_VIEWS = {"aten::view", "aten::reshape", "aten::transpose", "aten::unsqueeze", "aten::squeeze", "aten::expand",
          "aten::permute", "aten::slice", "aten::select", "aten::as_strided", "aten::alias", "aten::t",
          "aten::unbind", "aten::split", "aten::detach", "aten::flatten", "aten::view_as", "aten::expand_as",
          "aten::narrow", "aten::unflatten", "aten::_unsafe_view", "aten::to", "aten::contiguous", "aten::empty",
          "aten::lift_fresh", "aten::_reshape_alias", "aten::movedim", "aten::swapaxes", "aten::squeeze_",
          "aten::unsqueeze_"}
_COPIES = {"aten::copy_", "aten::clone", "aten::_to_copy", "aten::fill_", "aten::zero_"}


def _launches(event) -> bool:
    """Whether a top-level operator does work on the device (not a view or a bare allocation)."""
    if event.name not in _VIEWS:
        return True
    stack = list(event.cpu_children)
    while stack:
        e = stack.pop()
        if e.name in _COPIES:
            return True
        stack.extend(e.cpu_children)
    return False


def count(fn) -> dict:
    """ops, kernels (ops that are not views: what a GPU would launch), host reads and the most frequent
    top-level operators of one call of fn()."""
    from torch.profiler import ProfilerActivity, profile

    mode = _ToList()
    with profile(activities=[ProfilerActivity.CPU]) as prof, mode:
        fn()
    ops, kernels, reads, names = 0, 0, mode.count, collections.Counter()
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            ops += 1
            kernels += _launches(e)
            names[e.name] += 1
        if e.name in _READS:
            reads += 1
    return {"ops": ops, "kernels": kernels, "reads": reads, "top": names.most_common(8)}


_STAGES = [("aot.compress", "_check_values", "value check"), ("aot.compress", "select_anchors_varied", "anchors"),
           ("aot.compress", "aggregate_intra", "intra"), ("aot.compress", "aggregate_inter", "inter"),
           ("aot.compress", "clip_mix", "mix"), ("aot.intra", "sinkhorn_", "sinkhorn"),
           ("aot.temporal", "sinkhorn_", "sinkhorn")]


def breakdown(fn) -> collections.Counter:
    """Top-level operators of one call of fn() by stage of aot.compress: each stage function is wrapped
    in a profiler range while it runs; an operator counts for its innermost stage ("intra/sinkhorn":
    the solver inside the intra stage; "compress": outside every stage)."""
    import functools
    import importlib

    from torch.profiler import ProfilerActivity, profile, record_function

    saved = []
    for mod_name, attr, label in _STAGES:
        mod = importlib.import_module(mod_name)
        orig = getattr(mod, attr)

        def wrapped(*a, _orig=orig, _label=label, **k):
            with record_function("stage:" + _label):
                return _orig(*a, **k)
        saved.append((mod, attr, orig))
        setattr(mod, attr, functools.wraps(orig)(wrapped))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        for mod, attr, orig in saved:
            setattr(mod, attr, orig)
    by = collections.Counter()
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        labels, p = [], e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            if p.name.startswith("stage:"):
                labels.append(p.name[6:])
            p = p.cpu_parent
        if p is None:  # top level
            by["/".join(reversed(labels)) or "compress"] += 1
    return by


def cpu_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.rand(*shape[:-1], generator=g)


def cases(quick: bool = False):
    """(label, shape) of the compress rows."""
    if quick:
        return [("8x36x16", (8, 36, 16)), ("16x36x16", (16, 36, 16)), ("batch 4 x 8x36x16", (4, 8, 36, 16))]
    return [("32x196x3584", (32, 196, 3584)), ("64x169x3584", (64, 169, 3584)),
            ("batch 4 x 32x196x3584", (4, 32, 196, 3584))]


def _reference():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import aot_reference

    return aot_reference.compress


def _row(label: str, which: str, call, reps: int, first_call: bool = True) -> dict:
    """Counts of a first call (it builds the cached index tensors and records the Sinkhorn stop caps,
    aot/indices.py, aot/stops.py) and of a repeated call, and the repeated call's CPU time."""
    import aot.stops

    if first_call:
        aot.stops.clear()
    first = count(call)
    c = count(call)
    return {"label": label, "which": which, "c": c, "first": first, "ms": cpu_ms(call, reps)}


def _real_inputs():
    """The bundled sample video, 32 frames, DINOv2 ViT-S/14 tokens and attention scores (32 x 196 x 384)."""
    from aot.demo import sample_video
    from aot.models.dinov2 import encode_video, load_dinov2
    from aot.video import read_frames

    enc = encode_video(load_dinov2(), read_frames(sample_video(), num_frames=32).frames, progress=False)
    return enc.features, enc.scores, enc.local_scores


def rows(args) -> list[dict]:
    out = []
    config = aot.AOTConfig(retention=0.1)
    # the defaults before issue 22's round 2 (clips of F // 8, 70% anchors, half of them local): what
    # the issue-17 targets were set against, and what today's longer clips cost beside it
    old = aot.AOTConfig(retention=0.1, anchor_density=None, anchor_share=0.7, global_share=0.5)
    impls = [("after", aot.compress, config)] + ([("before", _reference(), config)] if args.before else [])
    if args.old_defaults:
        impls += [("after, pre-#22 defaults", aot.compress, old)]
        if args.before:
            impls += [("before, pre-#22 defaults", _reference(), old)]
    inputs = [(f"compress {label} @10%", *_inputs(shape), None) for label, shape in cases(args.quick)]
    if args.real:
        x, s, loc = _real_inputs()
        inputs.append(("compress sample video DINOv2 32x196x384 @10%", x, s, loc))
    for label, x, s, loc in inputs:
        for which, fn, cfg in impls:
            call = lambda: fn(x, s, local_scores=loc, config=cfg)  # noqa: E731
            out.append(_row(label, which, call, args.reps))
            if args.deferred_stops and fn is aot.compress:
                with aot.stops.deferred(True):
                    out.append(_row(label, which + ", deferred stops", call, args.reps))
    if args.scores:  # the score hook's reduction on one SigLIP layer of a 32-frame video (16 heads, 729 x 72)
        from aot.models.scores import attention_received

        shape = (8, 16, 729, 72) if args.quick else (32, 16, 729, 72)
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        out.append(_row(f"attention_received {'x'.join(map(str, shape))}, chunk 256", "after",
                        lambda: attention_received(q, k), args.reps))
    if args.methods:
        shape = (8, 36, 16) if args.quick else (32, 196, 3584)
        x, s = _inputs(shape)
        for name in aot.methods.names(stage="pre-llm"):
            m = aot.methods.get(name)
            cfg = m.config(retention=0.3 if name == "dycoke" else 0.1)
            which = "after" if name.startswith("aot") else "-"  # the peers' code is not part of this core
            try:
                out.append(_row(f"{name} {'x'.join(map(str, shape))}", which, lambda: m(x, s, config=cfg), args.reps))
            except ValueError as e:  # a budget this method cannot meet at this shape
                print(f"{name}: skipped ({e})", file=sys.stderr)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--before", action="store_true", help="also run the pre-issue-17 core (tests/aot_reference)")
    ap.add_argument("--old-defaults", action="store_true",
                    help="also compress with the defaults before issue 22 (F // 8 clips, anchor_share 0.7, global_share 0.5)")
    ap.add_argument("--deferred-stops", action="store_true",
                    help="also compress with the Sinkhorn stop checks deferred to one read (aot.stops.deferred(True))")
    ap.add_argument("--real", action="store_true", help="also the bundled sample video's DINOv2 tokens (~15 s to encode)")
    ap.add_argument("--methods", action="store_true", help="also every registered pre-LLM method")
    ap.add_argument("--scores", action="store_true", help="also the score hook's reduction (aot.models.scores)")
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    ap.add_argument("--top", action="store_true", help="print the most frequent operators of each row")
    ap.add_argument("--breakdown", action="store_true", help="operators of each compress row by stage (repeated call)")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, retention 0.1 (dycoke 0.3)\n")
        print("| call | core | top-level ops | kernels | host reads | first call: ops / reads | CPU ms |")
        print("|---|---|---|---|---|---|---|")
        res = rows(args)
        for r in res:
            c, f = r["c"], r["first"]
            print(f"| {r['label']} | {r['which']} | {c['ops']} | {c['kernels']} | {c['reads']} | "
                  f"{f['ops']} / {f['reads']} | {r['ms']:.1f} |")
        if args.breakdown:
            config = aot.AOTConfig(retention=0.1)
            for label, shape in cases(args.quick):
                x, sc = _inputs(shape)
                aot.compress(x, sc, config=config)
                by = breakdown(lambda: aot.compress(x, sc, config=config))
                print(f"\ncompress {label} @10% by stage ({sum(by.values())} operators): "
                      + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
        if args.top:
            for r in res:
                print(f"{r['label']} ({r['which']}): {r['c']['top']}")


if __name__ == "__main__":
    main()
