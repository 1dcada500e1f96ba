"""Issue 17 item 6, prepared for a GPU session: aot.compress eager, compiled and as a CUDA graph.

One script, one call, so a lent GPU's minutes go to measuring, not to setting up. At the paper's
shape (32 frames x 196 tokens x 3584 channels, LLaVA-OneVision-7B's pooled SigLIP features, 10%
retention; the paper reports 2.11 ms for its OT on an A100 at 32 frames) and at 64 x 169, for today's
defaults and the defaults before issue 22, it times (median of --reps, each call synchronised):

* ``eager``: ``aot.compress`` as a model's forward calls it (tol 0.01: a host read per stop check);
* ``eager-deferred``: the same inside ``aot.stops.deferred(True)`` (one read a call, more launches);
* ``eager-fixed``: ``tol=None`` (always n_iters iterations) and ``validate=False``: no host read at all;
* ``compiled``: ``torch.compile`` of the fixed call (compile time reported apart);
* ``graph``: the fixed call captured once as a CUDA graph and replayed (inputs copied into the
  captured buffers first, included in the time); CUDA only.

Every mode's discrete outputs (sizes, frames, positions, assignment, dynamic) are checked equal to
the eager fixed call's and its tokens within 1e-4 relative (compiled kernels reassociate float32
sums); a mismatch is printed as such. Also, with ``--scores``, the score hook's reduction
(``aot.models.scores.attention_received``, one SigLIP layer of a 32-frame video, 32 x 16 x 729 x 72)
at its device default and at a 12 MiB buffer (the CPU default).

    python benchmarks/gpu_core.py [--device cuda] [--modes eager,eager-deferred,eager-fixed,graph (default; also: compiled)]
                                  [--shapes 32x196x3584,64x169x3584] [--reps 20] [--scores] [--json PATH]
    python benchmarks/gpu_core.py --device cpu --modes eager,eager-fixed --shapes 8x36x64 --reps 2   # a smoke run

On a lent GPU machine (its image has torch; aot's core needs nothing else), from the repo root:
    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/gpu_core.py --scores --json $OUT/gpu_core.json
(about 2-4 minutes at 20 repetitions; the table is printed as it goes, the JSON written at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import aot
import aot.stops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compress_speed import _median_time, _sync  # noqa: E402

MODES = ("eager", "eager-deferred", "eager-fixed", "compiled", "graph")
# compile time grows with the unrolled Sinkhorn loops (13 solves x 100 iterations at the defaults): minutes
# on this CPU for 4 x 16 x 8; "compiled" runs only when asked for
DEFAULT_MODES = ("eager", "eager-deferred", "eager-fixed", "graph")
DISCRETE = ("sizes", "frames", "positions", "assignment", "dynamic")
DEFAULTS = {"today's": {}, "before issue 22": dict(anchor_density=None, anchor_share=0.7, global_share=0.5)}


def _median_ms(fn, reps: int, device: str) -> float:
    return _median_time(fn, reps, device) * 1e3  # one warm-up call, then the median of reps synchronised calls


def _inputs(f: int, n: int, d: int, device: str):
    g = torch.Generator().manual_seed(0)
    return torch.randn(f, n, d, generator=g).to(device), torch.rand(f, n, generator=g).to(device)


def _agree(out, ref) -> str:
    """'ok', or what differs from the reference call."""
    for k in DISCRETE:
        if not torch.equal(getattr(out, k), getattr(ref, k)):
            return f"{k} differs"
    rel = ((out.tokens.double() - ref.tokens.double()).abs() / ref.tokens.double().abs().clamp(min=1.0)).max()
    return "ok" if rel <= 1e-4 else f"tokens differ by {float(rel):.1e}"


def _graph_call(fn, x, s):
    """fn captured as a CUDA graph on static copies of (x, s); returns (replay, its outputs)."""
    sx, ss = x.clone(), s.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires (also builds the cached indices)
        for _ in range(3):
            fn(sx, ss)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(sx, ss)

    def replay(x_new, s_new):
        sx.copy_(x_new)
        ss.copy_(s_new)
        graph.replay()
        return out
    return replay, out


def measure(shape, label: str, overrides: dict, modes, reps: int, device: str) -> list[dict]:
    f, n, d = shape
    x, s = _inputs(f, n, d, device)
    cfg = aot.AOTConfig(retention=0.1, **overrides)
    fixed = aot.AOTConfig(retention=0.1, tol=None, **overrides)
    with torch.inference_mode():
        ref = aot.compress(x, s, config=fixed, validate=False)
        rows = []
        for mode in modes:
            row = {"shape": "x".join(map(str, shape)), "defaults": label, "mode": mode, "compile_s": None}
            try:
                if mode == "eager":
                    call = lambda: aot.compress(x, s, config=cfg)  # noqa: E731
                elif mode == "eager-deferred":
                    def call():
                        with aot.stops.deferred(True):
                            return aot.compress(x, s, config=cfg)
                elif mode == "eager-fixed":
                    call = lambda: aot.compress(x, s, config=fixed, validate=False)  # noqa: E731
                elif mode == "compiled":
                    comp = torch.compile(lambda a, b: aot.compress(a, b, config=fixed, validate=False))
                    t = time.perf_counter()
                    comp(x, s)
                    _sync(device)
                    row["compile_s"] = round(time.perf_counter() - t, 1)
                    call = lambda: comp(x, s)  # noqa: E731
                elif mode == "graph":
                    if not device.startswith("cuda"):
                        raise RuntimeError("CUDA graphs need --device cuda")
                    replay, _ = _graph_call(lambda a, b: aot.compress(a, b, config=fixed, validate=False), x, s)
                    call = lambda: replay(x, s)  # noqa: E731
                else:
                    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
                out = call()  # warm-up (and the outputs checked)
                row["check"] = _agree(out, ref) if mode != "eager" and mode != "eager-deferred" else \
                    _agree(out, aot.compress(x, s, config=cfg))
                row["ms"] = round(_median_ms(call, reps, device), 3)
            except Exception as e:  # noqa: BLE001 - a mode that fails is reported, the others still run
                row["ms"], row["check"] = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            print(f"| {row['shape']} | {label} | {mode} | {row['ms'] if row['ms'] is not None else '-'} | "
                  f"{row['compile_s'] if row['compile_s'] is not None else ''} | {row['check']} |", flush=True)
    return rows


def scores_rows(reps: int, device: str) -> list[dict]:
    import inspect

    from aot.models.scores import attention_received

    g = torch.Generator().manual_seed(0)
    q = torch.randn(32, 16, 729, 72, generator=g).to(device)
    k = torch.randn(32, 16, 729, 72, generator=g).to(device)
    budgets = {"device default": {}}
    if "max_bytes" in inspect.signature(attention_received).parameters:
        budgets["12 MiB buffer"] = {"max_bytes": 12 << 20}
    rows = []
    with torch.inference_mode():
        ref = attention_received(q, k, **budgets["device default"])
        for name, kw in budgets.items():
            out = attention_received(q, k, **kw)
            ms = _median_ms(lambda: attention_received(q, k, **kw), reps, device)
            err = float(((out - ref).abs() / ref.abs().clamp(min=1e-12)).max())
            rows.append({"call": f"attention_received 32x16x729x72, {name}", "ms": round(ms, 3), "rel_vs_default": err})
            print(f"| attention_received 32x16x729x72 | {name} | {ms:.3f} | max rel. difference {err:.1e} |", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES))
    ap.add_argument("--shapes", default="32x196x3584,64x169x3584")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--scores", action="store_true", help="also the score hook's reduction at two buffers")
    ap.add_argument("--json", help="also write every row to this JSON file")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"--modes: unknown {', '.join(bad)}; choose from {', '.join(MODES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if "graph" in modes and not args.device.startswith("cuda"):
        ap.error("--modes graph needs --device cuda (CUDA graphs)")
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        assert all(len(s) == 3 for s in shapes)
    except (ValueError, AssertionError):
        ap.error(f"--shapes: FxNxD[,FxNxD...], got {args.shapes!r}")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"float32, retention 0.1, median of {args.reps}\n")
    print("| F x N x d | defaults | mode | ms | compile s | outputs |")
    print("|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        for label, over in DEFAULTS.items():
            rows += measure(shape, label, over, modes, args.reps, args.device)
    if args.scores:
        print("\n| call | buffer | ms | |\n|---|---|---|---|")
        rows += scores_rows(args.reps, args.device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, fh, indent=1)
    if any(str(r.get("check", "ok")) not in ("ok",) for r in rows if "check" in r):
        sys.exit(1)


if __name__ == "__main__":
    main()
