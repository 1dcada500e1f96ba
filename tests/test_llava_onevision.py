"""aot.patch on tiny random LLaVA-OneVision models, through transformers' own processor and generate.

Independent answers: the unpatched model (retention 1.0), eager attention maps of the vision tower
with plain pooling written here (scores), aot.compress called directly (tokens), a greedy loop
without the KV cache, one video at a time, and LLaVA-Video's grid layout written as a loop.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchvision")  # transformers' video processors need it (see README)

import aot  # noqa: E402
import aot.methods  # noqa: E402
import hf_tiny  # noqa: E402

LAYERS = dict(local_layer=1, global_layer=-2)
TEXTS = ["<video> what is in the video ?", "describe it , where does the cat move ? <video> red or blue ?"]


@pytest.fixture(scope="module")
def proc():
    return hf_tiny.processor()


def inputs(proc, texts=TEXTS, seeds=(0, 1), frames=8, **kw):
    videos = [hf_tiny.frames(frames, seed=s) for s in seeds]
    return proc(text=list(texts), videos=videos, return_tensors="pt", padding=True, **kw)


def one(inp, i):
    """Row i of a left-padded batch, padding removed (what the processor gives for that row alone)."""
    keep = inp["attention_mask"][i].bool()
    return {"input_ids": inp["input_ids"][i:i + 1, keep], "attention_mask": inp["attention_mask"][i:i + 1, keep],
            "pixel_values_videos": inp["pixel_values_videos"][i:i + 1]}


def greedy(model, inp, steps=5):
    out = model.generate(**inp, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True,
                         output_scores=True)
    return out.sequences, torch.stack(out.scores, 1)  # (B, L + steps), (B, steps, V)


# --- retention 1.0 is the unpatched model --------------------------------------------------------

def test_retention_one_equals_unpatched_logits_and_generate(proc):
    model = hf_tiny.model()
    inp = inputs(proc)
    with torch.no_grad():
        ref = model(**inp).logits
    ref_seq, ref_scores = greedy(model, inp)
    aot.patch(model, aot.AOTConfig(retention=1.0), **LAYERS)
    with torch.no_grad():
        got = model(**inp).logits
    seq, scores = greedy(model, inp)
    assert torch.equal(got, ref)
    assert torch.equal(seq, ref_seq)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    assert model._aot.last["tokens_out"] == model._aot.last["tokens_in"] == 8 * 16


def test_unpatch_restores_original_behaviour(proc):
    model = hf_tiny.model()
    cls_generate = type(model).generate
    inp = inputs(proc)
    with torch.no_grad():
        ref = model(**inp).logits
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    with torch.no_grad():
        assert model(**inp).logits.shape[1] < ref.shape[1]
    aot.unpatch(model)
    assert not hasattr(model, "_aot") and not model._forward_pre_hooks
    assert model.generate.__func__ is cls_generate
    with torch.no_grad():
        assert torch.equal(model(**inp).logits, ref)
    with pytest.raises(ValueError, match="not patched"):
        aot.unpatch(model)


# --- at 25%: the LM gets exactly aot.compress's tokens, scored by eager attention ------------------

@torch.no_grad()
def eager_reference(model, pixels, config, layers=(1, -2), layout="onevision"):
    """Features and scores computed independently: eager attention maps of the tower, mean over heads
    and queries, pooled as written here; then aot.compress. Returns per video (tokens, positions)."""
    inner = model.model
    v, f = pixels.shape[:2]
    flat = pixels.flatten(0, 1)
    tower = inner.vision_tower
    old = tower.config._attn_implementation
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = tower(flat, output_attentions=True, output_hidden_states=True)
    finally:
        tower.set_attn_implementation(old)
    side = 7
    proj = inner.multi_modal_projector(out.hidden_states[-2])  # (V*F, 49, d)
    grid = proj.reshape(v * f, side, side, -1).permute(0, 3, 1, 2)
    if layout == "onevision":
        pool = lambda t: F.interpolate(t, size=(4, 4), mode="bilinear")  # noqa: E731
    else:
        pool = lambda t: F.avg_pool2d(t, 2)  # noqa: E731
    feats = pool(grid).flatten(2).transpose(1, 2)  # (V*F, n, d)
    n = feats.shape[1]
    score = []
    for layer in layers:
        att = out.attentions[layer]  # (V*F, heads, 49, 49)
        received = att.mean(dim=1).mean(dim=1)  # (V*F, 49)
        score.append(pool(received.reshape(v * f, 1, side, side)).reshape(v, f, n))
    res = aot.compress(feats.reshape(v, f, n, -1), score[1], local_scores=score[0],
                       grid=(int(math.isqrt(n)),) * 2, config=config)
    return res


def test_lm_receives_exactly_the_compressed_tokens(proc):
    model = hf_tiny.model()
    inp = inputs(proc)
    cfg = aot.AOTConfig(retention=0.25)
    expected = eager_reference(model, inp["pixel_values_videos"], cfg)
    aot.patch(model, cfg, **LAYERS)
    cap = hf_tiny.LMInputs(model)
    with torch.no_grad():
        model(**inp)
    cap.remove()
    emb = cap.calls[0]["inputs_embeds"]
    r = aot.budget(0.25, 8, 16)
    assert model._aot.last["tokens_out"] == r == 32
    video_id = model.config.video_token_id
    # the compact prompt: text tokens unchanged, R + 1 video placeholders per video
    spliced_len = emb.shape[1]
    assert spliced_len == inp["input_ids"].shape[1] - (8 * 16 - r)  # the longest row sets the width
    for i in range(2):
        row_ids = _compact_ids(inp, i, r + 1, video_id, spliced_len)
        got = emb[i][row_ids == video_id]
        assert got.shape[0] == r + 1
        assert torch.allclose(got[:r], expected.tokens[i], atol=1e-5)
        assert torch.allclose(got[r], model.model.image_newline, atol=0)
        text = emb[i][(row_ids != video_id) & (row_ids != proc.tokenizer.pad_token_id)]
        ref_text = model.get_input_embeddings()(inp["input_ids"][i][(inp["input_ids"][i] != video_id)
                                                                    & inp["attention_mask"][i].bool()])
        assert torch.equal(text, ref_text)


def _compact_ids(inp, i, per_video, video_id, width):
    """The row's ids with its video run shortened to per_video, left-padded to width (written here)."""
    ids = inp["input_ids"][i][inp["attention_mask"][i].bool()].tolist()
    start = ids.index(video_id)
    end = start + sum(1 for t in ids if t == video_id)
    row = ids[:start] + [video_id] * per_video + ids[end:]
    return torch.tensor([hf_tiny.tokenizer().pad_token_id] * (width - len(row)) + row)


