"""Task benchmark: video needle-in-a-haystack questions answered from compressed DINOv2 tokens.

Similarity scores mislead on real DINOv2 tokens (random selection already scores ~0.99 on
coverage metrics), and no trained video LLM runs here, so methods are compared on a task: a small
reader (benchmarks/needle/reader.py), trained once on FULL tokens of the train videos, answers
three questions about test videos (which object was pasted in, in which quarter of the video, in
which quadrant of the frame) from each method's compressed tokens, without retraining.  Accuracy
is reported relative to the reader's accuracy on the full tokens (= 100%).

    python benchmarks/task_benchmark.py                      # all methods, retentions 0.1..0.25
    python benchmarks/task_benchmark.py --methods aot,random --retentions 0.1
    python benchmarks/task_benchmark.py --variant lit=aot:mass=literal --variant a7=aot:anchor_share=0.7
    python benchmarks/task_benchmark.py --data-only          # just generate/cache the items

Data, encoded tokens, the trained reader and per-(method, config, retention) results are cached
under benchmarks/.cache (keyed by hashes of what produces them), so reruns are fast.  The
full-size data generation (DINOv2 on ~5,400 frames) takes ~45 min on 2 busy CPU cores.
Outputs: a Markdown table on stdout, ``--out`` (PNG plot) and the same path with ``.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needle import data as D  # noqa: E402
from needle import reader as RD  # noqa: E402
from needle.evaluate import Result, Variant, evaluate, paired_diff, parse_variant, predict_method, relative  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "task_benchmark.png"

# the paper's orderings: (worse, better, retention or None for every retention, description)
CHECKS = [
    ("aot-random-anchors", "aot", None, "random anchors below AOT (Table 8)"),
    ("aot-no-ot", "aot", None, "no OT (anchors only) below AOT (Tables 4/5)"),
    ("aot-cosine", "aot-no-ot", None, "cosine merging below no merging (Table 4)"),
    ("aot-no-local", "aot", None, "no local anchors below AOT (Table 5)"),
    ("aot-no-global", "aot", None, "no global anchors below AOT (Table 5)"),
    ("visionzip", "aot", 0.1, "VisionZip below AOT at 10% (Tables 1/2)"),
]


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _source_hash() -> str:
    """Hash of the aot package's source: cached results are reused only for unchanged method code."""
    import aot

    root = Path(aot.__file__).resolve().parent
    h = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=None, help="comma-separated registered names (default: all); 'none' for variants only")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:K=V,...",
                   help="an extra row: a method with config overrides, e.g. lit=aot:mass=literal (repeatable)")
    p.add_argument("--retentions", default="0.1,0.15,0.2,0.25")
    p.add_argument("--n-train", type=int, default=1400)
    p.add_argument("--n-test", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="data seed (the reader uses --reader-seed)")
    p.add_argument("--reader-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=RD.ReaderConfig.epochs)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--cache", type=Path, default=D.CACHE_DIR)
    p.add_argument("--no-encode", action="store_true", help="fail instead of running DINOv2 on uncached frames")
    p.add_argument("--data-only", action="store_true", help="generate/cache the data, print its stats, stop")
    p.add_argument("--retrain", action="store_true", help="ignore a cached reader")
    p.add_argument("--no-result-cache", action="store_true", help="recompute every (method, retention)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def markdown(results: list[Result], retentions: list[float], full_acc: dict) -> str:
    qs = list(D.QUESTIONS) + ["mean"]
    lines = ["| method | retention | " + " | ".join(qs) + " |", "|---|---|" + "---|" * len(qs)]
    for r in results:
        cells = [f"{r.rel[q]:.1f}" for q in qs] if r.rel else [r.note or "n/a"] + [""] * (len(qs) - 1)
        lines.append(f"| {r.label} | {r.retention:g} | " + " | ".join(cells) + " |")
    # compact pivot of the mean
    labels = list(dict.fromkeys(r.label for r in results))
    by = {(r.label, r.retention): r for r in results}
    piv = ["| method | " + " | ".join(f"{x:g}" for x in retentions) + " | avg |", "|---|" + "---|" * (len(retentions) + 1)]
    for lab in labels:
        vals = [by[(lab, x)].rel["mean"] if (lab, x) in by and by[(lab, x)].rel else None for x in retentions]
        ok = [v for v in vals if v is not None]
        avg = f"{sum(ok) / len(ok):.1f}" if ok else "n/a"
        piv.append(f"| {lab} | " + " | ".join(f"{v:.1f}" if v is not None else "n/a" for v in vals) + f" | {avg} |")
    head = ("Full tokens (absolute accuracy = 100%): " + ", ".join(f"{q} {100 * full_acc[q]:.1f}%" for q in qs))
    return "\n".join([head, "", "Relative accuracy (% of full-token accuracy), per question:", ""] + lines
                     + ["", "Mean relative accuracy, method x retention:", ""] + piv)


def validation(results: list[Result], retentions: list[float]) -> str:
    by = {(r.label, r.retention): r for r in results}
    out = ["Validation against the paper's orderings (measured, never tuned; Δ = better - worse in mean accuracy points,",
           "paired over test items, ± 1 s.e.; |Δ| < 2 s.e. is reported as a tie within noise):", ""]
    for worse, better, at, desc in CHECKS:
        rets = [at] if at is not None else retentions
        parts, verdicts = [], []
        for x in rets:
            a, b = by.get((better, x)), by.get((worse, x))
            if a is None or b is None or a.correct is None or b.correct is None:
                continue
            d, se = paired_diff(a.correct, b.correct)
            v = "agree" if d >= 2 * se and d > 0 else ("disagree" if d <= -2 * se and d < 0 else "tie")
            verdicts.append(v)
            parts.append(f"{x:g}: Δ={d:+.1f}±{se:.1f} ({v})")
        if not parts:
            out.append(f"- {desc}: not measured ({worse} or {better} missing / n/a)")
            continue
        summary = ", ".join(f"{verdicts.count(v)} {v}" for v in ("agree", "tie", "disagree") if verdicts.count(v))
        out.append(f"- {desc}: {summary} -- " + "; ".join(parts))
    return "\n".join(out)


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    labels = list(dict.fromkeys(r.label for r in results))
    cmap = plt.get_cmap("tab20")
    for i, lab in enumerate(labels):
        pts = sorted((r.retention, r.rel["mean"]) for r in results if r.label == lab and r.rel)
        if pts:
            style = "-" if lab == "aot" else ("--" if lab.startswith("aot") else ":")
            ax.plot(*zip(*pts), style, marker="o", color=cmap(i % 20), label=lab, lw=2.5 if lab == "aot" else 1.3)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xlabel("retention")
    ax.set_ylabel("mean relative accuracy (% of full tokens)")
    ax.set_title("Needle-in-a-haystack task on DINOv2 tokens (frozen reader)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    retentions = [float(x) for x in args.retentions.split(",") if x.strip()]
    gcfg = D.GenConfig(seed=args.seed)

    t0 = time.time()
    sets = D.build(gcfg, args.n_train, args.n_test, cache_dir=args.cache, progress=progress, encode=not args.no_encode)
    train, test = sets["train"], sets["test"]
    print(f"data ({time.time() - t0:.0f} s, cache {args.cache}):\n{D.stats(sets)}", flush=True)
    if args.data_only:
        return 0

    # reader
    rcfg = RD.ReaderConfig(num_classes=(len(gcfg.classes) + 1, 4, 4), epochs=args.epochs, seed=args.reader_seed,
                           dim=train.base_x.shape[-1], num_frames=train.base_x.shape[1], num_cells=train.base_x.shape[2])
    rkey = _hash({"data": gcfg.item_key(), "base": gcfg.base_key(), "n_train": args.n_train, "reader": asdict(rcfg)})
    rpath = args.cache / f"reader-{rkey}.pt"
    if rpath.exists() and not args.retrain:
        reader = RD.load(rpath)
        print(f"reader: loaded {rpath}")
    else:
        t1 = time.time()
        print(f"reader: training on {len(train)} items, {rcfg.epochs} epochs", flush=True)
        reader = RD.train(train, rcfg, progress=progress)
        RD.save(reader, rpath)
        print(f"reader: trained in {time.time() - t1:.0f} s -> {rpath}")
    torch.set_grad_enabled(False)
    full_train = RD.accuracy(RD.predict_full(reader, train), train.answers)
    full_pred = RD.predict_full(reader, test)
    full_test = RD.accuracy(full_pred, test.answers)
    fmt = lambda a: ", ".join(f"{k} {100 * v:.1f}%" for k, v in a.items())  # noqa: E731
    chance = {"obj": 1 / (len(gcfg.classes) + 1), "quarter": 0.25, "quadrant": 0.25}
    print(f"full tokens: train {fmt(full_train)}\n             test  {fmt(full_test)}   (chance ~ obj {100 * chance['obj']:.0f}%, 25%, 25%)")

    # methods
    import aot.methods as M

    if args.methods is None:
        names = M.names(stage="pre-llm")  # in-LLM methods (fastv, pdrop) need a language model
    elif args.methods.strip().lower() == "none":
        names = []
    else:
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
    variants = [Variant(n, n) for n in names] + [parse_variant(v) for v in args.variant]
    if len({v.label for v in variants}) != len(variants):
        raise SystemExit("duplicate method / variant labels")
    for v in variants:
        if M.get(v.method).in_llm:  # fails early on a typo too
            raise SystemExit(f"{v.method} prunes inside the language model; this benchmark compresses before it "
                             f"(pre-LLM methods: {', '.join(M.names(stage='pre-llm'))})")

    from needle.evaluate import correctness

    res_dir = args.cache / f"results-{_hash({'reader': rkey, 'n_test': args.n_test, 'aot_source': _source_hash()})}"
    res_dir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    full_correct = correctness(full_pred, test.answers).tolist()
    results_full = Result("full", 1.0, full_test, relative(full_test, full_test), full_correct)
    t2 = time.time()
    for v in variants:
        for x in retentions:
            cpath = res_dir / f"{_hash({'key': v.key(), 'retention': x})}.json"
            if cpath.exists() and not args.no_result_cache:
                d = json.loads(cpath.read_text())
                r = Result(v.label, x, d["acc"], d["rel"], d["correct"], d["note"])
            else:
                t = time.time()
                r = evaluate(reader, test, v, x, full_test, progress=progress)
                r.extra["seconds"] = time.time() - t
                cpath.write_text(json.dumps({"key": v.key(), "retention": x, "acc": r.acc, "rel": r.rel,
                                             "correct": r.correct, "note": r.note}))
            results.append(r)
            msg = f"{r.rel['mean']:.1f}%" if r.rel else r.note
            print(f"  {v.label:>22s} @ {x:<5g} mean rel {msg}", flush=True)
    print(f"evaluation: {time.time() - t2:.0f} s\n")

    print(markdown(results, retentions, full_test))
    print()
    print(validation(results, retentions))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.out)
    jpath = args.out.with_suffix(".json")
    jpath.write_text(json.dumps({
        "data": {"config": asdict(gcfg), "n_train": len(train), "n_test": len(test), "stats": D.stats(sets)},
        "reader": asdict(rcfg),
        "full_accuracy": {"train": full_train, "test": full_test},
        "retentions": retentions,
        "variants": [{"label": v.label, "method": v.method, "overrides": dict(v.overrides)} for v in variants],
        "results": [{"label": r.label, "retention": r.retention, "accuracy": r.acc, "relative": r.rel, "note": r.note}
                    for r in results],
        "validation": validation(results, retentions),
    }, indent=1))
    print(f"\nplot: {args.out}\njson: {jpath}")
    _ = results_full
    return 0


if __name__ == "__main__":
    sys.exit(main())
