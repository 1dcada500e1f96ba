"""Every pre-LLM method can replay its reduction on companion tensors (issue 18, DeepStack).

``out.reduce(y)`` applies the method's selection and merge weights (``out.mix``) to any tensor
aligned with the input tokens; applied to the input tokens themselves it must give ``tokens``.
The independent answer is the method's own output: reduce never sees it.
"""

import pytest
import torch

import aot

import aot.methods
from aot.compress import Mix, apply_mix

PRE = aot.methods.names(stage="pre-llm")


def _video(f=8, n=36, d=24, seed=0, batch=None):
    g = torch.Generator().manual_seed(seed)
    shape = (f, n, d) if batch is None else (batch, f, n, d)
    base = torch.randn(shape[:-2] + (1, d), generator=g)
    x = base + 0.6 * torch.randn(shape, generator=g)  # correlated frames, like a video
    s = torch.rand(shape[:-1], generator=g)
    return x, s


def _retention(name):
    return 0.3 if name == "dycoke" else 0.15


@pytest.mark.parametrize("name", PRE)
def test_reduce_of_input_gives_tokens(name):
    method = aot.methods.get(name)
    x, s = _video()
    out = method(x, s, config=method.config(retention=_retention(name)))
    assert out.mix is not None, f"{name} returns no mix"
    assert out.mix.rows.shape == out.mix.cols.shape == out.mix.weights.shape
    torch.testing.assert_close(out.reduce(x), out.tokens, rtol=1e-5, atol=1e-5)
    # every input token that an output row absorbed (assignment >= 0) has weight in that row
    hit = torch.zeros(out.tokens.shape[0], x.shape[0] * x.shape[1])
    hit.index_put_((out.mix.rows, out.mix.cols), out.mix.weights.abs(), accumulate=True)
    absorbed = out.assignment >= 0
    rows = out.assignment[absorbed]
    assert (hit[rows, torch.nonzero(absorbed).flatten()] > 0).all(), f"{name}: assignment and mix disagree"


@pytest.mark.parametrize("name", PRE)
def test_reduce_companion_is_the_same_linear_map(name):
    """A companion y reduced by out.reduce equals the map applied by a plain loop over the entries,
    and reducing [x, y] concatenated along channels equals [reduce(x), reduce(y)]."""
    method = aot.methods.get(name)
    x, s = _video(seed=1)
    out = method(x, s, config=method.config(retention=_retention(name)))
    y = torch.randn(x.shape[0], x.shape[1], 5, dtype=torch.float64)
    got = out.reduce(y)
    want = torch.zeros(out.tokens.shape[0], 5, dtype=torch.float64)
    flat = y.reshape(-1, 5)
    for r, c, w in zip(out.mix.rows.tolist(), out.mix.cols.tolist(), out.mix.weights.double().tolist()):
        want[r] += w * flat[c]
    torch.testing.assert_close(got, want)
    both = out.reduce(torch.cat([x.double(), y], dim=-1))
    torch.testing.assert_close(both[:, -5:], got)


@pytest.mark.parametrize("name", ["aot", "visionzip", "holitom", "random"])
def test_reduce_batch_equals_one_at_a_time(name):
    method = aot.methods.get(name)
    x, s = _video(batch=2, seed=2)
    cfg = method.config(retention=0.15)
    out = method(x, s, config=cfg)
    y = torch.randn(2, x.shape[1], x.shape[2], 3)
    got = out.reduce(y)
    for i in range(2):
        one = method(x[i], s[i], config=cfg)
        torch.testing.assert_close(got[i], one.reduce(y[i]))
        torch.testing.assert_close(out.reduce(x)[i], out.tokens[i], rtol=1e-5, atol=1e-5)


def test_apply_mix_by_hand():
    mix = Mix(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), torch.tensor([0.25, 0.75, 1.0]))
    y = torch.tensor([[4.0], [5.0], [8.0]])
    torch.testing.assert_close(apply_mix(mix, y, 2), torch.tensor([[7.0], [5.0]]))


def test_reduce_at_retention_one_is_identity():
    x, s = _video()
    out = aot.compress(x, s, config=aot.AOTConfig(retention=1.0))
    torch.testing.assert_close(out.reduce(x), x.reshape(-1, x.shape[-1]))