@pytest.mark.parametrize("name", aot.methods.names(stage="pre-llm"))  # in-LLM ones: tests/test_inllm.py
def test_every_registered_method_runs_inside_the_model(proc, name):
    model = hf_tiny.model()
    inp = inputs(proc)
    method = aot.methods.get(name)
    aot.patch(model, method.config(retention=0.5), method=name, **LAYERS)
    seq = model.generate(**inp, max_new_tokens=2, do_sample=False)
    last = model._aot.last
    assert last["method"] == name
    assert last["tokens_out"] == aot.budget(0.5, 8, 16)
    assert last["llm_video_tokens"] == [last["tokens_out"] + 1] * 2
    assert torch.equal(seq[:, :inp["input_ids"].shape[1]], inp["input_ids"])  # the caller's prompt comes back
    assert seq.shape[1] == inp["input_ids"].shape[1] + 2


def test_ablation_config_runs_the_ablation(proc):
    """A config made by an ablation's .config() carries its switches: patching with it runs it."""
    model = hf_tiny.model()
    inp = inputs(proc)
    aot.patch(model, aot.methods.get("aot-no-ot").config(retention=0.25), **LAYERS)
    cap = hf_tiny.LMInputs(model)
    with torch.no_grad():
        model(**inp)
    cap.remove()
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    cap2 = hf_tiny.LMInputs(model)
    with torch.no_grad():
        model(**inp)
    cap2.remove()
    assert not torch.allclose(cap.calls[0]["inputs_embeds"], cap2.calls[0]["inputs_embeds"])


