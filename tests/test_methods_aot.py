"""The method registry, AOT under its registry name, and the paper's ablations."""

import dataclasses

import numpy as np
import pytest
import torch

import aot
import aot.methods as M
from aot.intra import aggregate_intra

F, N, D = 8, 196, 24


@pytest.fixture(scope="module")
def video():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, N, D, generator=g) + 0.7 * torch.randn(F, N, D, generator=g)
    return x, torch.rand(F, N, generator=g), torch.rand(F, N, generator=g)


def test_registry_lookup_and_typos():
    assert {"aot", "aot-random-anchors", "aot-no-local", "aot-no-global", "aot-no-ot", "aot-cosine",
            "aot-intra-only", "aot-inter-only"} <= set(M.names())
    with pytest.raises(ValueError) as info:
        M.get("aot-no-otx")
    assert "'aot-no-ot'" in str(info.value) and "choose one of: aot," in str(info.value)
    with pytest.raises(TypeError, match="takes a AOTConfig"):
        M.get("aot")(torch.randn(1, 4, 2), torch.rand(1, 4), config=object())


def test_aot_by_name_is_compress(video):
    x, s, ls = video
    cfg = aot.AOTConfig(retention=0.15)
    a = M.get("aot")(x, s, local_scores=ls, config=cfg)
    b = aot.compress(x, s, local_scores=ls, config=cfg)
    for u, v in zip(a[:6], b[:6]):
        assert torch.equal(u, v)
    for u, v in zip(a.mix, b.mix):
        assert torch.equal(u, v)


@pytest.mark.parametrize("name", ["aot-plan-keep", "aot-random-anchors", "aot-no-local", "aot-no-global", "aot-no-ot",
                                  "aot-cosine", "aot-intra-only", "aot-inter-only"])
@pytest.mark.parametrize("rho", [0.1, 0.25])
def test_ablations_exact_budget_and_consistent(video, name, rho):
    x, s, ls = video
    m = M.get(name)
    out = m(x, s, local_scores=ls, config=m.config(retention=rho))
    r = aot.budget(rho, F, N)
    assert out.tokens.shape == (r, D) and torch.isfinite(out.tokens).all()
    kept = out.assignment >= 0
    assert torch.equal(torch.bincount(out.assignment[kept], minlength=r), out.sizes)
    assert (out.positions.diff() > 0).all()
    # a preset wins over a config passed in: the ablation is what its name says
    again = m(x, s, local_scores=ls, config=aot.AOTConfig(retention=rho))
    assert torch.equal(again.tokens, out.tokens)


def test_no_ot_keeps_original_tokens_only(video):
    x, s, ls = video
    out = M.get("aot-no-ot")(x, s, local_scores=ls, config=aot.AOTConfig(retention=0.1))
    torch.testing.assert_close(out.tokens, x.reshape(-1, D)[out.positions])
    assert (out.sizes == 1).all() and int((out.assignment >= 0).sum()) == out.tokens.shape[0]


def test_inter_only_keeps_unmerged_frame_tokens(video):
    x, s, ls = video
    out = M.get("aot-inter-only")(x, s, local_scores=ls, config=aot.AOTConfig(retention=0.2, clip_length=4))
    flat = x.reshape(-1, D)
    torch.testing.assert_close(out.tokens[out.dynamic], flat[out.positions[out.dynamic]])
    assert not torch.allclose(out.tokens[~out.dynamic], flat[out.positions[~out.dynamic]])  # anchors merged over time


def test_intra_only_keyframes_are_intra_anchors(video):
    x, s, ls = video
    cfg = aot.AOTConfig(retention=0.2, clip_length=4)
    out = M.get("aot-intra-only")(x, s, local_scores=ls, config=cfg)
    full = aot.compress(x, s, local_scores=ls, config=cfg)
    key0 = (out.frames == 0) & ~out.dynamic
    assert torch.equal(out.positions[key0], full.positions[(full.frames == 0) & ~full.dynamic])  # same anchors...
    # ...but not updated by later frames: exactly the intra stage's output (the kept set differs:
    # without inter-frame OT, "changed" is judged by cosine, not by the plan)
    intra = aggregate_intra(x[:1], x[:1].norm(dim=-1), out.positions[key0].unsqueeze(0), lam=cfg.lam_intra)
    torch.testing.assert_close(out.tokens[key0], intra.tokens[0])
    assert not torch.allclose(full.tokens[key0], out.tokens[key0])
    assert out.sizes.sum() < F * N  # merged later-frame tokens were dropped


def test_random_anchors_seeded(video):
    x, s, ls = video
    m = M.get("aot-random-anchors")
    a = m(x, s, config=m.config(retention=0.1, seed=1))
    b = m(x, s, config=m.config(retention=0.1, seed=1))
    c = m(x, s, config=m.config(retention=0.1, seed=2))
    assert torch.equal(a.positions, b.positions) and not torch.equal(a.positions, c.positions)
    att = M.get("aot")(x, s, config=aot.AOTConfig(retention=0.1))
    assert not torch.equal(a.positions, att.positions)


def test_cosine_intra_weights_match_loop():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 12, 6, generator=g, dtype=torch.float64)
    anchors = torch.tensor([[1, 4, 9]])
    got = aggregate_intra(x, x.norm(dim=-1), anchors, lam=1.0, mass="unit", merge="cosine")
    xs = x[0].numpy()
    rest = [i for i in range(12) if i not in (1, 4, 9)]
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    w = np.array([[max(cos(xs[j], xs[i]), 0) for i in rest] for j in (1, 4, 9)])  # (3, 9)
    plan = w / w.sum(0, keepdims=True) / len(rest) * 3  # each token spreads 1/9; unit mass: x3
    for row, j in enumerate((1, 4, 9)):
        want = (xs[j] + plan[row] @ xs[rest]) / (1 + plan[row].sum())
        np.testing.assert_allclose(got.tokens[0, row].numpy(), want, rtol=1e-10)


def test_config_rejects_unknown_switches():
    with pytest.raises(ValueError, match="intra_merge must be 'ot', 'cosine' or 'none'"):
        aot.AOTConfig(intra_merge="mean")
    with pytest.raises(ValueError, match="anchor_select"):
        dataclasses.replace(aot.AOTConfig(), anchor_select="cls")
