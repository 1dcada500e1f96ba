"""The contract every pre-LLM comparison method keeps, one test per rule over the registry.

Exact budget and output invariants, determinism and batch = loop, retention 1 = identity with the
dtype kept, and aot.compress's input validation. Each method's own rule is tested against a plain
loop in test_methods_baselines.py (VisionZip, FastVID, DyCoke, pooling, random) and
test_methods_peers.py (HoliTom, FlashVID); AOT and its ablations in test_compress.py and
test_methods_aot.py.
"""

import itertools
import math

import pytest
import torch

import aot.methods as methods
from aot.config import AOTConfig, budget
from methods_common import check_invariants, video

# every pre-LLM method that is not AOT (or one of its ablations), straight from the registry
COMPARISON = [n for n in methods.names(stage="pre-llm") if methods.get(n).config_cls is not AOTConfig]
# merging methods absorb every input token at these shapes and retentions (at very small budgets
# they may keep only salient tokens and drop the rest)
MERGE_ALL = {"visionzip", "fastvid", "pooling"}
MERGE_ALL_CASES = set(itertools.product((1, 4, 8, 32), (169, 196), (0.0,), (0.1, 0.25)))

# the smallest budget a method can produce, for methods that have one (F frames, N tokens each)
FLOOR = {
    "dycoke": lambda f, n: math.ceil(f / 4) * n,  # one whole frame in four
    "pooling": lambda f, n: f,  # at least one cell per frame
}

# (frames, tokens per frame, stillness, retention): the union of the grids the two per-family files
# used to run, so that no method is checked on fewer cases than before
CASES = sorted(
    MERGE_ALL_CASES
    | {(f, n, still, rho)
       for f, n, still, rho in itertools.product((1, 3, 8, 32), (16, 49, 196), (0.0, 0.9), (0.03, 0.1, 0.15, 0.25, 0.6))
       if not (f * n > 32 * 49 and n == 196 and f != 32)}
)


def test_every_comparison_method_is_covered():
    # a method that dropped out of the registry would otherwise silently drop out of every test here
    assert set(COMPARISON) == {"visionzip", "fastvid", "dycoke", "pooling", "random", "holitom", "flashvid",
                               "prunevid"}


@pytest.mark.parametrize("name", COMPARISON)
def test_exact_budget_and_invariants(name):
    method = methods.get(name)
    for f, n, still, retention in CASES:
        x, s = video(f, n, seed=f + n, still=still)
        r = budget(retention, f, n)
        if r == 0:
            continue
        config = method.config(retention=retention)
        if name in FLOOR and r < FLOOR[name](f, n):  # below the method's floor: refused, saying what works
            with pytest.raises(ValueError, match="use retention >="):
                method(x, s, config=config)
            continue
        out = method(x, s, config=config)
        check_invariants(out, f, n, r)
        assert out.tokens.dtype == x.dtype
        assert int(out.sizes.sum()) == int((out.assignment >= 0).sum()) <= f * n
        if name in MERGE_ALL and (f, n, still, retention) in MERGE_ALL_CASES:
            assert int(out.sizes.sum()) == f * n, (f, n, still, retention)


@pytest.mark.parametrize("name", COMPARISON)
def test_deterministic_and_batch_equals_loop(name):
    method = methods.get(name)
    config = method.config(retention=0.3)
    xs, ss = zip(*(video(8, 36, seed=i, still=0.5 * (i % 2)) for i in range(3)))
    x, s = torch.stack(xs), torch.stack(ss)
    batch = method(x, s, config=config)
    again = method(x, s, config=config)
    for field, other in zip(batch[:6], again[:6]):
        assert torch.equal(field, other)
    for field, other in zip(batch.mix, again.mix):
        assert torch.equal(field, other)
    for i in range(3):
        one = method(xs[i], ss[i], config=config)
        for field, stacked in zip(one[:6], batch[:6]):
            assert torch.equal(field, stacked[i])
        e = one.mix.rows.numel()  # the batch pads each video's mix with weight-0 entries
        for field, stacked in zip(one.mix, batch.mix):
            assert torch.equal(field, stacked[i, :e])
        assert (batch.mix.weights[i, e:] == 0).all()


@pytest.mark.parametrize("name", COMPARISON)
def test_retention_one_is_identity_and_dtype_kept(name):
    method = methods.get(name)
    x, s = video(4, 16, dtype=torch.bfloat16)
    out = method(x, s, config=method.config(retention=1.0))
    assert torch.equal(out.tokens, x.reshape(64, -1)) and torch.equal(out.sizes, torch.ones(64, dtype=torch.long))
    out = method(x, s, config=method.config(retention=0.5))
    assert out.tokens.dtype == torch.bfloat16 and out.tokens.shape[0] == 32


@pytest.mark.parametrize("name", COMPARISON)
def test_validation_matches_compress(name):
    method = methods.get(name)
    x, s = video(2, 16)
    bad = x.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        method(bad, s)
    with pytest.raises(ValueError, match="scores must have shape"):
        method(x, s[:, :4])
    with pytest.raises(ValueError, match="not a square"):
        method(x[:, :15], s[:, :15])
    with pytest.raises(TypeError):
        method.fn(x, s, config=object())
    other = next(methods.get(m) for m in COMPARISON if methods.get(m).config_cls is not method.config_cls)
    with pytest.raises(TypeError, match="takes a"):
        method(x, s, config=other.config())
    with pytest.raises(ValueError, match="retention"):
        method.config(retention=0.0)
    with pytest.raises(ValueError, match=r"keeps 0 of 32 tokens .*use retention >= 0\.03125"):
        method(x, s, config=method.config(retention=0.001))
    out = method(x.reshape(2, 4, 4, 8).transpose(1, 2).reshape(2, 16, 8), s, grid=(2, 8),
                 config=method.config(retention=0.75))
    check_invariants(out, 2, 16, 24)
