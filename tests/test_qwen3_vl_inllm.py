"""FastV and PDrop (in-LLM pruning) through aot.patch on tiny Qwen3-VL models: interleaved M-RoPE,
q_norm / k_norm in the text attention, and DeepStack injections after the first text layers.

The independent answer is inllm_reference.reference (layers by hand, eager attention, tokens dropped
by hand) with the DeepStack injection written here as a plain loop: after layer i < levels, every
visual position still in the sequence gets its row of the unpatched model's level i (rows counted
over the unpruned prompt's visual positions in row-major order). The tiny tower taps 3 blocks, so
injections happen after text layers 0, 1 and 2, and both methods prune before layer 2 or earlier:
some injections land on a pruned sequence.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")

import aot  # noqa: E402
import aot.methods  # noqa: E402
import hf_tiny_qwen3 as hq  # noqa: E402
from inllm_reference import last_real, patched_forward_equals_reference, reference  # noqa: E402

V = "<|vision_start|><|video_pad|><|vision_end|>"
TEXTS = [V + " what is in the video ?", "describe it , where does the cat move ? " + V + " red or blue ?"]
TEXT_LAYERS = 4
CONFIGS = {
    "fastv": aot.methods.get("fastv").config(retention=0.3),  # K = 2: scores at layer 1, prunes before 2
    "pdrop": aot.methods.get("pdrop").config(retention=0.5, layers=(1, 2, 3)),
}


@pytest.fixture(scope="module")
def proc():
    return hq.processor()


def inputs(proc, texts=TEXTS, seeds=(0, 1)):
    return proc(text=list(texts), videos=[hq.frames(8, seed=s) for s in seeds], return_tensors="pt", padding=True)


def one(proc, i):
    return proc(text=[TEXTS[i]], videos=[hq.frames(8, seed=i)], return_tensors="pt")


def model(eager=False, family="qwen3_vl"):
    m = hq.model(family, deepstack=(0, 1, 2), text_layers=TEXT_LAYERS)
    if eager:
        m.set_attn_implementation("eager")
    return m


def lm_inputs(ref, inp):
    got = {}
    h = ref.model.language_model.register_forward_pre_hook(lambda _m, _a, kw: got.update(kw), with_kwargs=True)
    with torch.no_grad():
        ref(**inp, use_cache=False)
    h.remove()
    return got


def deepstack_by_hand(mask, levels):
    """after_layer for the reference: h[r, j] += levels[i][row of original position idx[r, j]]."""
    rank = {}
    for r in range(mask.shape[0]):
        for p in range(mask.shape[1]):
            if mask[r, p]:
                rank[(r, p)] = len(rank)

    def after(i, h, idx):
        if i >= len(levels):
            return h
        h = h.clone()
        for r in range(idx.shape[0]):
            for j, p in enumerate(idx[r].tolist()):
                if (r, p) in rank:
                    h[r, j] = h[r, j] + levels[i][rank[(r, p)]].to(h.dtype)
        return h

    return after


def expected(proc, name, inp, family="qwen3_vl"):
    ref = model(eager=True, family=family)
    got = lm_inputs(ref, inp)
    mask2d = inp["attention_mask"]
    n_visual = int((inp["input_ids"][0] == ref.config.video_token_id).sum())
    stages = aot.methods.get(name).schedule(CONFIGS[name], n_visual, TEXT_LAYERS)
    assert len(got["deepstack_visual_embeds"]) == 3 and stages[0].prune_before <= 2
    want, want_idx = reference(ref, got["inputs_embeds"], inp["input_ids"], mask2d, got["position_ids"], stages,
                               last_real(mask2d), mrope=True,
                               after_layer=deepstack_by_hand(got["visual_pos_masks"], got["deepstack_visual_embeds"]))
    return want, want_idx, stages


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_equal_the_eager_reference_with_deepstack_at_the_kept_positions(proc, name, family):
    inp = inputs(proc)
    assert not bool(inp["attention_mask"].all())
    want, want_idx, stages = expected(proc, name, inp, family)
    m = model(family=family)
    patched_forward_equals_reference(m, CONFIGS[name], inp, want, want_idx, TEXT_LAYERS)
    last = m._aot.last
    assert last["schedule"] == [(st.prune_before, st.keep) for st in stages]
    assert last["tokens_in"] == 64 and last["tokens_out"] == stages[-1].keep


def test_the_check_can_fail_without_the_deepstack_rewiring(proc, monkeypatch):
    """Without the injection at the kept positions, the model's own DeepStack step gets a mask of the
    unpruned prompt on the pruned sequence and fails; injecting the first rows instead of the kept
    ones runs but misses the reference."""
    from aot.models import qwen3_vl as adapter

    inp = inputs(proc)
    want, want_idx, _ = expected(proc, "fastv", inp)
    monkeypatch.setattr(adapter, "_wrap_deepstack", lambda lm, state: None)
    m = model()
    aot.patch(m, CONFIGS["fastv"])
    with pytest.raises((RuntimeError, IndexError)), torch.no_grad():
        m(**inp)
    aot.unpatch(m)

    def first_rows(mask, embeds, kept):
        sub = mask.gather(1, kept)
        return sub, embeds[: int(sub.sum())]

    monkeypatch.undo()
    monkeypatch.setattr(adapter, "deepstack_at", first_rows)
    m = model()
    aot.patch(m, CONFIGS["fastv"])
    with torch.no_grad():
        out = m(**inp)
    real = inp["attention_mask"].gather(1, want_idx).bool()
    assert not torch.allclose(out.logits[real], want[real], atol=1e-3)


def test_generate_with_cache_equals_a_no_cache_greedy_loop(proc):
    inp = one(proc, 1)
    ref = model(eager=True)
    special = [ref.config.video_token_id, ref.config.image_token_id]
    query = torch.tensor([inp["input_ids"].shape[1] - 1])
    stages = aot.methods.get("fastv").schedule(CONFIGS["fastv"], 64, TEXT_LAYERS)
    cur, want_tokens = dict(inp), []
    for _ in range(3):
        got = lm_inputs(ref, cur)
        n = got["inputs_embeds"].shape[1]
        logits, _ = reference(ref, got["inputs_embeds"], cur["input_ids"], torch.ones(1, n, dtype=torch.long),
                              got["position_ids"], stages, query, mrope=True,
                              after_layer=deepstack_by_hand(got["visual_pos_masks"], got["deepstack_visual_embeds"]))
        step = logits[:, -1].clone()
        step[:, special] = -torch.inf
        tok = step.argmax(-1)
        want_tokens.append(tok)
        cur = {**cur, "input_ids": torch.cat([cur["input_ids"], tok[:, None]], 1),
               "attention_mask": torch.cat([cur["attention_mask"], torch.ones_like(tok[:, None])], 1),
               "mm_token_type_ids": torch.cat([cur["mm_token_type_ids"], torch.zeros_like(tok[:, None])], 1)}
    m = model()
    aot.patch(m, CONFIGS["fastv"])
    seq = m.generate(**inp, max_new_tokens=3, do_sample=False, suppress_tokens=special)
    assert torch.equal(seq[:, inp["input_ids"].shape[1]:], torch.stack(want_tokens, 1))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batch_equals_one_at_a_time(proc, name):
    inp = inputs(proc)
    m = model()
    aot.patch(m, CONFIGS[name])
    out = m.generate(**inp, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True)
    for i in range(2):
        alone = m.generate(**one(proc, i), max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                           output_logits=True)
        assert torch.equal(out.sequences[i, -3:], alone.sequences[0, -3:])
        torch.testing.assert_close(torch.stack(out.logits, 1)[i], torch.stack(alone.logits, 1)[0],
                                   atol=1e-4, rtol=1e-4)


def test_retention_one_is_the_unpatched_model_and_unpatch_restores(proc):
    inp = inputs(proc)
    m = model()
    with torch.no_grad():
        want = m(**inp).logits
    aot.patch(m, aot.methods.get("pdrop").config(retention=1.0, layers=(1, 2, 3)))
    with torch.no_grad():
        assert torch.equal(m(**inp).logits, want)
    assert "_deepstack_process" in m.model.language_model.__dict__
    aot.unpatch(m)
    assert "_deepstack_process" not in m.model.language_model.__dict__
    assert all(not layer._forward_pre_hooks for layer in m.model.language_model.layers)
    with torch.no_grad():
        assert torch.equal(m(**inp).logits, want)