# --- generate: KV cache, batches ---------------------------------------------------------------

def test_generate_with_cache_equals_greedy_loop_without_cache(proc):
    model = hf_tiny.model()
    inp = inputs(proc)
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    special = [model.config.video_token_id, model.config.image_token_id]  # a random LM may emit them
    seq = model.generate(**inp, max_new_tokens=4, do_sample=False, suppress_tokens=special)
    assert torch.equal(seq, hf_tiny.greedy_without_cache(model, inp, 4))  # the (re-compressed) prompt every step


def test_batch_equals_one_at_a_time(proc):
    model = hf_tiny.model()
    inp = inputs(proc)
    assert (inp["attention_mask"] == 0).any()  # the rows really are padded
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    seq, scores = greedy(model, inp)
    for i in range(2):
        s1, sc1 = greedy(model, one(inp, i))
        assert torch.equal(seq[i, -5:], s1[0, -5:])
        assert torch.allclose(scores[i], sc1[0], atol=1e-4)


# --- positions ---------------------------------------------------------------------------------

def test_original_positions_keep_the_uncompressed_indices(proc):
    model = hf_tiny.model()
    inp = one(inputs(proc), 1)  # text before and after the video
    aot.patch(model, aot.AOTConfig(retention=0.25), positions="original", **LAYERS)
    cap = hf_tiny.LMInputs(model)
    model.generate(**inp, max_new_tokens=3, do_sample=False)
    cap.remove()
    pos = cap.calls[0]["position_ids"][0]
    ids = inp["input_ids"][0]
    video_id = model.config.video_token_id
    start = int((ids == video_id).nonzero()[0])
    # expected: text before at 0..start-1, video tokens at start + their flat positions, newline at
    # start + F*N, text after continues from start + F*N + 1 (written from the compressed result)
    expected = eager_reference(model, inp["pixel_values_videos"], aot.AOTConfig(retention=0.25))
    r = expected.positions.shape[1]
    after = ids.numel() - start - (8 * 16 + 1)
    want = torch.cat([torch.arange(start), start + expected.positions[0], torch.tensor([start + 128]),
                      start + 129 + torch.arange(after)])
    assert torch.equal(pos, want)
    assert pos.numel() == start + r + 1 + after
    # decoding continues where the uncompressed prompt would: at its length
    assert [int(c["position_ids"][0, -1]) for c in cap.calls[1:]] == [ids.numel(), ids.numel() + 1]


def test_contiguous_positions_by_default(proc):
    model = hf_tiny.model()
    inp = one(inputs(proc), 1)
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    cap = hf_tiny.LMInputs(model)
    model.generate(**inp, max_new_tokens=2, do_sample=False)
    cap.remove()
    n = cap.calls[0]["inputs_embeds"].shape[1]
    assert torch.equal(cap.calls[0]["position_ids"][0], torch.arange(n))
    assert int(cap.calls[1]["position_ids"][0, -1]) == n


# --- images in the same prompt -------------------------------------------------------------------

