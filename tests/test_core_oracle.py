"""The vectorised core (issue 17) against the per-video, per-clip core it replaced, kept as an oracle
in tests/aot_reference (commit 76f3d27 plus the cosine-drop fix of the mix commit).

Batching videos and clips changes which problems share an operator call, not what each problem
computes. One thing computes differently on purpose (issue 17, fewer operators): AOT's Sinkhorn runs
the plain scaling route (4 operators an iteration instead of 6: no cost shift, no renormalisation of
u), the same plan up to float rounding. So every discrete field (sizes, frames, positions,
assignment, dynamic) must be equal and the tokens within 2e-6 relative (see _same), for one video and for
each video of a batch. Before that change they were equal bit for bit (commit c1b5374).
"""

import itertools
import math
from dataclasses import replace

import pytest
import torch

import aot
import aot.methods
from aot_reference import compress as reference

AOT_NAMES = [n for n in aot.methods.names(stage="pre-llm") if n.startswith("aot")]


def _video(f, n, d, seed, batch=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    base = torch.randn(*lead, 1, n, d, generator=g)
    steps = torch.randn(*lead, f, n, d, generator=g).cumsum(-3) / (1 + torch.arange(f).view(f, 1, 1))
    # a scene cut half way, so dynamic clips differ from uniform ones (and between videos)
    x = base + 0.5 * steps + (torch.arange(f) >= f // 2).view(f, 1, 1) * torch.randn(*lead, 1, n, d, generator=g)
    return x.to(dtype), torch.rand(*lead, f, n, generator=g), torch.rand(*lead, f, n, generator=g)


DISCRETE = ("sizes", "frames", "positions", "assignment", "dynamic")


def _same(out, ref, exact=None):
    """Every discrete field equal; tokens within 2e-6 relative (absolute below magnitude 1; 1e-12 for
    float64; one unit in the last place for bfloat16 / float16 outputs, which may round to the
    neighbouring value). Where the arithmetic differs from the old core (issue 17's operator pass):
    AOT's Sinkhorn runs the plain scaling route (no shift, no renormalisation of u, u0 = a;
    aot.ot.plain_bound), the merge steps take the row-normalised plan as K v / (K v) instead of
    T / T 1 and Eq. 16 as one baddbmm, and a few sums run over a transposed view: the same values up
    to float rounding. Why 2e-6 and not 1e-6: the float32 pipeline itself is that far from its
    float64 run on this set (largest relative error of the old core 1.26e-6, of the new one 1.98e-6;
    dynamic clips with 4-6 chained Eq. 16 steps, where a cost perturbation e moves the next plan by
    e / reg); the two cores differ by at most 1.76e-6 here (measured)."""
    for name, a, b in zip(aot.Compressed._fields, out[:6], ref[:6]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if name in DISCRETE:
            assert torch.equal(a, b), f"{name} differs: max {(a.double() - b.double()).abs().max()}"
            continue
        diff = (a.double() - b.double()).abs()
        rel = diff / b.double().abs().clamp(min=1.0)  # relative to the value, absolute below 1
        if a.dtype == torch.float32 and rel.max() > 2e-6 and exact is not None:
            # long chains of Eq. 16 steps (today's default clips of 13 frames: 12 steps; a cost error e
            # moves the next plan by e / reg) amplify float32 rounding past 2e-6 in both cores (measured
            # up to 1.8e-5 between them at 32 x 196, 10%). Then both are judged against the old core
            # run in float64 (whose discrete fields must agree, else the comparison means nothing).
            # Per video the new core was measured 0.5-7.3x the old core's own float32 error here (at
            # most 3.9e-5 relative, at 32 x 196: 1/100 of a bfloat16 step): not a regression of the
            # solver but the chain's ill-conditioning, each core's error a random draw (0.1-7.3x over
            # 42 videos at 32 x 196, 0.09-3.3x with the old core's solver arithmetic in the new core).
            # The bound per video is 10x the old core's error, at least 4e-6; the systematic check is
            # test_long_chains_are_as_accurate_as_the_old_core (docs/gpu-core.md)
            e = exact()
            assert all(torch.equal(u, v) for k, u, v in zip(aot.Compressed._fields, ref[:6], e[:6]) if k in DISCRETE)
            truth = getattr(e, name).double()
            scale = truth.abs().clamp(min=1.0)
            err_old = ((b.double() - truth).abs() / scale).max()
            err_new = ((a.double() - truth).abs() / scale).max()
            assert err_new <= max(4e-6, 10 * err_old), f"{name}: {err_new} from float64, old core {err_old}"
        elif a.dtype in (torch.float32, torch.float64):
            assert rel.max() <= (2e-6 if a.dtype == torch.float32 else 1e-12), f"{name} differs by {rel.max()} (rel.)"
        else:  # one ulp of the output dtype at the value's magnitude
            ulp = torch.finfo(a.dtype).eps * torch.maximum(a.double().abs(), b.double().abs()).clamp(
                min=torch.finfo(a.dtype).tiny)
            assert (diff <= ulp).all(), f"{name} differs by more than one {a.dtype} ulp: max {diff.max()}"


CONFIGS = [dict(clips=c, keep_ref=k, unmatched_anchors=u)
           for c, k, u in itertools.product(["uniform", "dynamic"], ["keyframe", "previous"], ["absorb", "skip"])]
# the defaults before issue 22's round 2: half the anchors local (windows), F // 8 clips, anchor share 0.7
OLD_DEFAULTS = dict(global_share=0.5, anchor_share=0.7, anchor_density=None)
CONFIGS += [OLD_DEFAULTS, dict(OLD_DEFAULTS, clips="dynamic", keep_ref="previous")]


@pytest.mark.parametrize("name", AOT_NAMES)
def test_every_ablation_and_option_equals_the_old_core(name):
    method = aot.methods.get(name)
    for (f, n, d), rho, kw in itertools.product([(8, 36, 24), (13, 49, 16)], [0.1, 0.25], CONFIGS):
        x, s, ls = _video(f, n, d, seed=f * n)
        cfg = method.config(retention=rho, **kw)
        eff = replace(cfg, **method.preset)  # what the method runs: its preset wins over the options
        _same(method(x, s, local_scores=ls, config=cfg), reference(x, s, local_scores=ls, config=eff),
              lambda: reference(x.double(), s.double(), local_scores=ls.double(), config=eff))


@pytest.mark.parametrize("kw", CONFIGS + [dict(tol=None), dict(reg=0.01), dict(reg=0.05), dict(reg=0.05, keep_by="plan"),
                                          dict(mass="literal", lam_intra=1.0),
                                          dict(clip_length=3), dict(clip_length=5), dict(clips="dynamic", tau_seg=0.999),
                                          dict(retention=0.6), dict(retention=0.02)])
def test_batch_equals_the_old_core_per_video(kw):
    x, s, ls = _video(12, 36, 16, seed=7, batch=3)
    cfg = aot.AOTConfig(**{"retention": 0.15, **kw})
    out = aot.compress(x, s, local_scores=ls, config=cfg)
    for i in range(3):
        _same(aot.Compressed(*(t[i] for t in out[:6])), reference(x[i], s[i], local_scores=ls[i], config=cfg),
              lambda: reference(x[i].double(), s[i].double(), local_scores=ls[i].double(), config=cfg))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_equal_the_old_core(dtype):
    x, s, ls = _video(8, 49, 16, seed=2, dtype=dtype)
    for kw in CONFIGS[:2] + CONFIGS[-1:]:
        cfg = aot.AOTConfig(retention=0.2, **kw)
        _same(aot.compress(x, s, local_scores=ls, config=cfg), reference(x, s, local_scores=ls, config=cfg),
              lambda: reference(x.double(), s.double(), local_scores=ls.double(), config=cfg))
    xb, sb, lb = _video(8, 49, 16, seed=3, dtype=dtype, batch=2)
    out = aot.compress(xb, sb, local_scores=lb, config=aot.AOTConfig(retention=0.2))
    for i in range(2):
        _same(aot.Compressed(*(t[i] for t in out[:6])), reference(xb[i], sb[i], local_scores=lb[i],
                                                                    config=aot.AOTConfig(retention=0.2)))


def test_paper_shape_equals_the_old_core():
    x, s, ls = _video(32, 196, 64, seed=11)
    for kw in (dict(), dict(keep_ref="previous", unmatched_anchors="absorb"), dict(tol=None), OLD_DEFAULTS):
        cfg = aot.AOTConfig(**kw)
        _same(aot.compress(x, s, local_scores=ls, config=cfg), reference(x, s, local_scores=ls, config=cfg),
              lambda: reference(x.double(), s.double(), local_scores=ls.double(), config=cfg))



def test_long_chains_are_as_accurate_as_the_old_core():
    """The float32 error of the new core against a float64 run of the old core is, over many videos,
    no larger than the old core's own float32 error (geometric mean of the per-video ratio <= 1.25).

    One video says little: a 12-step Eq. 16 chain is ill-conditioned (a float32-sized relative
    perturbation of the input moves the float64 output by up to 8e-6 at 32 x 196), so each core's
    float32 error is a random draw of that scale and the ratio of two draws on one video spans
    0.1-7.3 (the bound of _same is per video). Measured on this set: geometric mean 1.04 (48 videos
    of 13 x 49 x 16: one clip, 12 chained merge steps, early stop and 100 fixed iterations). An
    extra relative error of 3e-7 on every merge plan (the size of the solver's own float32 rounding)
    raises it to 1.40, one of 1e-6 to 3.2 (docs/gpu-core.md)."""
    ratios = []
    for seed, kw in itertools.product(range(24), [dict(), dict(tol=None)]):
        x, s, ls = _video(13, 49, 16, seed=seed)
        cfg = aot.AOTConfig(**kw)
        new, old = aot.compress(x, s, local_scores=ls, config=cfg), reference(x, s, local_scores=ls, config=cfg)
        exact = reference(x.double(), s.double(), local_scores=ls.double(), config=cfg)
        assert torch.equal(new.sizes, exact.sizes) and torch.equal(old.sizes, exact.sizes)
        truth = exact.tokens.double()
        scale = truth.abs().clamp(min=1.0)
        err_new, err_old = (((t.tokens.double() - truth).abs() / scale).max() for t in (new, old))
        assert err_new <= max(4e-6, 10 * err_old), f"seed {seed} {kw}: {err_new} from float64, old core {err_old}"
        ratios.append(float(err_new / err_old))
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    assert geomean <= 1.25, f"new core's float32 error {geomean:.2f}x the old core's (geometric mean over {len(ratios)})"
