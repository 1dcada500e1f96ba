"""The merge pass on irregular clip layouts, before and after it read its inputs position-major
(docs/gpu-core.md, "Merge pass without per-step gathers"), side by side in one process.

Both versions run inside the same ``aot.compress`` (the previous ``aggregate_inter`` is the frozen
copy tests/inter_before.py, patched in for the "before" calls), alternating call by call on the same
inputs, so machine load hits both alike. Reported: top-level operators of the call, and the median
wall time and thread CPU time (``time.thread_time``: time this thread ran, not time it waited for a
core; on a loaded machine much steadier than wall time) of the whole call and of aggregate_inter
inside it.

    python benchmarks/merge_order.py [--shapes 32x196x3584,...] [--batch 1] [--reps 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

import aot
from aot.runtime import torch_threads

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests"))
from inter_before import aggregate_inter_before  # noqa: E402

_spec = importlib.util.spec_from_file_location("launches", _ROOT / "benchmarks" / "launches.py")
launches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launches)
_COMPRESS = sys.modules["aot.compress"]
_NEW = _COMPRESS.aggregate_inter


def _timed(fn, clock):
    def wrapped(*a, **k):
        t0, c0 = time.perf_counter(), time.thread_time()
        out = fn(*a, **k)
        clock.append((time.perf_counter() - t0, time.thread_time() - c0))
        return out
    return wrapped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="32x196x3584")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, retention 0.1, today's AOTConfig defaults")
    print("\n| F x N x d | merge pass | top-level ops | compress wall ms | compress CPU ms | aggregate_inter wall ms | aggregate_inter CPU ms |")
    print("|---|---|---|---|---|---|---|")
    with torch_threads(args.threads):
        for spec in args.shapes.split(","):
            f, n, d = (int(v) for v in spec.split("x"))
            g = torch.Generator().manual_seed(0)
            shape = (f, n, d) if args.batch == 1 else (args.batch, f, n, d)
            x, s = torch.randn(*shape, generator=g), torch.rand(*shape[:-1], generator=g)
            impls = {"before": aggregate_inter_before, "after": _NEW}
            ops, whole, inner = {}, {k: [] for k in impls}, {k: [] for k in impls}
            try:
                for name, fn in impls.items():
                    _COMPRESS.aggregate_inter = fn
                    aot.compress(x, s)  # warm: cached index tensors
                    ops[name] = launches.count(lambda: aot.compress(x, s))["ops"]
                for _ in range(args.reps):
                    for name, fn in impls.items():
                        _COMPRESS.aggregate_inter = _timed(fn, inner[name])
                        t0, c0 = time.perf_counter(), time.thread_time()
                        aot.compress(x, s)
                        whole[name].append((time.perf_counter() - t0, time.thread_time() - c0))
            finally:
                _COMPRESS.aggregate_inter = _NEW
            label = spec.replace("x", " x ") if args.batch == 1 else f"{args.batch} x {spec.replace('x', ' x ')}"
            for name in impls:
                med = lambda rows, i: statistics.median(r[i] for r in rows) * 1e3  # noqa: E731
                print(f"| {label} | {name} | {ops[name]} | {med(whole[name], 0):.1f} | {med(whole[name], 1):.1f} | "
                      f"{med(inner[name], 0):.1f} | {med(inner[name], 1):.1f} |")


if __name__ == "__main__":
    main()