def test_images_are_left_alone(proc):
    from PIL import Image

    model = hf_tiny.model()
    img = Image.fromarray(hf_tiny.frames(1, seed=5, size=28)[0])
    inp = proc(text=["<image> and <video> what moves ?"], images=[img], videos=[hf_tiny.frames(8)],
               return_tensors="pt")
    cap = hf_tiny.LMInputs(model)
    with torch.no_grad():
        ref = model(**inp).logits
    aot.patch(model, aot.AOTConfig(retention=1.0), **LAYERS)
    with torch.no_grad():
        assert torch.equal(model(**inp).logits, ref)
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    with torch.no_grad():
        model(**inp)
    cap.remove()
    image_id = model.config.image_token_id
    n_img = int((inp["input_ids"] == image_id).sum())
    ref_img = cap.calls[0]["inputs_embeds"][0][inp["input_ids"][0] == image_id]
    ids = inp["input_ids"][0].tolist()
    start = ids.index(image_id)
    got_img = cap.calls[-1]["inputs_embeds"][0][start:start + n_img]  # the image precedes the video
    assert torch.equal(got_img, ref_img)


# --- LLaVA-Video's original layout -----------------------------------------------------------------

def grid_layout(feats, newline):
    """LLaVA-Video's add_token_per_grid, as a loop: per frame, per row, w tokens then a newline."""
    f, h, w, _ = feats.shape
    out = []
    for t in range(f):
        for r in range(h):
            out += [feats[t, r, c] for c in range(w)] + [newline]
    return torch.stack(out)


def test_llava_video_layout_at_retention_one_is_the_original_layout(proc):
    model = hf_tiny.model()
    inp = one(inputs(proc), 0)
    aot.patch(model, aot.AOTConfig(retention=1.0), video_layout="llava-video", **LAYERS)
    cap = hf_tiny.LMInputs(model)
    with torch.no_grad():
        model(**inp)
    cap.remove()
    inner = model.model
    with torch.no_grad():
        hs = inner.vision_tower(inp["pixel_values_videos"][0], output_hidden_states=True).hidden_states[-2]
        proj = inner.multi_modal_projector(hs).reshape(8, 7, 7, -1).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(proj, 2).permute(0, 2, 3, 1)  # (8, 3, 3, d): floor(7/2) = 3
    want = grid_layout(pooled, inner.image_newline)
    emb = cap.calls[0]["inputs_embeds"][0]
    start = int((inp["input_ids"][0] == model.config.video_token_id).nonzero()[0])
    assert model._aot.last["llm_video_tokens"] == [8 * 3 * 4]
    assert torch.allclose(emb[start:start + want.shape[0]], want, atol=1e-6)


