"""FastV and PDrop (in-LLM pruning) through aot.patch on tiny Qwen2.5-VL models (3-D M-RoPE).

The independent answer (inllm_reference.reference, shared with test_inllm): the text decoder's
layers run one by one with eager attention (the attention module's own weights), visual tokens
dropped by hand between layers with freshly built masks, and RoPE tables made by the model's rotary
embedding from the kept tokens' original (t, h, w) position ids, which come from the unpatched
model (its own ``get_rope_index``); no KV cache. The patched model runs with SDPA and its own loop.
The M-RoPE tables a decoder layer receives are checked against cos/sin written by hand from
``mrope_section``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")  # transformers' video processors need it (see README)

import aot  # noqa: E402
import aot.methods  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
from inllm_reference import last_real, patched_forward_equals_reference  # noqa: E402
from inllm_reference import llm_inputs as shared_llm_inputs  # noqa: E402
from inllm_reference import reference as shared_reference  # noqa: E402
from aot.models.inllm import query_scores, rotate_half_rope  # noqa: E402

V = "<|vision_start|><|video_pad|><|vision_end|>"
TEXTS = [V + " what is in the video ?", "describe it , where does the cat move ? " + V + " red or blue ?"]
TEXT_LAYERS = 4
CONFIGS = {  # method -> config on the 4-layer tiny text decoder
    "fastv": aot.methods.get("fastv").config(retention=0.3),
    "pdrop": aot.methods.get("pdrop").config(retention=0.5, layers=(1, 2, 3)),
}


@pytest.fixture(scope="module")
def proc():
    return hq.processor()


def videos(seeds=(0, 1)):
    return [hq.frames(8, seed=s) for s in seeds]  # 32x32, 8 frames: 4 slices x 16 = 64 tokens each


def inputs(proc, texts=TEXTS, seeds=(0, 1)):
    """A left-padded batch (the rows' texts differ in length; the videos have the same size)."""
    return proc(text=list(texts), videos=videos(seeds), return_tensors="pt", padding=True)


def one(proc, i, texts=TEXTS, seeds=(0, 1)):
    return proc(text=[texts[i]], videos=[videos(seeds)[i]], return_tensors="pt")


def model(eager=False):
    m = hq.model(text_layers=TEXT_LAYERS)
    if eager:
        m.set_attn_implementation("eager")
    return m


def llm_inputs(ref, inp):
    """inputs_embeds (B, L, d) and the (3, B, L) M-RoPE ids the unpatched model gives its decoder."""
    embeds, pos = shared_llm_inputs(ref, inp)
    assert pos.shape == (3, *embeds.shape[:2])
    return embeds, pos


def reference(ref, embeds, ids, mask2d, positions, stages, query):
    """inllm_reference.reference with ``positions`` (3, B, L): the unpruned prompt's M-RoPE ids."""
    return shared_reference(ref, embeds, ids, mask2d, positions, stages, query, mrope=True)


def stages_for(name, inp):
    n_visual = int((inp["input_ids"][0] == hq.config().video_token_id).sum())
    return aot.methods.get(name).schedule(CONFIGS[name], n_visual, TEXT_LAYERS)


# --- the scoring row: M-RoPE as the layer applies it -----------------------------------------------

def test_layer_tables_are_mrope_and_query_scores_equal_the_eager_attention(proc):
    inp = inputs(proc)
    ref = model(eager=True)
    _, pos3 = llm_inputs(ref, inp)
    mask2d = inp["attention_mask"]
    real = mask2d.bool()
    video = inp["input_ids"] == ref.config.video_token_id
    # the video's h and w ids differ from its t ids: M-RoPE is not 1-D RoPE here
    assert bool((pos3[1][video] != pos3[0][video]).any()) and bool((pos3[2][video] != pos3[1][video]).any())
    k = 1
    seen = {}

    def grab(_m, args, kw):
        seen.update(hidden=args[0] if args else kw["hidden_states"], pe=kw["position_embeddings"],
                    mask=kw["attention_mask"])

    h = ref.model.language_model.layers[k].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        attn = ref(**inp, use_cache=False, output_attentions=True).attentions[k]  # (B, H, L, L)
    h.remove()
    cos, sin = seen["pe"]
    # the tables by hand: frequency i takes the t, h or w id by mrope_section ([2, 3, 3] of 8)
    dh = ref.config.text_config.hidden_size // ref.config.text_config.num_attention_heads
    inv = 1.0 / (10000.0 ** (torch.arange(0, dh, 2).float() / dh))
    axis = torch.tensor([0] * 2 + [1] * 3 + [2] * 3)
    angles = pos3.float()[axis, :, :].permute(1, 2, 0) * inv  # (B, L, dh / 2)
    assert cos.shape == sin.shape == (*mask2d.shape, dh)
    torch.testing.assert_close(cos[real], torch.cat([angles.cos(), angles.cos()], -1)[real])
    torch.testing.assert_close(sin[real], torch.cat([angles.sin(), angles.sin()], -1)[real])

    query = last_real(mask2d)
    rows = torch.arange(2)
    want = attn[rows, :, query].mean(1)  # (B, L)
    layer = ref.model.language_model.layers[k]
    with torch.no_grad():
        got = query_scores(layer, seen["hidden"], seen["pe"], seen["mask"], query, rotate_half_rope)
    torch.testing.assert_close(got[real], want[real], atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # the default rope (transformers' apply_rotary_pos_emb beside the module) agrees
        torch.testing.assert_close(query_scores(layer, seen["hidden"], seen["pe"], seen["mask"], query),
                                   got, atol=1e-7, rtol=1e-6)
    # the check: un-merged (3, B, L, dh) tables are refused with the shape named
    with pytest.raises(ValueError, match=r"\(B, n, head_dim\).*got \(3, 2,"):
        query_scores(layer, seen["hidden"], (cos.expand(3, *cos.shape), sin.expand(3, *sin.shape)),
                     seen["mask"], query, rotate_half_rope)


# --- the pruned model against the eager reference ----------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_equal_the_eager_reference(proc, name):
    inp = inputs(proc)  # left-padded batch of two prompts of different lengths
    assert not bool(inp["attention_mask"].all())
    ref = model(eager=True)
    embeds, pos3 = llm_inputs(ref, inp)
    mask2d = inp["attention_mask"]
    stages = stages_for(name, inp)
    want, want_idx = reference(ref, embeds, inp["input_ids"], mask2d, pos3, stages, last_real(mask2d))

    m = model()
    patched_forward_equals_reference(m, CONFIGS[name], inp, want, want_idx, TEXT_LAYERS)
    n_visual = int((inp["input_ids"][0] == m.config.video_token_id).sum())
    assert n_visual == 64
    last = m._aot.last
    assert last["method"] == name and last["stage"] == "llm" and last["tokens_in"] == n_visual
    assert last["schedule"] == [(st.prune_before, st.keep) for st in stages]
    assert last["tokens_out"] == stages[-1].keep and last["llm_video_tokens"] == [stages[-1].keep] * 2
    assert want_idx.shape[1] == mask2d.shape[1] - n_visual + stages[-1].keep


def test_the_reference_tells_mrope_scoring_from_1d_scoring(proc, monkeypatch):
    """The check above can fail: a scorer that rotated q and k by 1-D positions (0..n-1 on all three
    axes) instead of the layer's M-RoPE tables keeps other video tokens on this batch."""
    import aot.models.inllm as inllm

    inp = inputs(proc)
    ref = model(eager=True)
    embeds, pos3 = llm_inputs(ref, inp)
    stages = stages_for("fastv", inp)
    _, want_idx = reference(ref, embeds, inp["input_ids"], inp["attention_mask"], pos3, stages,
                            last_real(inp["attention_mask"]))
    m = model()
    real_scores = inllm.query_scores

    def one_d(layer, hidden, _tables, mask, query, rope=None):
        b, n, _ = hidden.shape
        tables = m.model.language_model.rotary_emb(hidden, torch.arange(n).expand(3, b, n))
        return real_scores(layer, hidden, tables, mask, query, rope)

    monkeypatch.setattr(inllm, "query_scores", one_d)
    aot.patch(m, CONFIGS["fastv"])
    with torch.no_grad():
        kept = m(**inp).past_key_values._aot_inllm.kept[TEXT_LAYERS - 1]
    assert kept.shape == want_idx.shape and not torch.equal(kept, want_idx)


def extend(inp, tok):
    """The prompt with one more (text) token at the end."""
    new = dict(inp)
    new["input_ids"] = torch.cat([inp["input_ids"], tok[:, None]], 1)
    new["attention_mask"] = torch.cat([inp["attention_mask"], torch.ones_like(tok[:, None])], 1)
    new["mm_token_type_ids"] = torch.cat([inp["mm_token_type_ids"], torch.zeros_like(tok[:, None])], 1)
    return new


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_generate_with_cache_equals_a_no_cache_greedy_loop(proc, name):
    """Each step: the unpatched model's M-RoPE ids of the whole sequence (new tokens continue after
    the video's largest id), the reference's layers on it, ranked by the last prompt token."""
    inp = one(proc, 1)
    ref = model(eager=True)
    special = [ref.config.video_token_id, ref.config.image_token_id]  # a random LM may emit them
    stages = stages_for(name, inp)
    query = torch.tensor([inp["input_ids"].shape[1] - 1])
    cur, want_tokens, want_logits = inp, [], []
    for _ in range(4):
        embeds, pos3 = llm_inputs(ref, cur)
        n = embeds.shape[1]
        logits, _ = reference(ref, embeds, cur["input_ids"], torch.ones(1, n, dtype=torch.long), pos3, stages, query)
        want_logits.append(logits[:, -1])
        step = logits[:, -1].clone()
        step[:, special] = -torch.inf
        tok = step.argmax(-1)
        want_tokens.append(tok)
        cur = extend(cur, tok)

    m = model()
    aot.patch(m, CONFIGS[name])
    out = m.generate(**inp, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True,
                     suppress_tokens=special)
    assert torch.equal(out.sequences[:, inp["input_ids"].shape[1]:], torch.stack(want_tokens, 1))
    torch.testing.assert_close(torch.stack(out.logits, 1), torch.stack(want_logits, 1), atol=2e-4, rtol=1e-4)
    assert m._aot.last["tokens_out"] == stages[-1].keep < m._aot.last["tokens_in"]


def test_a_continuation_by_hand_decodes_at_the_unpruned_positions(proc):
    """model(**inputs) then one more token with the returned cache (no position_ids): the decoder
    takes its M-RoPE ids from rope_deltas and the full length, as the reference's sequence does."""
    inp = one(proc, 0)
    ref = model(eager=True)
    tok = torch.tensor([hq.ids("red")])
    longer = extend(inp, tok)
    embeds, pos3 = llm_inputs(ref, longer)
    n = embeds.shape[1]
    stages = stages_for("pdrop", inp)
    want, _ = reference(ref, embeds, longer["input_ids"], torch.ones(1, n, dtype=torch.long), pos3, stages,
                        torch.tensor([n - 2]))

    m = model()
    aot.patch(m, CONFIGS["pdrop"])
    seen = []
    h = m.model.language_model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["position_ids"]),
                                                         with_kwargs=True)
    with torch.no_grad():
        first = m(**inp)
        # no attention_mask: with one, transformers 5.24 builds the ids from its whole length (the
        # unpatched model fails the same way); without, from the cache length (layer 0's, unpruned)
        nxt = m(input_ids=tok[:, None], cache=first.past_key_values)
    h.remove()
    assert torch.equal(seen[1], pos3[:, :, -1:])  # t = h = w = one past the largest id of the prompt
    torch.testing.assert_close(first.logits[:, -1], want[:, -2], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(nxt.logits[:, -1], want[:, -1], atol=2e-4, rtol=1e-4)


def test_generate_hands_the_decoder_the_unpatched_positions(proc):
    """The prompt reaches the decoder whole, so generate's 4-row ids (text, t, h, w) are the
    unpatched model's at every step."""
    inp = inputs(proc)

    def positions(m):
        seen = []
        h = m.model.language_model.register_forward_pre_hook(
            lambda _m, _a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
        m.generate(**inp, max_new_tokens=3, do_sample=False)
        h.remove()
        return seen

    m = model()
    want = positions(m)
    aot.patch(m, CONFIGS["fastv"])
    got = positions(m)
    assert len(got) == len(want) == 3 and want[0].shape[0] == 4
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batch_equals_one_at_a_time(proc, name):
    inp = inputs(proc)
    m = model()
    aot.patch(m, CONFIGS[name])
    out = m.generate(**inp, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)
    width = inp["input_ids"].shape[1]
    for i in range(2):
        alone = m.generate(**one(proc, i), max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                           output_logits=True)
        assert torch.equal(out.sequences[i, width:], alone.sequences[0, -4:])
        assert torch.equal(out.sequences[i, :width], inp["input_ids"][i])
        torch.testing.assert_close(torch.stack(out.logits, 1)[i], torch.stack(alone.logits, 1)[0],
                                   atol=1e-4, rtol=1e-4)


def test_beam_search_batch_equals_one_at_a_time(proc):
    """generate expands the rows (beams, num_return_sequences) before the prefill; each copy is pruned alike."""
    inp = inputs(proc)
    m = model()
    aot.patch(m, CONFIGS["pdrop"])
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    seq = m.generate(**inp, **kw)
    assert seq.shape[0] == 4 and m._aot.last["llm_video_tokens"] == [8] * 4
    for i in range(2):
        assert torch.equal(m.generate(**one(proc, i), **kw)[:, -3:], seq[2 * i:2 * i + 2, -3:])


def test_pdrop_cache_layers_hold_full_then_pruned_tokens(proc):
    inp = one(proc, 0)
    m = model()
    aot.patch(m, CONFIGS["pdrop"])
    with torch.no_grad():
        out = m(**inp)
    length = inp["input_ids"].shape[1]
    lengths = [out.past_key_values.layers[i].keys.shape[-2] for i in range(TEXT_LAYERS)]
    keeps = [st.keep for st in stages_for("pdrop", inp)]
    assert keeps == [32, 16, 8]
    assert lengths == [length] + [length - 64 + k for k in keeps]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_retention_one_is_the_unpatched_model(proc, name):
    inp = inputs(proc)
    m = model()
    with torch.no_grad():
        want = m(**inp).logits
    want_seq = m.generate(**inp, max_new_tokens=3, do_sample=False)
    aot.patch(m, type(CONFIGS[name])(**{**CONFIGS[name].__dict__, "retention": 1.0}))
    with torch.no_grad():
        assert torch.equal(m(**inp).logits, want)
    assert torch.equal(m.generate(**inp, max_new_tokens=3, do_sample=False), want_seq)
    assert m._aot.last["tokens_out"] == m._aot.last["tokens_in"] == 64
    aot.unpatch(m)
    assert all(not layer._forward_pre_hooks for layer in m.model.language_model.layers)
    with torch.no_grad():
        assert torch.equal(m(**inp).logits, want)


def test_images_in_the_prompt_are_not_pruned(proc):
    from PIL import Image

    m = model()
    aot.patch(m, CONFIGS["pdrop"])
    img = Image.fromarray(hq.frames(1, seed=5)[0])
    text = ["<|vision_start|><|image_pad|><|vision_end|> and " + V + " what moves ?"]
    inp = proc(text=text, images=[img], videos=[hq.frames(8)], return_tensors="pt")
    with torch.no_grad():
        out = m(**inp)
    kept = out.past_key_values._aot_inllm.kept[TEXT_LAYERS - 1][0]
    ids = inp["input_ids"][0]
    image = (ids == m.config.image_token_id).nonzero().squeeze(1)
    assert image.numel() > 0 and bool(torch.isin(image, kept).all())
    assert int((ids[kept] == m.config.video_token_id).sum()) == 8
    assert torch.isfinite(out.logits).all()


def test_clear_errors(proc):
    m = model()
    with pytest.raises(ValueError, match=r"do not fit a language model of 4 layers"):
        aot.patch(m, aot.methods.get("pdrop").config())  # layers 8/16/24 on a 4-layer decoder
    assert getattr(m, "_aot", None) is None  # left unpatched, no hook behind
    assert all(not layer._forward_pre_hooks for layer in m.model.language_model.layers)
    aot.patch(m, CONFIGS["fastv"])
    sizes = proc(text=TEXTS, videos=[hq.frames(8, seed=0), hq.frames(8, seed=1, height=48)], return_tensors="pt",
                 padding=True)  # 64 and 96 video tokens
    with pytest.raises(ValueError, match=r"same number of visual tokens in every row.*\[64, 96\]"), \
            torch.no_grad():
        m(**sizes)
    with pytest.raises(ValueError, match="same number of visual tokens in every row"):
        m.generate(**sizes, max_new_tokens=1)
    with pytest.raises(ValueError, match="last prompt token is a visual token"), torch.no_grad():
        m(**proc(text=["what is it ? <|video_pad|>"], videos=[hq.frames(8)], return_tensors="pt"))
    good = one(proc, 0)
    with pytest.raises(NotImplementedError, match="labels"), torch.no_grad():
        m(**good, labels=good["input_ids"])
    with torch.no_grad():  # the model still works after a refused call
        assert m(**good).logits.shape[1] == good["input_ids"].shape[1] - 64 + aot.budget(0.3, 1, 64)
