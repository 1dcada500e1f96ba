"""Float32 accuracy of AOT's Sinkhorn under long Eq. 16 merge chains (docs/gpu-core.md, "Accuracy of the
plain Sinkhorn route under long chains").

Three measurements, each against a float64 answer:
1. per solve: every plain-route problem of one call (float32 cost captured), solved by the plain route
   and the renormalised route in float32, against a float64 solve of the same float32 cost (POT's
   ot.sinkhorn in float64 as a check of that answer); max abs error of the returned plans;
2. in the chain: aot.compress's tokens against the old core (tests/aot_reference) run in float64, with
   the plain solver swapped for variants (float64 solver, cost shift, renormalised u, T / T 1), per
   video and as the ratio to the old core's own float32 error;
3. conditioning: how far float32-sized perturbations of the input move the float64 answer, and each
   core's float32 error on 1-ulp changes of the input.

    python benchmarks/chain_precision.py [--shape 32x196x64] [--seeds 11-24]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import aot  # noqa: E402
import aot.ot as O  # noqa: E402
from aot_reference import compress as reference  # noqa: E402

ORIG = O._sinkhorn_plain
CONFIGS = [dict(), dict(keep_ref="previous", unmatched_anchors="absorb"), dict(tol=None)]


def video(f, n, d, seed):  # the oracle test's synthetic video (tests/test_core_oracle.py)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, n, d, generator=g)
    steps = torch.randn(f, n, d, generator=g).cumsum(-3) / (1 + torch.arange(f).view(f, 1, 1))
    x = base + 0.5 * steps + (torch.arange(f) >= f // 2).view(f, 1, 1) * torch.randn(1, n, d, generator=g)
    return x, torch.rand(f, n, generator=g), torch.rand(f, n, generator=g)


def variant(shift=False, renorm=False, rowsum=False, f64=False):
    """A plain-route stand-in (one stop group) with one ingredient of the renormalised route changed."""
    def solver(cost, reg, n_iters, a, b, tol, grad=False, groups=0, blocks=1, rows=False):
        c = cost.double() if f64 else cost
        aa = (a if a.dim() == c.dim() else a.unsqueeze(-2)).to(c.dtype)
        bb = (b if b.dim() == c.dim() else b.unsqueeze(-2)).to(c.dtype)
        if shift:
            c = c - c.amin((-2, -1), keepdim=True)
        k = (c / -reg).exp()
        u = (aa > 0).to(c.dtype) if renorm else aa
        thr = None if tol is None else O._tol_threshold(tol, c.dtype)
        for it in range(n_iters):
            if renorm:
                u = u / u.amax(-1, keepdim=True)
            v = bb / (u @ k)
            kv = v @ k.transpose(-1, -2)
            u = aa / kv
            if thr is not None and (it + 1) % 10 == 0 and it + 1 < n_iters:
                if bool((bb - v * (u @ k)).abs().sum(-1).amax() < thr):
                    break
        if rows and not rowsum:
            out = k * v / kv.transpose(-1, -2)
        else:
            out = k * u.transpose(-1, -2) * v
            if rows:
                out = out / out.sum(-1, keepdim=True).clamp(min=1e-300)
        return cost.copy_(out)
    return solver


VARIANTS = {"plain route (today)": None, "float64 solver": variant(f64=True), "+ cost shift (a)": variant(shift=True),
            "+ renormalised u (b)": variant(renorm=True), "T / T 1 rows (c)": variant(rowsum=True),
            "old solver arithmetic (a+b+c)": variant(shift=True, renorm=True, rowsum=True)}


def err(out, exact) -> float:
    t = exact.tokens.double()
    return float(((out.tokens.double() - t).abs() / t.abs().clamp(min=1.0)).max())


def compress_with(solver, x, s, ls, cfg):
    O._sinkhorn_plain = solver or ORIG
    try:
        return aot.compress(x, s, local_scores=ls, config=cfg)
    finally:
        O._sinkhorn_plain = ORIG


def per_solve(x, s, ls):
    calls = []

    def spy(cost, reg, n_iters, a, b, tol, grad=False, groups=0, blocks=1, rows=False):
        calls.append((cost.clone(), reg, a.clone(), b.clone(), rows))
        return ORIG(cost, reg, n_iters, a, b, tol, grad, groups, blocks, rows)
    compress_with(spy, x, s, ls, aot.AOTConfig(tol=None))
    import ot
    res = {"plain route f32": [], "renormalised route f32": []}
    pot = 0.0
    for cost, reg, a, b, rows in calls:
        truth = O.sinkhorn_(cost.double(), reg, 100, a.double(), b.double(), None, plain=0.0, rows=rows)
        mask = a.reshape(a.shape[0], -1, 1) > 0
        for name, kw in (("plain route f32", dict(plain=0.0)), ("renormalised route f32", dict(bound=0.0))):
            p = O.sinkhorn_(cost.clone(), reg, 100, a, b, None, rows=rows, **kw)
            res[name].append(float(((p.double() - truth).abs() * mask).max()))
        a0, b0 = a.reshape(-1, a.shape[-1])[0].double().numpy(), b.reshape(-1, b.shape[-1])[0].double().numpy()
        ia, ib = a0 > 0, b0 > 0
        ref = ot.sinkhorn(a0[ia], b0[ib], cost[0].double().numpy()[np.ix_(ia, ib)], reg, numItermax=100, stopThr=0,
                          warn=False)
        if rows:
            ref = ref / ref.sum(1, keepdims=True)
        pot = max(pot, float(np.abs(ref - truth[0].numpy()[np.ix_(ia, ib)]).max()))
    print(f"1. per solve ({len(calls)} plain-route problems, 100 iterations), max abs plan error vs float64:")
    for name, v in res.items():
        print(f"   {name:24s} max {max(v):.2e} mean {np.mean(v):.2e}")
    print(f"   (POT ot.sinkhorn float64 vs the float64 answer: {pot:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="32x196x64")
    ap.add_argument("--seeds", default="11-24", help="first-last")
    args = ap.parse_args()
    torch.set_num_threads(1)
    f, n, d = (int(v) for v in args.shape.split("x"))
    lo, hi = (int(v) for v in args.seeds.split("-"))
    per_solve(*video(f, n, d, lo))

    errs = {k: [] for k in [*VARIANTS, "old core"]}
    for seed in range(lo, hi + 1):
        x, s, ls = video(f, n, d, seed)
        for kw in CONFIGS:
            cfg = aot.AOTConfig(**kw)
            exact = reference(x.double(), s.double(), local_scores=ls.double(), config=cfg)
            errs["old core"].append(err(reference(x, s, local_scores=ls, config=cfg), exact))
            for name, solver in VARIANTS.items():
                errs[name].append(err(compress_with(solver, x, s, ls, cfg), exact))
    old = np.array(errs["old core"])
    print(f"\n2. in the chain ({len(old)} videos {args.shape}, seeds {args.seeds}, configs {CONFIGS}),"
          " max rel. token error vs the old core in float64:")
    print("   | variant | median | max | ratio to old core: geomean | min-max |")
    for name, v in errs.items():
        r = np.array(v) / old
        print(f"   | {name} | {np.median(v):.2e} | {max(v):.2e} | {math.exp(np.log(r).mean()):.2f} | "
              f"{r.min():.2f}-{r.max():.2f} |")

    x, s, ls = video(f, n, d, lo)
    for kw in (dict(tol=None), dict()):
        cfg = aot.AOTConfig(**kw)
        exact = reference(x.double(), s.double(), local_scores=ls.double(), config=cfg)
        moved, e_old, e_new = [], [], []
        for k in range(6):
            g = torch.Generator().manual_seed(100 + k)
            xp = x.double() * (1 + 6e-8 * torch.randn(x.shape, generator=g, dtype=torch.float64))
            moved.append(err(reference(xp, s.double(), local_scores=ls.double(), config=cfg), exact))
            x32 = (x.view(torch.int32) + torch.randint(-1, 2, x.shape, generator=g, dtype=torch.int32)).view(torch.float32)
            ex = reference(x32.double(), s.double(), local_scores=ls.double(), config=cfg)
            e_old.append(err(reference(x32, s, local_scores=ls, config=cfg), ex))
            e_new.append(err(aot.compress(x32, s, local_scores=ls, config=cfg), ex))
        print(f"\n3. conditioning, seed {lo}, {kw or 'defaults'} (6 draws):")
        print(f"   float64 answer moved by 6e-8 relative input noise: {min(moved):.1e}-{max(moved):.1e}")
        print(f"   float32 error on 1-ulp input changes: old core {min(e_old):.1e}-{max(e_old):.1e}, "
              f"new core {min(e_new):.1e}-{max(e_new):.1e}")


if __name__ == "__main__":
    main()
