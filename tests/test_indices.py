"""aot.indices.const: the core's cached constant index tensors (issue 17)."""

import torch

import aot
from aot.indices import const


def test_same_content_same_tensor_and_values_of_torch_tensor():
    data = [[3, 1], [2, 7]]
    a, b = const(data, "cpu"), const([[3, 1], [2, 7]], "cpu")
    assert a is b and torch.equal(a, torch.tensor(data))
    assert const([[3, 1], [2, 8]], "cpu") is not a
    m = const([[True, False]], "cpu", torch.bool)
    assert m.dtype == torch.bool and m.tolist() == [[True, False]]
    assert const([[1, 0]], "cpu") is not const([[True, False]], "cpu", torch.bool)  # dtype is part of the key


def test_built_under_inference_mode_still_serves_a_graph():
    """A first call inside inference_mode (a model's forward) must not cache inference tensors that a
    later call recording a graph cannot save for backward."""
    with torch.inference_mode():
        t = const([5, 4, 0], "cpu")
    assert not t.is_inference()
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(8, 36, 16, generator=g), torch.rand(8, 36, generator=g)
    cfg = aot.AOTConfig(retention=0.2)
    with torch.inference_mode():
        ref = aot.compress(x, s, config=cfg)
    xg = x.clone().requires_grad_(True)
    out = aot.compress(xg, s, config=cfg)  # the same layout: every index tensor comes from the cache
    out.tokens.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    torch.testing.assert_close(out.tokens.detach(), ref.tokens)
