"""aot.compress end to end: exact budget, conservation, order, batching, dtypes, errors."""

import itertools

import pytest
import torch

import aot
from aot.compress import plan_budget


def _video(f, n, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # smooth in time, so that clips and merging have something to do
    base = torch.randn(1, n, d, generator=g)
    x = base + 0.5 * torch.randn(f, n, d, generator=g).cumsum(0) / (1 + torch.arange(f).view(f, 1, 1))
    return x.to(dtype), torch.rand(f, n, generator=g), torch.rand(f, n, generator=g)


def _check_invariants(out, f, n, rho):
    r = aot.budget(rho, f, n)
    assert out.tokens.shape[0] == r
    assert out.sizes.sum() == f * n and (out.sizes >= 1).all()
    assert (out.assignment >= 0).all()
    assert torch.equal(torch.bincount(out.assignment, minlength=r), out.sizes)
    assert (out.positions.diff() > 0).all()  # ordered by (frame, position), no duplicates
    assert torch.equal(out.frames, out.positions // n)


def test_budget_rounding_rule():
    assert aot.budget(0.1, 32, 196) == 627  # 627.2
    assert aot.budget(0.15, 32, 196) == 941  # 940.8
    assert aot.budget(0.25, 2, 1) == 1  # 0.5 rounds half up
    assert aot.budget(0.15, 10, 1) == 2  # 1.5 written as 0.15 * 10 = 1.4999999999999998
    assert aot.budget(1.0, 3, 7) == 21
    assert aot.budget(0.01, 1, 10) == 0  # compress rejects this one


@pytest.mark.parametrize("clips", ["uniform", "dynamic"])
def test_budget_exact_over_grid(clips):
    for f, n, rho in itertools.product((1, 2, 3, 5, 8, 13, 32, 64), (169, 196, 729), (0.1, 0.15, 0.2, 0.25, 0.6)):
        x, s, ls = _video(f, n, d=8, seed=f + n)
        out = aot.compress(x, s, local_scores=ls, config=aot.AOTConfig(retention=rho, clips=clips, n_iters=5))
        _check_invariants(out, f, n, rho)


def test_plan_budget_split():
    assert plan_budget(627, 32, 196, 8, 0.5) == ([39] * 8, 315)
    m, k = plan_budget(100, 8, 196, 8, 0.5)  # every clip a single frame: no dynamic tokens possible
    assert sum(m) == 100 and k == 0 and set(m) == {12, 13}
    with pytest.raises(ValueError, match="below one token per clip"):
        plan_budget(7, 8, 196, 8, 0.5)


def test_defaults_at_ten_percent_keep_anchors_and_dynamic_tokens():
    x, s, ls = _video(32, 196, d=32)
    out = aot.compress(x, s, local_scores=ls)
    _check_invariants(out, 32, 196, 0.1)
    assert int(out.dynamic.sum()) == 627 - 8 * 55  # M = round_half_up(0.7 * 627 / 8) = 55 anchors per clip
    assert set(out.frames[~out.dynamic].tolist()) == {0, 4, 8, 12, 16, 20, 24, 28}  # clip anchors on keyframes
    assert not out.dynamic[out.frames % 4 == 0].any()


def test_retention_one_is_identity():
    x, s, _ = _video(4, 196)
    out = aot.compress(x, s, config=aot.AOTConfig(retention=1.0))
    torch.testing.assert_close(out.tokens, x.reshape(-1, 16))
    assert (out.sizes == 1).all() and torch.equal(out.assignment, torch.arange(4 * 196))


def test_single_frame_has_no_inter_stage():
    x, s, ls = _video(1, 196)
    out = aot.compress(x, s, local_scores=ls)
    _check_invariants(out, 1, 196, 0.1)
    assert not out.dynamic.any() and (out.frames == 0).all()


def test_deterministic():
    x, s, ls = _video(16, 196)
    a = aot.compress(x, s, local_scores=ls, config=aot.AOTConfig(clips="dynamic"))
    b = aot.compress(x, s, local_scores=ls, config=aot.AOTConfig(clips="dynamic"))
    for u, v in zip(a[:6], b[:6]):
        assert torch.equal(u, v)
    for u, v in zip(a.mix, b.mix):
        assert torch.equal(u, v)


def test_batch_equals_loop():
    xs, ss = zip(*[_video(8, 196, seed=i)[:2] for i in range(3)])
    x, s = torch.stack(xs), torch.stack(ss)
    cfg = aot.AOTConfig(retention=0.2, clips="dynamic")
    batched = aot.compress(x, s, config=cfg)
    assert batched.tokens.shape == (3, aot.budget(0.2, 8, 196), 16)
    for i in range(3):
        single = aot.compress(xs[i], ss[i], config=cfg)
        for u, v in zip(batched[:6], single[:6]):
            assert torch.equal(u[i], v)
        e = single.mix.rows.numel()  # the batch pads each video's mix with weight-0 entries
        for u, v in zip(batched.mix, single.mix):
            assert torch.equal(u[i, :e], v) and not u[i, e:].any()


def test_grid_must_match_and_non_square_needs_grid():
    x, s, _ = _video(2, 12 * 14)
    out = aot.compress(x, s, grid=(12, 14), config=aot.AOTConfig(retention=0.2))
    _check_invariants(out, 2, 168, 0.2)
    with pytest.raises(ValueError, match="not a square"):
        aot.compress(x, s)
    with pytest.raises(ValueError, match="h \\* w = N = 168"):
        aot.compress(x, s, grid=(12, 12))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_round_trip(dtype):
    x, s, _ = _video(8, 196, dtype=dtype)
    out = aot.compress(x, s.to(dtype))
    assert out.tokens.dtype == dtype and torch.isfinite(out.tokens).all()
    ref = aot.compress(x.float(), s.to(dtype).float())  # same (rounded) scores, same anchors
    torch.testing.assert_close(out.tokens.float(), ref.tokens, atol=0.05, rtol=0.05)


def test_float16_large_values_no_nan():
    x, s, _ = _video(4, 196, dtype=torch.float32)
    out = aot.compress((x * 200).half(), s)  # squares overflow float16; we compute in float32
    assert torch.isfinite(out.tokens).all()


def _bad(**over):
    x, s, _ = _video(4, 196)
    kw = dict(x=x, scores=s)
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (_bad(x=torch.zeros(0, 196, 16)), ValueError, "at least one frame"),
        (_bad(x=torch.ones(4, 196, 16, dtype=torch.long)), TypeError, "floating"),
        (_bad(x=[[1.0]]), TypeError, "torch.Tensor"),
        (_bad(x=torch.ones(196, 16)), ValueError, "(F, N, d)"),
        (_bad(scores=torch.rand(4, 195)), ValueError, "scores must have shape (4, 196)"),
        (_bad(scores=torch.ones(4, 196, dtype=torch.int32)), TypeError, "scores must be a floating"),
        (_bad(scores=torch.full((4, 196), float("nan"))), ValueError, "scores contains NaN"),
        (_bad(local_scores=torch.rand(3, 196)), ValueError, "local_scores must have shape"),
        (_bad(config=dict(retention=0.1)), TypeError, "AOTConfig"),
    ],
)
def test_bad_input(kwargs, exc, words):
    with pytest.raises(exc) as info:
        aot.compress(kwargs.pop("x"), kwargs.pop("scores"), **kwargs)
    assert words in str(info.value)