def test_llava_video_layout_compressed_has_a_newline_per_kept_row(proc):
    model = hf_tiny.model()
    inp = one(inputs(proc), 0)
    cfg = aot.AOTConfig(retention=0.3)
    aot.patch(model, cfg, video_layout="llava-video", **LAYERS)
    cap = hf_tiny.LMInputs(model)
    with torch.no_grad():
        model(**inp)
    cap.remove()
    expected = eager_reference(model, inp["pixel_values_videos"][:1], cfg, layout="grid")
    pos = expected.positions[0]
    rows = sorted({(int(p) // 9, int(p) % 9 // 3) for p in pos})
    r = aot.budget(0.3, 8, 9)
    assert model._aot.last["tokens_out"] == r
    assert model._aot.last["llm_video_tokens"] == [r + len(rows)]
    # sequence written here: tokens of each kept row in order, then that row's newline
    nl = model.model.image_newline
    seq = []
    for (f, row) in rows:
        for j, p in enumerate(pos.tolist()):
            if p // 9 == f and p % 9 // 3 == row:
                seq.append(expected.tokens[0][j])
        seq.append(nl)
    want = torch.stack(seq)
    emb = cap.calls[0]["inputs_embeds"][0]
    start = int((inp["input_ids"][0] == model.config.video_token_id).nonzero()[0])
    assert torch.allclose(emb[start:start + want.shape[0]], want, atol=1e-5)


# --- accelerate hooks ------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:The following device_map keys")  # image_newline is a parameter, not a module
def test_patch_keeps_accelerate_hooks(proc, tmp_path):
    accelerate = pytest.importorskip("accelerate")  # noqa: F841
    from transformers import LlavaOnevisionForConditionalGeneration

    plain = hf_tiny.model()
    plain.save_pretrained(tmp_path / "m")
    device_map = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "model.image_newline": "cpu",
                  "model.language_model": "disk", "lm_head": "cpu"}
    hooked = LlavaOnevisionForConditionalGeneration.from_pretrained(
        tmp_path / "m", device_map=device_map, offload_folder=str(tmp_path / "off")).eval()
    hooked.generation_config = plain.generation_config
    hf_tiny.assert_offloaded_equals_plain(plain, hooked, inputs(proc), aot.AOTConfig(retention=0.25), **LAYERS)


# --- errors --------------------------------------------------------------------------------------

def test_clear_errors(proc):
    model = hf_tiny.model()
    with pytest.raises(TypeError, match="LlavaOnevisionForConditionalGeneration"):
        aot.patch(torch.nn.Linear(2, 2), aot.AOTConfig())
    with pytest.raises(ValueError, match=r"out of range: the tower has 6 layers"):
        aot.patch(model, aot.AOTConfig(), local_layer=6, global_layer=-2)
    with pytest.raises(ValueError, match="vision layer 5 is out of range: the tower has 4 layers"):
        aot.patch(hf_tiny.model(layers=4), aot.AOTConfig())  # the default local layer 5
    with pytest.raises(TypeError, match="config must be a method config"):
        aot.patch(model, {"retention": 0.1}, **LAYERS)
    with pytest.raises(ValueError, match="video_layout"):
        aot.patch(model, aot.AOTConfig(), video_layout="grid!", **LAYERS)
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    with pytest.raises(ValueError, match="already patched"):
        aot.patch(model, aot.AOTConfig(), **LAYERS)
    vids = [hf_tiny.frames(8)]
    no_placeholder = proc(text=["what is in the video ?"], return_tensors="pt")
    no_placeholder["pixel_values_videos"] = proc(text=["<video>"], videos=vids, return_tensors="pt")["pixel_values_videos"]
    with pytest.raises(ValueError, match="no video placeholder"):
        model.generate(**no_placeholder, max_new_tokens=1)
    edited = inputs(proc, texts=TEXTS[:1], seeds=(0,))
    edited["input_ids"][0, 5] = 9  # one placeholder overwritten by hand
    with pytest.raises(ValueError, match="video placeholders"):
        model(**edited)
    with pytest.raises(NotImplementedError, match="labels"):
        good = inputs(proc, texts=TEXTS[:1], seeds=(0,))
        model(**good, labels=good["input_ids"])


def test_transformers_methods_relied_on_exist(monkeypatch):
    """The adapter names every transformers method (and argument) it calls; they must be there."""
    import inspect

    from aot.models import llava_onevision as adapter
    from transformers.models.llava_onevision import modeling_llava_onevision as mod

    adapter.check_transformers()
    for qual, args in adapter._RELIED_ON.items():
        cls_name, meth = qual.split(".")
        assert set(args) <= set(inspect.signature(getattr(getattr(mod, cls_name), meth)).parameters)
    # and a transformers without the multimodal hook is refused with a message that names it
    monkeypatch.setitem(adapter._RELIED_ON, "LlavaOnevisionModel.forward", ("input_ids", "no_such_argument"))
    with pytest.raises(ImportError, match=r"LlavaOnevisionModel.forward\(no_such_argument\)"):
        adapter.check_transformers()


def test_beam_search_and_several_sequences(proc):
    """generate's input expansion (beams, num_return_sequences) sees the compressed video once per row."""
    model = hf_tiny.model()
    inp = inputs(proc)
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    ref = model.generate(**inp, **kw)
    aot.patch(model, aot.AOTConfig(retention=1.0), **LAYERS)
    assert torch.equal(model.generate(**inp, **kw), ref)
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(retention=0.25), **LAYERS)
    seq = model.generate(**inp, **kw)
    assert seq.shape == ref.shape
    assert torch.equal(seq[:, :inp["input_ids"].shape[1]], inp["input_ids"].repeat_interleave(2, 0))
