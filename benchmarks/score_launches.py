"""Operators, host reads, CPU time and peak extra memory of the score hooks' reductions per logits budget.

Rows: ``aot.models.scores.attention_received`` on one SigLIP layer of a 32-frame video (32 x 16 heads x
729 tokens x 72, what LLaVA-OneVision's hook gets) and ``aot.models.qwen2_5_vl.segment_received`` on a
Qwen2.5-VL window block of a 32-frame 504 px video (16 temporal slices of 36 x 36 patches, windows of
8 x 8 patches: 400 windows of 64, 32 and 16 tokens, 16 heads x 80), each at the CPU default (``chunk``
256's buffer), 64 MiB, 256 MiB (the default on a GPU) and a budget that holds everything, beside the
loop before the budget (the oracle kept in tests/test_score_chunks.py).

* ops / kernels / reads: benchmarks/launches.py's profiler counter (top-level ``aten::`` operators; the
  ones that are not views; host reads);
* CPU ms: median wall time of ``--reps`` calls at ``--threads`` threads, the rows of a call interleaved
  (a shared machine: noisy);
* peak extra MB: in a fresh child process, the peak RSS over the RSS before the call (inputs excluded),
  after a warm-up, glibc serving large blocks by mmap (as benchmarks/score_memory.py measures).

    python benchmarks/score_launches.py [--threads 1] [--reps 3] [--no-memory] [--quick] [--only siglip|qwen]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import launches  # noqa: E402
from compress_speed import _status_kb  # noqa: E402
from test_score_chunks import old_attention_received, old_segment_received  # noqa: E402

from aot.models.qwen2_5_vl import segment_received  # noqa: E402
from aot.models.scores import _steps, attention_received, score_bytes, step_bytes  # noqa: E402

MIB = 2**20
BUDGETS = [("cpu default", None), ("64 MiB", 64 * MIB), ("256 MiB (GPU default)", 256 * MIB), ("all", "all")]


def siglip_inputs(frames: int):
    g = torch.Generator().manual_seed(0)
    shape = (frames, 16, 729, 72)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def qwen_layout(slices: int, side: int = 36, window: int = 8):
    """cu_seqlens of a Qwen2.5-VL window block: per temporal slice, windows of window x window patches
    in row-major order (narrower at the right and bottom edges), tokens window by window."""
    spans = [min(window, side - i) for i in range(0, side, window)]
    lens = [h * w for _ in range(slices) for h in spans for w in spans]
    return torch.tensor([0] + lens).cumsum(0)


def qwen_inputs(slices: int):
    cu = qwen_layout(slices)
    g = torch.Generator().manual_seed(0)
    t = int(cu[-1])
    q = torch.randn(t, 16, 80, generator=g).transpose(0, 1)  # (heads, T, dh), strided as the hook has it
    k = torch.randn(t, 16, 80, generator=g).transpose(0, 1)
    return q, k, cu


def calls(which: str, quick: bool):
    """(label, budget label, fn) for every row of ``which``."""
    if which == "siglip":
        q, k = siglip_inputs(8 if quick else 32)
        every = step_bytes(q.shape[0], 16, 729, 729, 72)
        out = [("before", "12 MB (chunk 256)", lambda: old_attention_received(q, k))]
        for label, b in BUDGETS:
            b = every if b == "all" else b
            out.append(("after", label, lambda b=b: attention_received(q, k, max_bytes=b)))
        return out
    q, k, cu = qwen_inputs(4 if quick else 16)
    out = [("before", "per window", lambda: old_segment_received(q, k, cu))]
    for label, b in BUDGETS:
        b = 10**12 if b == "all" else b
        out.append(("after", label, lambda b=b: segment_received(q, k, cu, max_bytes=b)))
    return out


def steps_note(which: str, budget_label: str, quick: bool) -> str:
    """What one call does at that budget: steps and the buffer (MB)."""
    if which == "siglip":
        frames = 8 if quick else 32
        b = dict(BUDGETS)[budget_label]
        every = step_bytes(frames, 16, 729, 729, 72)
        budget = every if b == "all" else score_bytes(torch.device("cpu"), 16, 729, 729, 72, 256, b)
        n, c = _steps(frames, 16, 729, 729, 72, budget)
        steps = -(-frames // n) * -(-729 // c)
        return f"{steps} of {n} x {c} queries, {step_bytes(n, 16, c, 729, 72) / 1e6:.0f} MB"
    return ""


def cpu_ms(fns, reps: int) -> list[float]:
    """Median wall ms of each fn over ``reps`` rounds, the fns interleaved (order reversed every
    other round) so that a busy machine slows them alike; one warm-up call each first."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for r in range(reps):
        order = list(range(len(fns)))[:: 1 if r % 2 == 0 else -1]
        for i in order:
            t = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


def memory_child(args) -> None:
    torch.set_num_threads(args.threads)
    fn = calls(args.which, args.quick)[args.memory_child][2]
    with torch.inference_mode():
        fn()  # warm-up: thread pools, lazy inits
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS counter to the current RSS
        before = _status_kb("VmRSS")
        fn()
        extra = (_status_kb("VmHWM") - before) * 1024
    print(json.dumps({"extra": extra}))


def peak_extra(which: str, index: int, args) -> float | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-child", str(index), "--which", which, "--threads", str(args.threads)]
    cmd += ["--quick"] if args.quick else []
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"memory child {which} {index} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["extra"] / 1e6


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="8 frames / 4 slices instead of 32 / 16")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--only", choices=("siglip", "qwen"))
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--which", default="siglip", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child is not None:
        memory_child(args)
        return
    torch.set_num_threads(args.threads)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}")
    print("| call | code | budget | steps | ops | kernels | host reads | CPU ms | peak extra MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for which in ("siglip", "qwen"):
        if args.only and which != args.only:
            continue
        name = ("attention_received " + ("8" if args.quick else "32") + "x16x729x72" if which == "siglip"
                else "segment_received " + ("4" if args.quick else "16") + "x36x36 windows, 16x80")
        rows = calls(which, args.quick)
        with torch.inference_mode():
            counts = [launches.count(fn) for _, _, fn in rows]
            ms = cpu_ms([fn for _, _, fn in rows], args.reps)
        for i, (code, budget, _) in enumerate(rows):
            c = counts[i]
            mem = None if args.no_memory else peak_extra(which, i, args)
            note = steps_note(which, budget, args.quick) if code == "after" else ""
            print(f"| {name} | {code} | {budget} | {note} | {c['ops']} | {c['kernels']} | {c['reads']} | {ms[i]:.0f} | "
                  f"{'-' if mem is None else f'{mem:.0f}'} |", flush=True)


if __name__ == "__main__":
    main()
