"""Counting probe (issue 8): do both showings of a needle survive compression as distinct tokens?

Reader-free companion of the task benchmark's ``count`` question. For every ``count`` item of a
split (one object pasted into one or two frames, >= 2 frames apart, at an independent place each
time; benchmarks/needle/data.py) each method compresses the 32 x 256 DINOv2 tokens with one
*tracer* channel per showing appended: eps (1% of the mean token norm) on the needle's cells of
that showing, 0 elsewhere. Every method here builds its output rows as convex combinations of
input tokens (AOT's Eq. 11 and 16, averaging, or plain selection), so an output row's tracer
value / eps is the weight of that showing's needle tokens in it (1: a needle token kept
unchanged, 0.3: needle averaged with 70% other content, 0: dropped). The tracer moves cosines
by ~1e-4, too little to change a selection.

* a showing is *carried* when some output row is at least ``--w-min`` (default 0.5) its needle;
* an item is *countable* when every showing is carried and the rows carrying needle sit on
  exactly as many distinct frames as there are showings (fewer: lost or merged together;
  more: a ghost showing, e.g. a needle merged into a keyframe anchor and also kept).

Reported per method: countable % of twice / once / all items, % of showings carried on a clip
keyframe (uniform clips of F // 8 = 4 frames: frames 0, 4, ...) and off it, ghost items, and
per-item paired differences against ``--reference`` (countable, 0/1) with a 95% interval.
Only the split given is read (default ``val``: choices are made there, never on test).

    python benchmarks/count_probe.py [--split val] [--n-val 400] [--retention 0.1]
        [--methods aot,aot-no-ot,flashvid,holitom] [--variant skip=aot:unmatched_anchors=skip ...]
        [--out benchmarks/results/count_probe_val.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needle import data as D  # noqa: E402
from needle.evaluate import Variant, parse_variant  # noqa: E402


def needle_weights(method, config, x: torch.Tensor, s, ls, grid, frames: torch.Tensor, cells: torch.Tensor):
    """Compress x (F, N, d) with one tracer channel per showing; (output, (R, K) needle weight per row and showing)."""
    f, n, d = x.shape
    k = len(frames)
    eps = 1e-2 * float(x.float().norm(dim=-1).mean())
    tr = torch.zeros(f, n, k)
    for j, t in enumerate(frames.tolist()):
        tr[t, cells[j], j] = eps
    with torch.inference_mode():
        out = method(torch.cat([x.float(), tr], -1), s, local_scores=ls, grid=grid, config=config)
    return out, out.tokens[:, d:].float() / eps


def probe(ds: D.NeedleSet, variant: Variant, retention: float, w_min: float, clip_len: int) -> dict:
    method, config = variant.build(retention)
    items = [i for i, sp in enumerate(ds.specs) if sp.kind == "count"]
    per_item = []
    for i in items:
        sp = ds.specs[i]
        x, s, ls = ds.full(i)
        out, w = needle_weights(method, config, x, s, ls, ds.grid, ds.frames[i], ds.needle_cells[i])
        carry = w >= w_min  # (R, K)
        carried = carry.any(0).tolist()
        seen = sorted(set(out.frames[carry.any(-1)].tolist()))
        countable = all(carried) and len(seen) == len(sp.frames)
        per_item.append({"index": i, "twice": len(sp.frames) == 2, "countable": int(countable),
                         "carried": [int(c) for c in carried], "best": w.amax(0).tolist(), "frames_seen": seen,
                         "ghost": int(len(seen) > sum(carried)),
                         "keyframe": [int(t % clip_len == 0) for t in sp.frames]})
    return {"label": variant.label, "key": variant.key(), "retention": retention, "items": per_item}


def summary(r: dict) -> dict:
    it = r["items"]
    tw = [d for d in it if d["twice"]]
    on = [d for d in it if not d["twice"]]
    shows = [(c, kf) for d in it for c, kf in zip(d["carried"], d["keyframe"])]

    def pct(xs):
        return 100.0 * sum(xs) / len(xs) if xs else float("nan")

    return {"twice": pct([d["countable"] for d in tw]), "once": pct([d["countable"] for d in on]),
            "all": pct([d["countable"] for d in it]), "n_twice": len(tw), "n_once": len(on),
            "carried_key": pct([c for c, kf in shows if kf]), "carried_off": pct([c for c, kf in shows if not kf]),
            "n_key": sum(kf for _, kf in shows), "n_off": sum(1 - kf for _, kf in shows),
            "ghost": sum(d["ghost"] for d in it)}


def paired(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean of countable(b) - countable(a) over the same items (points), its s.e., items."""
    ca = {d["index"]: d["countable"] for d in a["items"]}
    diffs = [100.0 * (d["countable"] - ca[d["index"]]) for d in b["items"] if d["index"] in ca]
    n = len(diffs)
    if n < 2:
        return float("nan"), float("nan"), n
    m = sum(diffs) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in diffs) / (n - 1))
    return m, sd / math.sqrt(n), n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val", choices=["val", "test", "persist"])
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--n-test", type=int, default=0)
    p.add_argument("--retention", type=float, default=0.1)
    p.add_argument("--methods", default="aot,aot-no-ot,flashvid,holitom")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:K=V,...")
    p.add_argument("--reference", default="aot")
    p.add_argument("--w-min", type=float, default=0.5, help="needle weight that makes a row carry the showing")
    p.add_argument("--cache", type=Path, default=D.CACHE_DIR)
    p.add_argument("--out", type=Path, default=None, help="JSON with every item's scores")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = D.GenConfig()
    counts = {"val": args.n_val} if args.split == "val" else {args.split: args.n_test}
    sets = D.build(cfg, counts, cache_dir=args.cache, progress=False, encode=False)
    ds = sets[args.split]
    variants = [Variant(n, n) for n in args.methods.split(",") if n.strip()] + [parse_variant(v) for v in args.variant]
    results = []
    for v in variants:
        t = time.time()
        r = probe(ds, v, args.retention, args.w_min, clip_len=max(1, cfg.num_frames // 8))
        r["seconds"] = time.time() - t
        results.append(r)
        s = summary(r)
        print(f"  {v.label:>20s}: countable twice {s['twice']:.1f}% once {s['once']:.1f}% ({r['seconds']:.0f} s)",
              flush=True)
    ref = next((r for r in results if r["label"] == args.reference), None)
    n_items = len(results[0]["items"]) if results else 0
    print(f"\nsplit {args.split}, {n_items} count items of {len(ds)}, retention {args.retention:g}, "
          f"w_min {args.w_min:g}\n")
    print("| method | countable: twice (items) | once (items) | all | showings carried: on a keyframe | off | "
          f"ghost items | all - {args.reference} [95%] |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        s = summary(r)
        if ref is not None and r is not ref:
            m, se, _ = paired(ref, r)
            d = f"{m:+.1f} [{m - 1.96 * se:+.1f}, {m + 1.96 * se:+.1f}]"
        else:
            d = ""
        print(f"| {r['label']} | {s['twice']:.1f} ({s['n_twice']}) | {s['once']:.1f} ({s['n_once']}) | {s['all']:.1f} | "
              f"{s['carried_key']:.1f} ({s['n_key']}) | {s['carried_off']:.1f} ({s['n_off']}) | {s['ghost']} | {d} |")
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "retention": args.retention, "w_min": args.w_min,
                                        "summaries": {r["label"]: summary(r) for r in results},
                                        "results": results}, separators=(",", ":")))
        print(f"json: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
