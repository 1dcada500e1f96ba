"""Operators, host syncs and CPU time per call of each registered comparison method (issue 17 item 4).

For each pre-LLM comparison method at F x N x d (default 32 x 196 x 3584) and its retention
(10%; DyCoke 25%, its floor at 32 frames), one call under ``torch.profiler``:

- ops: top-level operators (profiler events with no parent operator): what a GPU would launch or
  dispatch from Python, one by one;
- syncs: host reads of device values: ``aten::_local_scalar_dense`` (``.item()``, ``bool(t)``,
  ``int(t)``, ``float(t)``), ``aten::nonzero`` at any depth (``torch.nonzero`` and boolean-mask
  indexing, which needs it), and ``Tensor.tolist`` calls (counted by a wrapper: tolist is no
  operator). The counts do not depend on machine load.
- CPU ms: the median wall time of ``--reps`` calls outside the profiler, at ``--threads`` threads.

The input is a video-like tensor: a new scene every 8 frames, in each a still background with half
the cells drifting, so the methods find scene cuts, static and moving cells (seeded).

    python benchmarks/method_launches.py [--shape 32x196x3584] [--methods visionzip,...]
                                         [--reps 3] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import aot.methods as methods
from aot.config import AOTConfig
from aot.runtime import torch_threads

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def comparison_methods() -> list[str]:
    return [n for n in methods.names(stage="pre-llm") if methods.get(n).config_cls is not AOTConfig]


def video(f: int, n: int, d: int, seed: int = 0, scene: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (F, N, d), scores (F, N)): a new scene every ``scene`` frames; in a scene a still background
    per cell, half the cells drifting (a random walk), and a little noise everywhere."""
    g = torch.Generator().manual_seed(seed)
    scenes = -(-f // scene)
    base = torch.randn(scenes, 1, n, d, generator=g).expand(scenes, scene, n, d).reshape(-1, n, d)[:f]
    moving = (torch.rand(1, n, 1, generator=g) < 0.5).float()
    walk = torch.cumsum(0.3 * torch.randn(f, n, d, generator=g), 0)
    x = base + moving * walk + 0.1 * torch.randn(f, n, d, generator=g)
    return x, torch.rand(f, n, generator=g)


def retention_of(name: str) -> float:
    return 0.25 if name == "dycoke" else 0.1


class _CountTolist:
    """Count Tensor.tolist calls while active (tolist reads the tensor on the host without an operator)."""

    def __enter__(self):
        self.count = 0
        self._orig = torch.Tensor.tolist
        counter = self

        def tolist(t):
            counter.count += 1
            return counter._orig(t)
        torch.Tensor.tolist = tolist
        return self

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._orig


def count(fn) -> dict:
    """Top-level operators and host syncs of one call of fn()."""
    with _CountTolist() as tl, profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    top = [e for e in events if e.cpu_parent is None]
    syncs = {op: sum(1 for e in events if e.name == op) for op in SYNC_OPS}
    syncs["tolist"] = tl.count
    return {"ops": len(top), "syncs": sum(syncs.values()), "sync_kinds": syncs}


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def measure(name: str, x: torch.Tensor, s: torch.Tensor, reps: int) -> dict:
    method = methods.get(name)
    config = method.config(retention=retention_of(name))

    def call():
        return method(x, s, config=config)
    row = {"method": name, "retention": config.retention}
    row.update(count(call))
    row["cpu_ms"] = median_ms(call, reps)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="32x196x3584", help="FxNxd (default 32x196x3584)")
    p.add_argument("--methods", default=None, help="comma-separated names (default: every comparison method)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    f, n, d = (int(v) for v in args.shape.split("x"))
    names = args.methods.split(",") if args.methods else comparison_methods()
    x, s = video(f, n, d)
    rows = []
    with torch_threads(args.threads):
        print(f"{f}x{n}x{d}, {args.threads} thread(s), torch {torch.__version__}")
        print(f"{'method':<10} {'ret':>5} {'ops':>6} {'syncs':>6} {'CPU ms':>8}  sync kinds")
        for name in names:
            row = measure(name, x, s, args.reps)
            rows.append(row)
            kinds = ", ".join(f"{k.replace('aten::', '')} {v}" for k, v in row["sync_kinds"].items() if v)
            print(f"{name:<10} {row['retention']:>5} {row['ops']:>6} {row['syncs']:>6} {row['cpu_ms']:>8.1f}  {kinds}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": [f, n, d], "threads": args.threads, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
