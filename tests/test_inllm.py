"""FastV and PDrop (in-LLM pruning, aot.models.inllm) through aot.patch on tiny LLaVA-OneVision models.

The independent answer (inllm_reference.reference, shared with test_qwen_inllm): the language
model's layers run one by one with eager attention (weights taken from the attention module
itself), visual tokens dropped by hand between layers with freshly built masks and RoPE at the
kept positions, no KV cache. The patched model runs with SDPA and its own loop.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")  # transformers' video processors need it (see README)

import aot  # noqa: E402
import aot.methods  # noqa: E402
import hf_tiny  # noqa: E402
from inllm_reference import last_real, llm_inputs, patched_forward_equals_reference, reference  # noqa: E402
from aot.methods.inllm import Stage  # noqa: E402

TEXTS = ["<video> what is in the video ?", "describe it , where does the cat move ? <video> red or blue ?"]
TEXT_LAYERS = 4
CONFIGS = {  # method -> config on the 4-layer tiny LLM
    "fastv": aot.methods.get("fastv").config(retention=0.3),
    "pdrop": aot.methods.get("pdrop").config(retention=0.5, layers=(1, 2, 3)),
}


@pytest.fixture(scope="module")
def proc():
    return hf_tiny.processor()


def inputs(proc, texts=TEXTS, seeds=(0, 1)):
    videos = [hf_tiny.frames(8, seed=s) for s in seeds]
    return proc(text=list(texts), videos=videos, return_tensors="pt", padding=True)


def one(inp, i):
    keep = inp["attention_mask"][i].bool()
    return {"input_ids": inp["input_ids"][i:i + 1, keep], "attention_mask": inp["attention_mask"][i:i + 1, keep],
            "pixel_values_videos": inp["pixel_values_videos"][i:i + 1]}


def model(eager=False):
    m = hf_tiny.model(text_layers=TEXT_LAYERS)
    if eager:
        m.set_attn_implementation("eager")
    return m


def stages_for(name, inp):
    n_visual = int((inp["input_ids"][0] == hf_tiny.config().video_token_id).sum())
    return aot.methods.get(name).schedule(CONFIGS[name], n_visual, TEXT_LAYERS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_equal_the_eager_reference(proc, name):
    inp = inputs(proc)  # left-padded batch of two prompts of different lengths
    ref = model(eager=True)
    embeds, pos = llm_inputs(ref, inp)
    mask2d = inp["attention_mask"]
    positions = pos if pos is not None else torch.arange(mask2d.shape[1]).expand_as(mask2d)
    stages = stages_for(name, inp)
    want, want_idx = reference(ref, embeds, inp["input_ids"], mask2d, positions.expand_as(mask2d), stages,
                               last_real(mask2d))

    m = model()
    patched_forward_equals_reference(m, CONFIGS[name], inp, want, want_idx, TEXT_LAYERS)
    n_visual = int((inp["input_ids"][0] == m.config.video_token_id).sum())
    assert m._aot.last["tokens_in"] == n_visual
    assert m._aot.last["schedule"] == [(st.prune_before, st.keep) for st in stages]
    assert want_idx.shape[1] == mask2d.shape[1] - n_visual + stages[-1].keep


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_generate_with_cache_equals_a_no_cache_greedy_loop(proc, name):
    inp = one(inputs(proc), 1)
    ref = model(eager=True)
    embeds, _ = llm_inputs(ref, inp)
    stages = stages_for(name, inp)
    ids, query = inp["input_ids"], torch.tensor([inp["input_ids"].shape[1] - 1])
    want_tokens, want_scores = [], []
    for _ in range(4):  # the whole sequence again at every step, the query stays the last prompt token
        n = embeds.shape[1]
        logits, _ = reference(ref, embeds, ids, torch.ones(1, n, dtype=torch.long), torch.arange(n)[None],
                              stages, query)
        tok = logits[:, -1].argmax(-1)
        want_tokens.append(tok)
        want_scores.append(logits[:, -1])
        ids = torch.cat([ids, tok[:, None]], 1)
        embeds = torch.cat([embeds, ref.model.language_model.embed_tokens(tok)[:, None]], 1)

    m = model()
    aot.patch(m, CONFIGS[name])
    out = m.generate(**inp, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(out.sequences[:, inp["input_ids"].shape[1]:], torch.stack(want_tokens, 1))
    torch.testing.assert_close(torch.stack(out.scores, 1), torch.stack(want_scores, 1), atol=2e-4, rtol=1e-4)
    assert m._aot.last["tokens_out"] == stages[-1].keep < m._aot.last["tokens_in"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batch_equals_one_at_a_time(proc, name):
    inp = inputs(proc)
    m = model()
    aot.patch(m, CONFIGS[name])
    seq = m.generate(**inp, max_new_tokens=4, do_sample=False)
    width = inp["input_ids"].shape[1]
    for i in range(2):
        alone = m.generate(**one(inp, i), max_new_tokens=4, do_sample=False)
        assert torch.equal(seq[i, width:], alone[0, alone.shape[1] - 4:])
        assert torch.equal(seq[i, :width], inp["input_ids"][i])


def test_cache_layers_hold_full_then_pruned_tokens(proc):
    inp = one(inputs(proc), 0)
    m = model()
    aot.patch(m, CONFIGS["pdrop"])
    with torch.no_grad():
        out = m(**inp)
    length = inp["input_ids"].shape[1]
    n_visual = m._aot.last["tokens_in"]
    lengths = [out.past_key_values.layers[i].keys.shape[-2] for i in range(TEXT_LAYERS)]
    keeps = [st.keep for st in stages_for("pdrop", inp)]
    assert lengths == [length] + [length - n_visual + k for k in keeps]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_retention_one_is_the_unpatched_model(proc, name):
    inp = inputs(proc)
    m = model()
    with torch.no_grad():
        want = m(**inp).logits
    want_seq = m.generate(**inp, max_new_tokens=3, do_sample=False)
    aot.patch(m, aot.methods.get(name).effective_config(CONFIGS[name]).__class__(
        **{**CONFIGS[name].__dict__, "retention": 1.0}))
    with torch.no_grad():
        assert torch.equal(m(**inp).logits, want)
    assert torch.equal(m.generate(**inp, max_new_tokens=3, do_sample=False), want_seq)
    aot.unpatch(m)
    with torch.no_grad():
        assert torch.equal(m(**inp).logits, want)


def test_clear_errors(proc):
    m = model()
    with pytest.raises(ValueError, match=r"do not fit a language model of 4 layers"):
        aot.patch(m, aot.methods.get("pdrop").config())  # layers 8/16/24 on a 4-layer LLM
    aot.patch(m, CONFIGS["fastv"])
    inp = proc(text=["<video> what is it ?", "what is it ? <video> <video> ?"],
               videos=[hf_tiny.frames(8, seed=0), hf_tiny.frames(8, seed=1), hf_tiny.frames(8, seed=2)],
               return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="same number of visual tokens in every row"), torch.no_grad():
        m(**inp)
    with pytest.raises(ValueError, match="last prompt token is a visual token"), torch.no_grad():
        m(**proc(text=["what is it ? <video>"], videos=[hf_tiny.frames(8)], return_tensors="pt"))
    with torch.no_grad():  # the model still works after a refused call
        m(**one(inputs(proc), 0))


def test_registry_marks_in_llm_methods():
    assert set(aot.methods.names(stage="llm")) == {"fastv", "pdrop"}
    assert not set(aot.methods.names(stage="llm")) & set(aot.methods.names(stage="pre-llm"))
    assert sorted(aot.methods.names(stage="llm") + aot.methods.names(stage="pre-llm")) == aot.methods.names()
    fastv = aot.methods.get("fastv")
    assert fastv.in_llm and fastv.config() == fastv.config_cls(retention=0.5, k=2)
    assert aot.methods.get("pdrop").config().layers == (8, 16, 24)
    with pytest.raises(TypeError, match="prunes inside the language model.*aot.patch"):
        fastv(torch.randn(2, 4, 8), torch.rand(2, 4), config=fastv.config())
    # FastV: retention = 1 - R, the visual tokens after layer K; PDrop: lambda per stage
    assert fastv.schedule(fastv.config(retention=0.2), 6272, 28) == [Stage(2, 1, 1254)]
    pdrop = aot.methods.get("pdrop")
    assert pdrop.schedule(pdrop.config(), 6272, 28) == [Stage(8, 8, 3136), Stage(16, 16, 1568), Stage(24, 24, 784)]
