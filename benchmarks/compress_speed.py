"""Speed and memory of aot.compress against one dense linear layer, measured side by side.

For each (F, N, d): the median wall time of ``aot.compress`` at 10% retention with the default
Sinkhorn stop (``tol`` 0.01, at most 100 iterations; ``--tol none``: always 100), the median time of one dense matmul [F*N, d] x [d, d] (one linear layer of the LLM
on the uncompressed tokens) in the same run, their ratio, and the peak memory that compress
allocates beyond its input and output, as a multiple of the input size.

Peak memory is read in a child process from the kernel's peak-RSS counter (VmHWM, reset through
/proc/self/clear_refs) with glibc told to serve every large block by mmap, so freed memory is
returned at once and the counter sees the live working set.

Every time is measured at ``--threads`` torch threads (default ``aot.runtime.default_threads()``),
printed in the table's column titles. ``--busy K`` starts K busy-looping processes beside the
measurement, to see what a loaded machine does to the times (README "Threads").

    python benchmarks/compress_speed.py [--reps 7] [--shapes 32x196x3584,...] [--device cpu]
                                        [--threads N] [--busy K] [--no-memory] [--tol 0.01|none]
                                        [--set FIELD=VALUE ...]   # any other AOTConfig field
                                        [--before]   # also the pre-issue-17 core, side by side
                                        [--no-mix]   # compress(with_mix=False)
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
from dataclasses import replace

import torch

import aot
from aot.runtime import default_threads, torch_threads

SHAPES = [(32, 196, 3584), (64, 169, 3584), (32, 729, 1152)]


def _inputs(f: int, n: int, d: int, device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(f, n, d, generator=g).to(device)
    scores = torch.rand(f, n, generator=g).to(device)
    return x, scores


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_time(fn, reps: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _config(tol, sets: tuple[str, ...] = ()) -> aot.AOTConfig:
    """AOT at 10% retention with ``tol`` and ``--set FIELD=VALUE`` overrides (parsed as `aot eval
    --set` parses them). An unknown field, a bad value, or a field this script fixes itself
    (retention, tol) is a ValueError: a --set that would be silently overridden is refused."""
    from aot.eval.engine import method_config, parse_overrides

    overrides = parse_overrides(list(sets))
    fixed = {"retention": "fixed at 0.1 by this benchmark", "tol": "use --tol"}
    for k in overrides.keys() & fixed.keys():
        raise ValueError(f"--set {k}: {fixed[k]}")
    _, config = method_config("aot", 0.1, overrides)
    return replace(config, tol=tol)


def _parse_tol(raw: str):
    return None if raw.lower() == "none" else float(raw)


def memory_child(f: int, n: int, d: int, tol, sets: tuple[str, ...] = ()) -> None:
    """Runs in a child process (its own torch threads): prints JSON with the peak extra bytes of one compress call."""
    x, scores = _inputs(f, n, d, "cpu")
    config = _config(tol, sets)
    aot.compress(x, scores, config=config)  # warm-up: thread pools, lazy inits
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS counter to the current RSS
    before = _status_kb("VmRSS")
    out = aot.compress(x, scores, config=config)
    peak = _status_kb("VmHWM")
    out_bytes = sum(t.numel() * t.element_size() for t in (*out[:6], *(out.mix or ())))
    print(json.dumps({"extra": (peak - before) * 1024 - out_bytes,
                      "input": x.numel() * x.element_size(), "output": out_bytes}))


def measure_memory(f: int, n: int, d: int, threads: int, tol, sets: tuple[str, ...] = ()) -> dict | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-child", f"{f}x{n}x{d}", "--threads", str(threads),
           "--tol", str(tol).lower()] + [a for kv in sets for a in ("--set", kv)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def _busy(k: int) -> list[subprocess.Popen]:
    """K processes spinning on a core each: a loaded machine, reproducibly."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="torch threads for every measurement (default: aot.runtime.default_threads())")
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes to run beside the measurement")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    ap.add_argument("--tol", type=_parse_tol, default=aot.AOTConfig().tol,
                    help="Sinkhorn early stop of compress ('none': always 100 iterations; default: AOTConfig's)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="another AOTConfig field, e.g. --set keep_ref=keyframe (repeatable)")
    ap.add_argument("--no-mix", action="store_true", help="compress(with_mix=False): time without building the mix")
    ap.add_argument("--before", action="store_true",
                    help="also time the pre-issue-17 core (tests/aot_reference) in the same run, same inputs")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.busy < 0 or args.reps < 1:
        ap.error("--threads and --reps must be >= 1, --busy >= 0")
    args.sets = tuple(args.sets)
    try:
        _config(args.tol, args.sets)  # a bad --set fails here, before any measurement
    except ValueError as e:
        ap.error(str(e))
    with torch_threads(args.threads):
        if args.memory_child:
            memory_child(*map(int, args.memory_child.split("x")), args.tol, args.sets)
            return
        busy = _busy(args.busy)
        try:
            _report(args)
        finally:
            for p in busy:
                p.kill()
                p.wait()


def _report(args) -> None:
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    dev = args.device
    t = _threads(torch.get_num_threads())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {t}, device {dev}, {args.busy} busy processes beside"
          + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else ""))
    config = _config(args.tol, args.sets)
    stop = (f"always {config.n_iters} Sinkhorn iterations" if args.tol is None
            else f"Sinkhorn tol {args.tol:g} (at most {config.n_iters} iterations)")
    sets = f", {', '.join(args.sets)}" if args.sets else ""
    print(f"retention 0.1, {stop}, uniform clips{sets}, float32{', without the mix' if args.no_mix else ''}\n")
    ref = _reference() if args.before else None
    extra = f" before (ms, {t}) | ratio before |" if ref else ""
    print(f"| F x N x d | tokens out | compress (ms, {t}) | dense matmul (ms, {t}) | ratio | peak extra memory / input |"
          + extra)
    print("|---|---|---|---|---|---|" + ("---|---|" if ref else ""))
    for f, n, d in shapes:
        x, scores = _inputs(f, n, d, dev)
        kw = {"with_mix": False} if args.no_mix else {}
        out = aot.compress(x, scores, config=config, **kw)
        t_c = _median_time(lambda: aot.compress(x, scores, config=config, **kw), args.reps, dev)
        w = torch.randn(d, d, device=dev)
        flat = x.view(f * n, d)
        t_m = _median_time(lambda: flat @ w, args.reps, dev)
        mem = measure_memory(f, n, d, torch.get_num_threads(), args.tol, args.sets) if dev == "cpu" and not args.no_memory else None
        mem_s = f"{mem['extra'] / mem['input']:.2f}" if mem else "n/a"
        cells = ""
        if ref:
            t_r = _median_time(lambda: ref(x, scores, config=config), args.reps, dev)
            cells = f" {t_r * 1e3:.1f} | {t_r / t_m:.3f} |"
        print(f"| {f} x {n} x {d} | {out.tokens.shape[0]} | {t_c * 1e3:.1f} | {t_m * 1e3:.1f} | "
              f"{t_c / t_m:.3f} | {mem_s} |" + cells)


def _reference():
    """compress of the pre-issue-17 core, kept as a test oracle in tests/aot_reference."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import aot_reference

    return aot_reference.compress


if __name__ == "__main__":
    main()
