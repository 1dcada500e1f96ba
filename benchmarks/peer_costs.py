"""Operators, host reads and CPU time per call of FastVID, FlashVID, HoliTom and PruneVid, before and after issue 17's
item 4 (the previous code is kept as a test oracle in tests/peers_reference), side by side in one process.

    python benchmarks/peer_costs.py [--reps 3] [--threads 1] [--shape 32x196x3584] [--retention 0.1] [--video-like]

Input: randn tokens and rand scores (seed 0), as benchmarks/launches.py; ``--video-like``:
method_launches.py's synthetic video (a scene every 8 frames, still and drifting cells). CPU ms: the
median of ``--reps`` calls, wall time and process CPU time (the latter less disturbed by other jobs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root / "benchmarks"), str(root / "tests")]

import aot.methods  # noqa: E402
import peers_reference  # noqa: E402
from aot.runtime import torch_threads  # noqa: E402
from launches import count  # noqa: E402
from method_launches import video  # noqa: E402


def times(fn, reps: int) -> tuple[float, float]:
    """Median wall and process CPU milliseconds of fn() over reps calls, after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", default="32x196x3584")
    ap.add_argument("--retention", type=float, default=0.1)
    ap.add_argument("--methods", default="fastvid,flashvid,holitom,prunevid")
    ap.add_argument("--video-like", action="store_true")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    if args.video_like:
        x, s = video(*shape)
    else:
        g = torch.Generator().manual_seed(0)
        x, s = torch.randn(*shape, generator=g), torch.rand(*shape[:-1], generator=g)
    print(f"shape {args.shape} ({'video-like' if args.video_like else 'randn'}), retention {args.retention}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print("| method | code | top-level ops | host reads | wall ms | process CPU ms |")
    print("|---|---|---|---|---|---|")
    with torch_threads(args.threads):
        for name in args.methods.split(","):
            m = aot.methods.get(name)
            cfg = m.config(retention=args.retention)
            for which, fn in (("before", getattr(peers_reference, name)), ("after", m)):
                call = lambda: fn(x, s, config=cfg)  # noqa: E731
                c = count(call)
                wall, cpu = times(call, args.reps)
                print(f"| {name} | {which} | {c['ops']} | {c['reads']} | {wall:.0f} | {cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
