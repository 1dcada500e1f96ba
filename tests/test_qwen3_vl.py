"""aot.patch on tiny random Qwen3-VL (dense, MoE) and Qwen3.5 (dense, MoE) models, through
transformers' own Qwen3VLProcessor and generate.

Independent answers: the unpatched model (retention 1.0: logits, greedy output, its own
get_rope_index positions), the vision block's attention written here as a dense masked softmax
(scores), the method called directly on the unpatched tower's features (tokens), DeepStack levels
averaged by hand over the method's ``assignment`` (never its mix), M-RoPE ids written by walking the
prompt token by token, one video at a time (batches).

Methods: ``hf_tiny_qwen3.nearest_merge`` (a test-only merging method registered while a test runs)
averages the tokens it absorbs, so its DeepStack answer is written from its ``assignment`` alone;
AOT and every registered method run inside the model too (each returns its mix).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torchvision")  # transformers' video processors need it (see README)

import aot  # noqa: E402
import aot.methods  # noqa: E402
import hf_tiny  # noqa: E402
import hf_tiny_qwen3 as hq  # noqa: E402

V = "<|vision_start|><|video_pad|><|vision_end|>"
TEXTS = [V + " what is in the video ?", "describe it , where does the cat move ? " + V + " red or blue ?"]
DEEP = ("qwen3_vl", "qwen3_vl_moe")


@pytest.fixture(scope="module")
def proc():
    return hq.processor()


def vids():
    return [hq.frames(8, seed=0), hq.frames(6, seed=1, height=48)]  # 4 slices of 4x4, 3 slices of 6x4


def inputs(proc, texts=TEXTS, videos=None):
    return proc(text=list(texts), videos=videos or vids(), return_tensors="pt", padding=True)


def one(proc, i, texts=TEXTS, videos=None):
    return proc(text=[texts[i]], videos=[(videos or vids())[i]], return_tensors="pt")


def greedy(model, inp, steps=3):
    special = [model.config.video_token_id, model.config.image_token_id]
    out = model.generate(**inp, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True,
                         output_scores=True, suppress_tokens=special)
    return out.sequences, torch.stack(out.scores, 1)


class Seen:
    """What the model's forward gets after aot's rewrite (a pre-hook registered after aot.patch) and
    what its language model gets."""

    def __init__(self, model):
        self.model_calls, self.lm_calls = [], []
        self.handles = [
            model.register_forward_pre_hook(lambda m, a, k: self.model_calls.append(dict(k)), with_kwargs=True),
            model.model.language_model.register_forward_pre_hook(
                lambda m, a, k: self.lm_calls.append(dict(k)), with_kwargs=True)]

    def remove(self):
        for h in self.handles:
            h.remove()


# --- the transformers members relied on ------------------------------------------------------------

@pytest.mark.parametrize("cls", ["Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
                                 "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"])
def test_transformers_members_relied_on_exist(cls, monkeypatch):
    from aot.models import qwen3_vl as adapter

    adapter.check_transformers(cls)
    prefix = adapter.CLASSES[cls].prefix
    real = adapter._relied_on

    def broken(p):
        return {**real(p), f"{p}Model.get_rope_index": ("input_ids", "no_such_argument")}

    monkeypatch.setattr(adapter, "_relied_on", broken)
    with pytest.raises(ImportError, match=rf"{prefix}Model.get_rope_index\(no_such_argument\)"):
        adapter.check_transformers(cls)


# --- retention 1.0 is the unpatched model -----------------------------------------------------------

@pytest.mark.parametrize("family", hq.FAMILIES)
def test_retention_one_equals_unpatched_logits_greedy_and_positions(proc, family):
    model = hq.model(family)
    inp = inputs(proc)
    assert (inp["attention_mask"] == 0).any()  # left-padded: videos of different lengths and sizes
    assert inp["video_grid_thw"].tolist() == [[4, 8, 8], [3, 12, 8]]
    seen = Seen(model)
    with torch.no_grad():
        ref = model(**inp).logits
    ref_pos = seen.lm_calls[-1]["position_ids"]  # the model's own get_rope_index
    ref_seq, ref_scores = greedy(model, inp)
    seen.remove()
    aot.patch(model, aot.AOTConfig(retention=1.0))
    seen = Seen(model)
    with torch.no_grad():
        got = model(**inp).logits
    seen.remove()
    seq, scores = greedy(model, inp)
    assert torch.equal(got, ref)
    assert torch.equal(seen.lm_calls[-1]["position_ids"], ref_pos)
    assert torch.equal(seq, ref_seq)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    last = model._aot.last
    assert last["tokens_out"] == last["tokens_in"] == 4 * 16 + 3 * 24
    assert last["slice_tokens"] == [[16] * 4, [24] * 3]
    assert last["deepstack_levels"] == (2 if family in DEEP else 0)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_unpatch_restores_original_behaviour(proc, family):
    model = hq.model(family)
    cls_generate = type(model).generate
    inp = inputs(proc)
    with torch.no_grad():
        ref = model(**inp).logits
    with hq.merge_method() as m:
        aot.patch(model, m.config(retention=0.25))
        with torch.no_grad():
            assert model(**inp).logits.shape[1] < ref.shape[1]
        aot.unpatch(model)
    assert not hasattr(model, "_aot") and not model._forward_pre_hooks
    assert model.generate.__func__ is cls_generate
    assert model.model.rope_deltas is None
    with torch.no_grad():
        assert torch.equal(model(**inp).logits, ref)


# --- layout: timestamps and markers kept, pads shrink slice by slice ---------------------------------

def _blocks(ids, vid):
    """The prompt as (text tokens, pad count) pairs: each run of pads with the text before it."""
    out, text, pads = [], [], 0
    for t in ids:
        if t == vid:
            pads += 1
            continue
        if pads:
            out.append((text, pads))
            text, pads = [], 0
        text.append(t)
    out.append((text, pads))
    return out


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_timestamps_and_markers_reach_the_lm_and_an_empty_slice_keeps_its_block(proc, family):
    model = hq.model(family)
    inp = one(proc, 1)  # text, then 3 slices of 6 x 4, then text
    tok = hq.tokenizer()
    vid = model.config.video_token_id
    ids = inp["input_ids"][0].tolist()
    words = tok.convert_ids_to_tokens(ids)
    assert "".join(words).count("seconds>") == 3  # <0.0 seconds> <0.1 seconds> <0.2 seconds>
    with hq.merge_method() as m:
        aot.patch(model, m.config(retention=0.25, only_frames=(0, 2)))  # slice 1 keeps nothing
        seen = Seen(model)
        with torch.no_grad():
            model(**inp)
        seen.remove()
    new = seen.model_calls[-1]["input_ids"][0].tolist()
    before, after = _blocks(ids, vid), _blocks(new, vid)
    # every non-pad token, in order; the runs of pads shrink to the slices' counts
    assert [t for t in new if t != vid] == [t for t in ids if t != vid]
    counts = model._aot.last["slice_tokens"][0]
    assert counts[1] == 0 and sum(counts) == aot.budget(0.25, 3, 24) and counts[0] + counts[2] == 18
    # the empty slice: its timestamp, <|vision_start|> and <|vision_end|> stay, nothing between them
    start, end = hq.ids("<|vision_start|>"), hq.ids("<|vision_end|>")
    s_positions = [i for i, t in enumerate(new) if t == start]
    assert new[s_positions[1] + 1] == end
    assert tok.convert_ids_to_tokens(new[s_positions[1] - 6: s_positions[1]]) == ["<", "0", ".", "1", "seconds", ">"]
    assert [p for _, p in before] == [24, 24, 24, 0]
    assert [p for _, p in after] == [counts[0], counts[2], 0]  # the empty slice's markers merge two text runs


# --- scores: a dense reference written here ------------------------------------------------------------

@torch.no_grad()
def eager_scores(model, pixels, thw, layers):
    """Per video (t, h/2 * w/2) scores of each block in ``layers``: a dense softmax of the block's q, k
    with pairs in different temporal slices masked, mean over heads, summed over queries, averaged over
    each 2x2 merge group (4 consecutive patches in the processor's order), normalised per slice."""
    import importlib

    from aot.models.qwen3_vl import _family

    rope = importlib.import_module(_family(model).module).apply_rotary_pos_emb_vision
    tower = model.model.visual
    cap = {}
    hooks = [tower.blocks[layer].attn.register_forward_pre_hook(
        lambda m, a, k, layer=layer: cap.__setitem__(layer, (k["hidden_states"] if "hidden_states" in k else a[0],
                                                             k["position_embeddings"])), with_kwargs=True)
        for layer in layers]
    try:
        tower(pixels, grid_thw=thw)
    finally:
        for h in hooks:
            h.remove()
    seg = torch.cat([torch.arange(int(t)).repeat_interleave(int(h * w)) + 1000 * v
                     for v, (t, h, w) in enumerate(thw.tolist())])
    out = {}
    for layer in layers:
        hidden, pos = cap[layer]
        attn = tower.blocks[layer].attn
        n = hidden.shape[0]
        q, k, _ = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = rope(q, k, *pos)
        logits = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(seg[:, None] != seg[None, :], -math.inf)
        received = logits.softmax(-1).mean(0).sum(0)
        groups = received.reshape(-1, 4).mean(-1)
        per_video, first = [], 0
        for t, h, w in thw.tolist():
            cnt = t * h * w // 4
            s = groups[first:first + cnt].reshape(t, -1)
            per_video.append(s / s.sum(-1, keepdim=True))
            first += cnt
        out[layer] = per_video
    return out


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5_moe"])
def test_scores_match_a_dense_masked_reference(proc, family):
    from aot.models import qwen3_vl as adapter

    model = hq.model(family)
    inp = inputs(proc)
    ref = eager_scores(model, inp["pixel_values_videos"], inp["video_grid_thw"], (1, 3))
    tower = model.model.visual
    rope = __import__(adapter._family(model).module, fromlist=["x"]).apply_rotary_pos_emb_vision
    for layer in (1, 3):
        rec = []
        h = tower.blocks[layer].attn.register_forward_pre_hook(adapter.score_hook(rec, 7, {}, rope), with_kwargs=True)
        with torch.no_grad():
            model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"])
        h.remove()
        got = adapter.llm_grid_scores(rec[0], inp["video_grid_thw"], tower.spatial_merge_unit)
        for g, r in zip(got, ref[layer]):
            assert torch.allclose(g.sum(-1), torch.ones(g.shape[0]), atol=1e-5)
            assert torch.allclose(g, r, atol=1e-6)


def test_default_score_blocks():
    from aot.models.qwen3_vl import default_layers

    m = hq.model("qwen3_vl", depth=6, deepstack=(2, 4))
    aot.patch(m, aot.AOTConfig())
    assert (m._aot.local_layer, m._aot.global_layer) == (2, 5)  # first DeepStack tap, last block
    aot.unpatch(m)
    aot.patch(m, aot.AOTConfig(), local_layer=0, global_layer=-2)
    assert (m._aot.local_layer, m._aot.global_layer) == (0, 4)
    from transformers import Qwen3_5Config, Qwen3VLConfig
    assert default_layers(Qwen3VLConfig().vision_config) == (8, 26)  # Qwen3-VL-8B's tower: taps 8, 16, 24
    assert default_layers(Qwen3_5Config().vision_config) == (8, 26)  # no taps: depth // 3 - 1
    assert default_layers(hq.config("qwen3_5", depth=6).vision_config) == (1, 5)


# --- the LM gets the method's tokens and DeepStack levels reduced with its weights ----------------------

@pytest.mark.parametrize("family", hq.FAMILIES)
def test_lm_receives_the_compressed_tokens_and_deepstack_levels(proc, family):
    model = hq.model(family)
    inp = inputs(proc)
    thw = inp["video_grid_thw"]
    ref = eager_scores(model, inp["pixel_values_videos"], thw, (1, 3))
    with torch.no_grad():
        enc = model.model.get_video_features(inp["pixel_values_videos"], thw)
    with hq.merge_method() as m:
        cfg = m.config(retention=0.25)
        aot.patch(model, cfg, local_layer=1, global_layer=3)
        seen = Seen(model)
        with torch.no_grad():
            model(**inp)
        seen.remove()
    lm = seen.lm_calls[-1]
    emb, mask = lm["inputs_embeds"], lm["visual_pos_masks"] if family in DEEP else None
    vid = model.config.video_token_id
    new_ids = seen.model_calls[-1]["input_ids"]
    rows_tokens, rows_levels = [], []
    for v, (t, h, w) in enumerate(thw.tolist()):
        n = h * w // 4
        out = hq.nearest_merge(enc.pooler_output[v].reshape(t, n, -1), ref[3][v], config=cfg)
        rows_tokens.append(out.tokens)
        if family in DEEP:  # each level: the mean of the rows every output token absorbed (assignment)
            levels = []
            for lv in enc.deepstack_features:
                x = lv[v]
                want = torch.stack([x[out.assignment == r].mean(0) for r in range(out.tokens.shape[0])])
                levels.append(want)
            rows_levels.append(levels)
    assert model._aot.last["llm_video_tokens"] == [aot.budget(0.25, 4, 16), aot.budget(0.25, 3, 24)]
    got = emb[new_ids == vid]
    torch.testing.assert_close(got, torch.cat(rows_tokens), atol=1e-5, rtol=1e-5)
    if family in DEEP:
        assert torch.equal(mask, new_ids == vid)  # visual_pos_masks: the shortened prompt's pads
        deep = lm["deepstack_visual_embeds"]
        assert len(deep) == 2
        for i in range(2):
            torch.testing.assert_close(deep[i], torch.cat([lv[i] for lv in rows_levels]), atol=1e-5, rtol=1e-5)
    else:
        assert lm.get("deepstack_visual_embeds") is None


# --- 3-D M-RoPE --------------------------------------------------------------------------------------

def hand_positions(ids, vid, grid, kept_per_slice):
    """(3, L') M-RoPE ids of a one-row prompt written by walking it: a text token at p -> (p, p, p),
    p + 1; slice f of a (h, w) grid starting at p: its kept cell (y, x) -> (p, p + y, p + x), then
    p += max(h, w) (transformers 5.25's Qwen3-VL: every slice is a grid of t = 1, time in the
    timestamps). ``kept_per_slice``: the kept cells of each slice (flat y * w + x), in order."""
    h, w = grid
    cols, p, f, i = [], 0, 0, 0
    while i < len(ids):
        if ids[i] != vid:
            cols.append([p, p, p])
            p += 1
            i += 1
            continue
        for cell in kept_per_slice[f]:
            cols.append([p, p + cell // w, p + cell % w])
        p += max(h, w)
        f += 1
        i += h * w
    return torch.tensor(cols).T


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_mrope_at_25_percent_is_the_hand_built_expectation(proc, family):
    model = hq.model(family)
    inp = one(proc, 1)  # text, 3 slices of 6 x 4, text
    ids = inp["input_ids"][0].tolist()
    vid = model.config.video_token_id
    with hq.merge_method() as m:
        aot.patch(model, m.config(retention=0.25), local_layer=1, global_layer=3)
        seen = Seen(model)
        model.generate(**inp, max_new_tokens=3, do_sample=False)
        with torch.no_grad():
            model(**inp)
        seen.remove()
    ref = eager_scores(model, inp["pixel_values_videos"], inp["video_grid_thw"], (3,))
    with torch.no_grad():
        feats = model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"]).pooler_output[0]
    kept = hq.nearest_merge(feats.reshape(3, 24, -1), ref[3][0], config=hq.NearestMergeConfig(0.25)).positions
    per_slice = [[int(p) - 24 * f for p in kept if 24 * f <= p < 24 * (f + 1)] for f in range(3)]
    want = hand_positions(ids, vid, (6, 4), per_slice)
    gen_prefill = seen.lm_calls[0]["position_ids"]  # generate: (4, 1, L'): text positions, then t, h, w
    assert torch.equal(gen_prefill[1:, 0], want)
    assert torch.equal(gen_prefill[0, 0], torch.arange(want.shape[1]))
    assert torch.equal(seen.lm_calls[-1]["position_ids"][:, 0], want)  # model(...): (3, 1, L')
    last = int(want.max())
    # decoding continues right after the uncompressed prompt's last position
    assert [c["position_ids"][1:, 0, -1].tolist() for c in seen.lm_calls[1:3]] == [[last + 1] * 3, [last + 2] * 3]
    assert model._aot.last["rope_deltas"] == [last + 1 - want.shape[1]]
    assert model.model.rope_deltas.item() == last + 1 - want.shape[1]


# --- batches, generate, every method -------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_batch_of_mixed_videos_equals_one_at_a_time(proc, family):
    """Left-padded batch of videos of different lengths (8 and 6 frames) and sizes (32x32, 48x32).
    Qwen3.5's scores get 1e-3: its Gated DeltaNet layers (transformers' torch fallback, chunks of 64)
    differ by up to 3e-4 between a prompt and the same prompt left-padded, unpatched (measured here:
    17 pad tokens in front of one row moved a last-token logit by 2.9e-4)."""
    model = hq.model(family)
    inp = inputs(proc)
    with hq.merge_method() as m:
        aot.patch(model, m.config(retention=0.25))
        seq, scores = greedy(model, inp)
        for i in range(2):
            s1, sc1 = greedy(model, one(proc, i))
            assert torch.equal(seq[i, -3:], s1[0, -3:])
            assert torch.allclose(scores[i], sc1[0], atol=1e-4 if family in DEEP else 1e-3)


def test_generate_with_cache_equals_greedy_loop_without_cache(proc):
    model = hq.model("qwen3_vl")
    inp = inputs(proc)
    with hq.merge_method() as m:
        aot.patch(model, m.config(retention=0.25))
        special = [model.config.video_token_id, model.config.image_token_id]
        seq = model.generate(**inp, max_new_tokens=3, do_sample=False, suppress_tokens=special)
        types = inp["mm_token_type_ids"]

        def extra(ids):
            pad = torch.zeros(2, ids.shape[1] - types.shape[1], dtype=types.dtype)
            return {"video_grid_thw": inp["video_grid_thw"], "mm_token_type_ids": torch.cat([types, pad], 1)}

        assert torch.equal(seq, hf_tiny.greedy_without_cache(model, inp, 3, extra))


@pytest.mark.parametrize("name", sorted(aot.methods.names(stage="pre-llm")))
@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_every_registered_method(proc, name, family):
    """Every registered pre-LLM method runs inside the model (Qwen3-VL: each reduces the DeepStack
    levels with its own mix; a method without one is refused, test below)."""
    model = hq.model(family)
    inp = inputs(proc, videos=[hq.frames(8, seed=0), hq.frames(8, seed=1, height=48)])
    method = aot.methods.get(name)
    aot.patch(model, method.config(retention=0.5), method=name)
    seq = model.generate(**inp, max_new_tokens=2, do_sample=False)
    last = model._aot.last
    assert last["method"] == name
    assert last["llm_video_tokens"] == [aot.budget(0.5, 4, 16), aot.budget(0.5, 4, 24)]
    assert torch.equal(seq[:, :inp["input_ids"].shape[1]], inp["input_ids"])
    assert seq.shape[1] == inp["input_ids"].shape[1] + 2


def test_images_are_left_alone(proc):
    from PIL import Image

    model = hq.model("qwen3_vl")
    img = Image.fromarray(hq.frames(1, seed=5)[0])
    text = ["<|vision_start|><|image_pad|><|vision_end|> and " + V + " what moves ?"]
    inp = proc(text=text, images=[img], videos=[hq.frames(8)], return_tensors="pt")
    with torch.no_grad():
        ref = model(**inp).logits
    aot.patch(model, aot.AOTConfig(retention=1.0))
    with torch.no_grad():
        assert torch.equal(model(**inp).logits, ref)
    aot.unpatch(model)
    with hq.merge_method() as m:
        aot.patch(model, m.config(retention=0.25))
        with torch.no_grad():
            assert model(**inp).logits.shape[1] == ref.shape[1] - (64 - 16)


def test_patch_keeps_accelerate_hooks(proc, tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Qwen3VLForConditionalGeneration

    plain = hq.model("qwen3_vl")
    plain.save_pretrained(tmp_path / "m")
    device_map = {"model.visual": "cpu", "model.language_model": "disk", "lm_head": "cpu"}
    hooked = Qwen3VLForConditionalGeneration.from_pretrained(
        tmp_path / "m", device_map=device_map, offload_folder=str(tmp_path / "off")).eval()
    hooked.generation_config = plain.generation_config
    with hq.merge_method() as m:
        hf_tiny.assert_offloaded_equals_plain(plain, hooked, inputs(proc), m.config(retention=0.25))


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe"])
@pytest.mark.parametrize("name", sorted(aot.methods.names(stage="llm")))
def test_in_llm_methods_are_refused_for_qwen3_5(family, name):
    model = hq.model(family)
    with pytest.raises(ValueError, match=rf"{name} prunes inside the language model.*Gated DeltaNet.*recurrent state"):
        aot.patch(model, aot.methods.get(name).config(retention=0.5))
    assert getattr(model, "_aot", None) is None


def test_clear_errors(proc):
    model = hq.model("qwen3_vl")
    with pytest.raises(ValueError, match=r"vision layer 4 is out of range: the tower has 4 blocks"):
        aot.patch(model, aot.AOTConfig(), local_layer=4)
    with pytest.raises(TypeError, match="options not supported for Qwen3-VL: positions"):
        aot.patch(model, aot.AOTConfig(), positions="original")
    aot.patch(model, aot.AOTConfig(retention=0.25, clip_length=3))
    with pytest.raises(ValueError, match="already patched"):
        aot.patch(model, aot.AOTConfig())
    short = one(proc, 0, videos=[hq.frames(4)])
    with pytest.raises(ValueError, match="2 temporal slices .4 frames.*fewer than the clip length of 3"):
        model.generate(**short, max_new_tokens=1)
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(retention=1.0))
    edited = one(proc, 0)
    pads = (edited["input_ids"][0] == model.config.video_token_id).nonzero().flatten()
    edited["input_ids"][0, pads[3]] = 9
    with pytest.raises(ValueError, match=r"holds 63 video placeholders .* 1 video\(s\) of 4 slices x 16 tokens need 64"):
        model(**edited)
    gap = one(proc, 0)
    ids = gap["input_ids"][0]
    pads = (ids == model.config.video_token_id).nonzero().flatten()
    last = int(pads[-1])
    gap["input_ids"][0, [int(pads[3]), last + 1]] = gap["input_ids"][0, [last + 1, int(pads[3])]]  # count kept
    with pytest.raises(ValueError, match="edited by hand"):
        model(**gap)
    no_thw = one(proc, 0)
    del no_thw["video_grid_thw"]
    with pytest.raises(ValueError, match="video_grid_thw"):
        model(**no_thw)
    good = one(proc, 0)
    with pytest.raises(NotImplementedError, match="labels"):
        model(**good, labels=good["input_ids"])
    with pytest.raises(ValueError, match="position_ids"):
        model(**good, position_ids=torch.zeros_like(good["input_ids"]))


def test_aot_deepstack_levels_follow_its_mix(proc):
    """AOT itself (OT merges, its mix from aot.compress): the LM gets aot.compress's tokens, and every
    DeepStack level is the mix applied entry by entry in a plain loop (the mix's own correctness,
    reduce(x) == tokens, is tests/test_compress_mix.py's)."""
    model = hq.model("qwen3_vl")
    inp = inputs(proc)
    thw = inp["video_grid_thw"]
    cfg = aot.AOTConfig(retention=0.25)
    ref = eager_scores(model, inp["pixel_values_videos"], thw, (1, 3))
    with torch.no_grad():
        enc = model.model.get_video_features(inp["pixel_values_videos"], thw)
    aot.patch(model, cfg, local_layer=1, global_layer=3)
    seen = Seen(model)
    with torch.no_grad():
        model(**inp)
    seen.remove()
    lm = seen.lm_calls[-1]
    new_ids = seen.model_calls[-1]["input_ids"]
    tokens, levels = [], [[], []]
    for v, (t, h, w) in enumerate(thw.tolist()):
        n = h * w // 4
        out = aot.compress(enc.pooler_output[v].reshape(t, n, -1), ref[3][v], local_scores=ref[1][v],
                           grid=(h // 2, w // 2), config=cfg)
        tokens.append(out.tokens)
        for i, lv in enumerate(enc.deepstack_features):
            want = torch.zeros(out.tokens.shape[0], lv[v].shape[-1], dtype=torch.float64)
            for r, c, wt in zip(out.mix.rows.tolist(), out.mix.cols.tolist(), out.mix.weights.tolist()):
                want[r] += wt * lv[v][c].double()
            levels[i].append(want.float())
    torch.testing.assert_close(lm["inputs_embeds"][new_ids == model.config.video_token_id], torch.cat(tokens),
                               atol=1e-5, rtol=1e-5)
    for i in range(2):
        torch.testing.assert_close(lm["deepstack_visual_embeds"][i], torch.cat(levels[i]), atol=1e-5, rtol=1e-5)


def test_a_method_without_a_mix_is_refused_for_deepstack_only(proc):
    """A method whose result carries no mix cannot reduce DeepStack levels: Qwen3-VL refuses it with
    the reason before the language model runs; Qwen3.5 (no DeepStack) runs it."""
    from aot.methods import registry

    def no_mix(x, scores, **kw):
        return hq.nearest_merge(x, scores, **kw)._replace(mix=None)

    registry._REGISTRY["no-mix"] = registry.Method("no-mix", no_mix, hq.NearestMergeConfig, "test: no mix")
    try:
        for family, refused in (("qwen3_vl", True), ("qwen3_5", False)):
            model = hq.model(family)
            aot.patch(model, hq.NearestMergeConfig(0.25), method="no-mix")
            seen = Seen(model)
            if refused:
                with pytest.raises(ValueError, match="method 'no-mix' returns no mix .*Qwen3-VL's DeepStack"), \
                        torch.no_grad():
                    model(**one(proc, 0))
                assert not seen.lm_calls
            else:
                with torch.no_grad():
                    model(**one(proc, 0))
                assert seen.lm_calls
            seen.remove()
    finally:
        del registry._REGISTRY["no-mix"]


@pytest.mark.parametrize("limit", [0, 1 << 26])
@pytest.mark.parametrize("name", ["aot", "holitom", "nearest-merge"])
def test_reduce_levels_is_compressed_reduce(monkeypatch, name, limit):
    """Both paths of reduce_levels (dense matmul, entry by entry) give Compressed.reduce of every
    level, batch of one or single video, float32 and float64."""
    from aot.models import qwen3_vl as adapter

    monkeypatch.setattr(adapter, "DENSE_LIMIT", limit)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 6, 20, 16, generator=g) + torch.randn(1, 1, 1, 16, generator=g)
    s = torch.rand(1, 6, 20, generator=g)
    with hq.merge_method():
        m = aot.methods.get(name)
        for out, lead in ((m(x, s, grid=(4, 5), config=m.config(retention=0.3)), True),
                          (m(x[0], s[0], grid=(4, 5), config=m.config(retention=0.3)), False)):
            for dtype in (torch.float32, torch.float64):
                levels = [torch.randn(120, c, generator=g, dtype=dtype) for c in (3, 7)]
                got = adapter.reduce_levels(out, levels)
                for lv, red in zip(levels, got):
                    want = out.reduce(lv[None] if lead else lv)
                    want = want[0] if lead else want
                    assert red.dtype == dtype
                    torch.testing.assert_close(red, want, rtol=1e-5, atol=1e-6)