def test_bad_tokens():
    x, s, _ = _video(4, 196)
    for value, words in ((float("nan"), "NaN or Inf"), (float("inf"), "NaN or Inf")):
        y = x.clone()
        y[2, 5, 3] = value
        with pytest.raises(ValueError, match=words):
            aot.compress(y, s)
    y = x.clone()
    y[1, 7] = 0
    with pytest.raises(ValueError, match="zero-norm tokens \\(first: frame 1, token 7\\)"):
        aot.compress(y, s)


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.5, float("nan")])
def test_retention_outside_range(rho):
    with pytest.raises(ValueError, match="retention must be a number in \\(0.0, 1.0\\]"):
        aot.AOTConfig(retention=rho)


def test_budget_below_one_token_per_clip():
    x, s, _ = _video(32, 4)  # 32 frames of a 2x2 grid: 8 clips, 1% keeps 1 token
    with pytest.raises(ValueError, match="below one token per clip"):
        aot.compress(x, s, config=aot.AOTConfig(retention=0.01))
    with pytest.raises(ValueError, match="retention=0.001 keeps 0 of 128 tokens"):
        aot.compress(x, s, config=aot.AOTConfig(retention=0.001))


def _anchor_counts(out, f):
    """Clip anchors per frame of an output (they sit on their clip's first frame)."""
    return torch.bincount(out.frames[~out.dynamic], minlength=f)


