"""aot.compress is differentiable w.r.t. the input tokens, and tracking a graph changes no output."""

import pytest
import torch

import aot

# small enough for finite differences on every input entry, big enough that every stage acts:
# 3 x 3 grids folded into a few anchors, two clips of 3 frames (the merge pass runs a second step
# against updated anchors), and dynamic tokens kept from the later frames
F, N, D = 6, 9, 4
CONFIGS = {
    "default": aot.AOTConfig(retention=0.3, clip_length=3, n_iters=30),
    "plan-literal": aot.AOTConfig(retention=0.3, clip_length=3, n_iters=30, keep_by="plan", mass="literal",
                                  lam_intra=1.0),
    "cosine-merges": aot.AOTConfig(retention=0.3, clip_length=3, intra_merge="cosine", inter_merge="cosine"),
    "dynamic-clips": aot.AOTConfig(retention=0.4, clips="dynamic", clip_length=2, tau_seg=0.0, n_iters=30),
    "counting-options": aot.AOTConfig(retention=0.3, clip_length=3, n_iters=30, keep_ref="previous",
                                      unmatched_anchors="skip"),
    # cosine weights over the anchors "skip" leaves open: some merged token resembles none of them, so
    # its weight row is all zero (its gradient was NaN before the row normalisation stopped dividing
    # zero rows by a clamped tiny sum)
    "counting-options-cosine": aot.AOTConfig(retention=0.3, clip_length=3, intra_merge="cosine",
                                             inter_merge="cosine", keep_ref="previous", unmatched_anchors="skip"),
}


def _inputs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F, N, D, generator=g, dtype=torch.float64)
    x = x + 0.5 * x[:1]  # frames share content, so merging has something to do
    return x.to(dtype), torch.rand(F, N, generator=g)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradient_matches_finite_differences(name):
    config = CONFIGS[name]
    x, scores = _inputs()
    out = aot.compress(x, scores, config=config)
    # the case exercises what it claims to: folding, and for uniform clips kept dynamic tokens
    assert out.tokens.shape[0] == aot.budget(config.retention, F, N) and (out.sizes > 1).any()
    if config.clips == "uniform":
        assert out.dynamic.any()
    # gradcheck compares the autograd Jacobian with central finite differences of the forward
    # pass (an independent answer); the discrete choices (anchors, owners, kept tokens) do not
    # change under its 1e-6 steps on these generic inputs
    assert torch.autograd.gradcheck(lambda t: aot.compress(t, scores, config=config).tokens,
                                    (x.clone().requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_graph_changes_no_output_and_input_untouched(name, dtype):
    config = CONFIGS[name]
    x, scores = _inputs(seed=1, dtype=dtype)
    with torch.no_grad():
        ref = aot.compress(x, scores, config=config)
    tracked = x.clone().requires_grad_()
    out = aot.compress(tracked, scores, config=config)
    assert out.tokens.requires_grad
    for a, b in zip(out[:6] + tuple(out.mix), ref[:6] + tuple(ref.mix)):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)
    out.tokens.float().square().sum().backward()
    assert tracked.grad is not None and tracked.grad.dtype == dtype
    assert torch.isfinite(tracked.grad.float()).all() and tracked.grad.abs().sum() > 0
    assert torch.equal(tracked.detach(), x)


def test_batch_gradient_equals_per_video_gradients():
    config = CONFIGS["default"]
    xs = [_inputs(seed=s)[0] for s in (2, 3)]
    scores = torch.rand(2, F, N)
    batch = torch.stack(xs).requires_grad_()
    aot.compress(batch, scores, config=config).tokens.square().sum().backward()
    for i, x in enumerate(xs):
        one = x.clone().requires_grad_()
        aot.compress(one, scores[i], config=config).tokens.square().sum().backward()
        torch.testing.assert_close(batch.grad[i], one.grad, rtol=1e-12, atol=1e-12)


def test_no_grad_mode_and_detached_input_record_no_graph():
    x, scores = _inputs()
    assert not aot.compress(x, scores, config=CONFIGS["default"]).tokens.requires_grad
    with torch.no_grad():
        out = aot.compress(x.clone().requires_grad_(), scores, config=CONFIGS["default"])
    assert not out.tokens.requires_grad
