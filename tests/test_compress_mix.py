"""AOT's mix (Compressed.mix): the exact linear map from the F*N input tokens to the R output rows.

The independent answer is the pipeline's own tokens, computed stage by stage (Eq. 11 per frame, the
sequential Eq. 16 updates per clip) without ever forming the map: replaying the map on the input
must give them back to rounding (float32 accumulation in a different order: within 1e-5).
"""

import itertools

import pytest
import torch

import aot
import aot.methods
from aot.compress import apply_mix

AOT_NAMES = [n for n in aot.methods.names(stage="pre-llm") if n.startswith("aot")]


def _video(f, n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, n, d, generator=g)
    x = base + 0.5 * torch.randn(f, n, d, generator=g).cumsum(0) / (1 + torch.arange(f).view(f, 1, 1))
    return x.to(dtype), torch.rand(f, n, generator=g)


def _dense(out, fn):
    w = torch.zeros(out.tokens.shape[0], fn, dtype=torch.float64)
    w.index_put_((out.mix.rows, out.mix.cols), out.mix.weights.double(), accumulate=True)
    return w


def _check(out, x):
    f, n, _ = x.shape
    ref = out.tokens.float()
    got = apply_mix(out.mix, x.float(), out.tokens.shape[0])
    tol = 1e-5 if x.dtype in (torch.float32, torch.float64) else 1e-2  # bf16: tokens are rounded once
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    w = _dense(out, f * n)
    absorbed = out.assignment >= 0
    # every absorbed input has positive weight in the row that absorbed it
    assert (w[out.assignment[absorbed], torch.nonzero(absorbed).flatten()] > 0).all()
    assert (out.mix.rows >= 0).all() and (out.mix.rows < out.tokens.shape[0]).all()
    return w


@pytest.mark.parametrize("name", AOT_NAMES)
def test_mix_replays_tokens_every_ablation_and_option(name):
    method = aot.methods.get(name)
    for (f, n, d), rho, clips, keep_ref, unmatched in itertools.product(
            [(8, 36, 24), (13, 49, 16)], [0.1, 0.25], ["uniform", "dynamic"], ["keyframe", "previous"],
            ["absorb", "skip"]):
        x, s = _video(f, n, d, seed=f + n)
        cfg = method.config(retention=rho, clips=clips, keep_ref=keep_ref, unmatched_anchors=unmatched)
        w = _check(method(x, s, config=cfg), x)
        if name == "aot-no-ot":  # nothing merged: each row is one input token with weight 1, the rest no entry
            assert torch.equal((w != 0).sum(1), torch.ones(w.shape[0], dtype=torch.long))
            assert torch.equal(w[w != 0], torch.ones(w.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_mix_dtypes(dtype):
    x, s = _video(8, 49, 16, seed=3, dtype=dtype)
    out = aot.compress(x, s.to(dtype), config=aot.AOTConfig(retention=0.2))
    assert out.mix.weights.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _check(out, x)


def test_mix_rows_are_convex_like_for_unit_sizes():
    """An anchor row is a soft average: its weights are >= 0 and sum to 1 (Eq. 11 and Eq. 16 are
    normalised updates), and the clip anchors' weights cover only their own clip's frames."""
    x, s = _video(12, 36, 8, seed=4)
    cfg = aot.AOTConfig(retention=0.2, clip_length=4)
    out = aot.compress(x, s, config=cfg)
    w = _dense(out, 12 * 36)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0], dtype=torch.float64))
    frame_of_col = torch.arange(12 * 36) // 36
    for r in range(w.shape[0]):
        frames = frame_of_col[w[r] > 0].unique()
        if out.dynamic[r]:
            assert frames.tolist() == [int(out.frames[r])]
        else:
            assert frames.min() == out.frames[r] and frames.max() < out.frames[r] + 4


def test_cosine_merge_drops_a_token_that_resembles_no_anchor():
    """aot-cosine: a token with cosine <= 0 to every anchor of its frame gets no weight, so it is dropped
    (assignment -1, not counted in sizes) rather than attributed to anchor 0 with zero weight."""
    d = 6
    e = torch.eye(d)
    frame = torch.stack([e[0], e[1], e[0] + 0.1 * e[1], -e[0] - e[1], e[1] + 0.2 * e[0]]
                        + [e[0] + 0.05 * k * e[1] for k in range(4)])  # (9, d); token 3 is opposite to all
    x = frame.unsqueeze(0)
    s = torch.zeros(1, 9)
    s[0, 0] = s[0, 1] = 1.0  # anchors: tokens 0 and 1
    method = aot.methods.get("aot-cosine")
    out = method(x, s, grid=(3, 3), config=method.config(retention=0.2, global_share=1.0))
    assert out.positions.tolist() == [0, 1]
    assert out.assignment[3] == -1 and int(out.sizes.sum()) == 8
    _check(out, x)


def test_with_mix_false_skips_only_the_mix():
    x, s = _video(8, 36, 16, seed=5)
    full = aot.compress(x, s, config=aot.AOTConfig(retention=0.2))
    bare = aot.compress(x, s, config=aot.AOTConfig(retention=0.2), with_mix=False)
    assert bare.mix is None
    for a, b in zip(full[:6], bare[:6]):
        assert torch.equal(a, b)
