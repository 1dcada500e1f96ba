"""Method.check (budget feasibility from F, N and retention, before any data) and the aot-paper preset."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import aot
import aot.methods as M


def _runs(method, config, f, n):
    x = torch.randn(f, n, 8) + 0.1
    try:
        method(x, torch.rand(f, n), grid=None if int(n ** 0.5) ** 2 == n else (1, n), config=config)
        return None
    except ValueError as err:
        return str(err)


@pytest.mark.parametrize("name", M.names(stage="pre-llm"))  # in-LLM methods run only inside a model
def test_check_agrees_with_the_run(name):
    """check() refuses exactly the (F, N, retention) the method itself refuses, with the same message."""
    method = M.get(name)
    for f, n, r in itertools.product([1, 3, 8, 13], [1, 4, 9], [0.01, 0.05, 0.1, 0.25, 0.3, 1.0]):
        cfg = method.config(retention=r)
        try:
            method.check(cfg, f, n)
            said = None
        except ValueError as err:
            said = str(err)
        assert said == _runs(method, cfg, f, n), (name, f, n, r)


def test_dycoke_floor_is_known_before_decoding():
    dycoke = M.get("dycoke")
    with pytest.raises(ValueError, match=r"8 frames x 196 tokens = 1568.*use retention >= 0.25"):
        dycoke.check(dycoke.config(retention=0.1), 32, 196)
    dycoke.check(dycoke.config(retention=0.25), 32, 196)


def test_check_validates_shapes_and_config_type():
    with pytest.raises(ValueError, match="frames must be an int >= 1, got 0"):
        M.get("aot").check(aot.AOTConfig(), 0, 196)
    with pytest.raises(TypeError, match="takes a AOTConfig"):
        M.get("aot").check(M.get("dycoke").config(), 32, 196)


def test_aot_paper_sets_every_stated_knob():
    paper = M.get("aot-paper")
    cfg = paper.effective_config(aot.AOTConfig(retention=0.1))  # our defaults in, the paper's out
    assert (cfg.lam_intra, cfg.lam_inter, cfg.mass, cfg.keep_by, cfg.tol) == (1.0, 1.0, "literal", "plan", 0.01)
    assert (cfg.reg, cfg.n_iters, cfg.global_share, cfg.clips, cfg.anchor_share) == (0.1, 100, 0.5, "uniform", 0.5)
    assert (cfg.anchor_select, cfg.intra_merge, cfg.inter_merge) == ("attention", "ot", "ot")
    # every AOTConfig field but the per-run ones is fixed by the preset
    assert set(paper.preset) == {f.name for f in dataclasses.fields(aot.AOTConfig)} - {
        "retention", "clip_length", "tau_seg", "seed"}


def test_aot_paper_runs_the_paper_config():
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(8, 49, 16, generator=g), torch.rand(8, 49, generator=g)
    paper = M.get("aot-paper")
    out = paper(x, s, config=paper.config(retention=0.2))
    ref = aot.compress(x, s, config=aot.AOTConfig(retention=0.2, **paper.preset))
    assert out.tokens.shape[0] == aot.budget(0.2, 8, 49)
    torch.testing.assert_close(out.tokens, ref.tokens, rtol=0, atol=0)
    assert not torch.equal(out.tokens, aot.compress(x, s, config=aot.AOTConfig(retention=0.2)).tokens)


def test_which_methods_read_local_scores():
    """Method.reads_local_scores decides whether adapters hook the shallow score block: only AOT with
    attention-chosen anchors and an effective global_share below 1 (presets applied)."""
    aot_m = M.get("aot")
    assert not aot_m.reads_local_scores(aot.AOTConfig(retention=0.1))  # default global_share 1.0
    assert aot_m.reads_local_scores(aot.AOTConfig(retention=0.1, global_share=0.5))
    assert not aot_m.reads_local_scores(aot.AOTConfig(retention=0.1, global_share=0.5, anchor_select="random"))
    assert M.get("aot-local-global").reads_local_scores(aot.AOTConfig(retention=0.1))  # preset 0.5 wins
    assert M.get("aot-no-global").reads_local_scores(aot.AOTConfig(retention=0.1))
    assert M.get("aot-paper").reads_local_scores(aot.AOTConfig(retention=0.1))
    assert not M.get("aot-no-local").reads_local_scores(aot.AOTConfig(retention=0.1, global_share=0.5))
    assert not M.get("aot-random-anchors").reads_local_scores(aot.AOTConfig(retention=0.1, global_share=0.5))
    for name in ("visionzip", "holitom", "fastvid", "random"):
        m = M.get(name)
        assert not m.reads_local_scores(m.config(retention=0.1))