@pytest.mark.parametrize("f, rho", [(256, 0.1), (512, 0.05), (128, 0.25), (64, 0.5), (1024, 0.1)])
def test_long_videos_keep_the_anchor_share_and_fold_every_keyframe(f, rho):
    # a clip of L frames needs anchor_share * rho * L * N anchors; with the old default L = F // 8
    # (always 8 clips) that exceeds N once rho * F > 8 / anchor_share: the anchors were capped at
    # N, keyframes went through whole (no intra OT) and the share fell (0.31 at 256 frames, 10%)
    n = 16
    x, s, ls = _video(f, n, d=8)
    cfg = aot.AOTConfig(retention=rho, n_iters=10)
    out = aot.compress(x, s, local_scores=ls, config=cfg)
    _check_invariants(out, f, n, rho)
    r = aot.budget(rho, f, n)
    per_frame = _anchor_counts(out, f)
    keyframes = per_frame[per_frame > 0]
    assert (keyframes < n).all()  # every keyframe is folded into fewer anchors than it has tokens
    assert keyframes.max() - keyframes.min() <= 1
    # the anchors take anchor_share of the budget, up to rounding M to an integer (1/2 per clip)
    assert abs(int(keyframes.sum()) - cfg.anchor_share * r) <= 0.5 * keyframes.numel() + 1e-9


@pytest.mark.parametrize("f", [2, 3, 5, 8, 15])
def test_short_videos_have_an_inter_frame_stage(f):
    # the old default F // 8 = 1 for F < 16 made every frame its own clip: no inter-frame OT and
    # no dynamic tokens at all, whatever anchor_share asked for
    n = 16
    x, s, ls = _video(f, n, d=8)
    cfg = aot.AOTConfig(retention=0.25, n_iters=10)
    out = aot.compress(x, s, local_scores=ls, config=cfg)
    _check_invariants(out, f, n, 0.25)
    per_frame = _anchor_counts(out, f)
    assert int((per_frame > 0).sum()) == -(-f // 2)  # clips of 2 frames (the last one may be single)
    assert out.dynamic.any()  # later frames supply dynamic tokens
    assert (out.sizes[~out.dynamic] > 1).any()


def test_default_stops_sinkhorn_early_and_stays_close_to_fixed_iterations():
    # issue 8: tol=0.01 (the paper's delta) is the default; tol=None keeps 100 fixed iterations
    assert aot.AOTConfig().tol == 0.01 and aot.AOTConfig().n_iters == 100
    x, s, ls = _video(16, 64, d=32, seed=3)
    early = aot.compress(x, s, local_scores=ls, config=aot.AOTConfig(retention=0.2))
    fixed = aot.compress(x, s, local_scores=ls, config=aot.AOTConfig(retention=0.2, tol=None))
    assert not torch.equal(early.tokens, fixed.tokens)  # it did stop before 100 iterations
    assert torch.equal(early.positions, fixed.positions) and torch.equal(early.sizes, fixed.sizes)
    cos = torch.nn.functional.cosine_similarity(early.tokens, fixed.tokens, dim=-1)
    assert cos.min() > 0.999
