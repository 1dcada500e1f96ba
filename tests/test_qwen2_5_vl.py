"""aot.patch on tiny random Qwen2.5-VL models, through transformers' own processor and generate.

Independent answers: the unpatched model (retention 1.0), the vision block's attention written here
as a dense masked softmax with the window permutation found by matching rows (scores), aot.compress
called directly (tokens), M-RoPE ids written by hand from the grid, a greedy loop without the KV
cache, one video at a time.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torchvision")  # transformers' video processors need it (see README)

import aot  # noqa: E402
import aot.methods  # noqa: E402
import hf_tiny  # noqa: E402
import hf_tiny_qwen as hq  # noqa: E402
from aot.models.splice import VideoSlots, gather_positions, splice_prompt  # noqa: E402

V = "<|vision_start|><|video_pad|><|vision_end|>"
TEXTS = [V + " what is in the video ?", "describe it , where does the cat move ? " + V + " red or blue ?"]


@pytest.fixture(scope="module")
def proc():
    return hq.processor()


def inputs(proc, texts=TEXTS, videos=None):
    videos = videos if videos is not None else [hq.frames(8, seed=0), hq.frames(6, seed=1, height=48)]
    return proc(text=list(texts), videos=videos, return_tensors="pt", padding=True)


def one(proc, i, texts=TEXTS, videos=None):
    """Row i alone, as the processor gives it."""
    videos = videos if videos is not None else [hq.frames(8, seed=0), hq.frames(6, seed=1, height=48)]
    return proc(text=[texts[i]], videos=[videos[i]], return_tensors="pt")


def greedy(model, inp, steps=4):
    special = [model.config.video_token_id, model.config.image_token_id]  # a random LM may emit them
    out = model.generate(**inp, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True,
                         output_scores=True, suppress_tokens=special)
    return out.sequences, torch.stack(out.scores, 1)


# --- the shared splice helpers ---------------------------------------------------------------------

def test_splice_per_video_counts_and_gathered_positions():
    vid = 7
    ids = torch.tensor([[0, 0, 1, vid, vid, vid, 2],
                        [1, vid, vid, vid, vid, vid, 3]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    slots = [VideoSlots(torch.tensor([0, 2]), 3), VideoSlots(torch.tensor([1, 4]), 5)]
    s = splice_prompt(ids, mask, token_id=vid, per_video=[3, 5], videos=slots, pad_token_id=0)
    # padding stays where it was; the shorter row is padded again on the left
    assert s.input_ids.tolist() == [[0, 0, 1, vid, vid, 2], [0, 0, 1, vid, vid, 3]]
    assert s.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert s.source.tolist() == [[0, 1, 2, 3, 5, 6], [-1, -1, 0, 2, 5, 6]]
    full = torch.arange(2 * 7).reshape(1, 2, 7).repeat(3, 1, 1) * torch.tensor([1, 10, 100]).view(3, 1, 1)
    got = gather_positions(full, s.source)
    assert got.shape == (3, 2, 6)
    assert got[:, 0].tolist() == [[0, 1 * m, 2 * m, 3 * m, 5 * m, 6 * m] for m in (1, 10, 100)]
    assert got[:, 1].tolist() == [[0, 0, 7 * m, 9 * m, 12 * m, 13 * m] for m in (1, 10, 100)]
    with pytest.raises(ValueError, match="3, 4 tokens"):
        splice_prompt(ids, mask, token_id=vid, per_video=[3, 4], videos=slots)


# --- retention 1.0 is the unpatched model ----------------------------------------------------------

def test_retention_one_equals_unpatched_logits_and_generate(proc):
    model = hq.model()
    inp = inputs(proc)
    assert (inp["attention_mask"] == 0).any()  # left-padded: videos of different lengths and sizes
    assert inp["video_grid_thw"].tolist() == [[4, 8, 8], [3, 12, 8]]
    with torch.no_grad():
        ref = model(**inp).logits
    ref_seq, ref_scores = greedy(model, inp)
    aot.patch(model, aot.AOTConfig(retention=1.0))
    with torch.no_grad():
        got = model(**inp).logits
    seq, scores = greedy(model, inp)
    assert torch.equal(got, ref)
    assert torch.equal(seq, ref_seq)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    last = model._aot.last
    assert last["tokens_out"] == last["tokens_in"] == 4 * 16 + 3 * 24
    assert last["frames"] == [4, 3] and last["grid"] == [(4, 4), (6, 4)]


def test_unpatch_restores_original_behaviour(proc):
    model = hq.model()
    cls_generate = type(model).generate
    inp = inputs(proc)
    with torch.no_grad():
        ref = model(**inp).logits
    aot.patch(model, aot.AOTConfig(retention=0.25))
    with torch.no_grad():
        assert model(**inp).logits.shape[1] < ref.shape[1]
    aot.unpatch(model)
    assert not hasattr(model, "_aot") and not model._forward_pre_hooks
    assert model.generate.__func__ is cls_generate
    with torch.no_grad():
        assert torch.equal(model(**inp).logits, ref)


def test_default_score_blocks_are_the_first_and_last_full_attention_blocks():
    model = hq.model(depth=6, fullatt=(2, 5))
    aot.patch(model, aot.AOTConfig())
    assert (model._aot.local_layer, model._aot.global_layer) == (2, 5)
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(), local_layer=0, global_layer=-1)
    assert (model._aot.local_layer, model._aot.global_layer) == (0, 5)


# --- scores and tokens: an eager reference written here ---------------------------------------------

@torch.no_grad()
def eager_scores(model, pixels, thw, layers):
    """Per video (t, h/2 * w/2) scores of each block in ``layers``: a dense softmax over the block's
    q, k with every pair outside the block's segments masked, mean over heads, summed over queries,
    mapped to the processor's order by matching the permuted rows to patch_embed's output, averaged
    over each 2x2 merge group, normalised to sum 1 per slice."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    tower = model.model.visual
    cap = {}
    hooks = [tower.patch_embed.register_forward_hook(lambda m, i, o: cap.__setitem__("natural", o)),
             tower.blocks[0].register_forward_pre_hook(
                 lambda m, a, k: cap.__setitem__("permuted", a[0] if a else k["hidden_states"]), with_kwargs=True)]
    for layer in layers:
        hooks.append(tower.blocks[layer].attn.register_forward_pre_hook(
            lambda m, a, k, layer=layer: cap.__setitem__(layer, (a[0], k["cu_seqlens"], k["position_embeddings"])),
            with_kwargs=True))
    try:
        tower(pixels, grid_thw=thw)
    finally:
        for h in hooks:
            h.remove()
    dist = torch.cdist(cap["permuted"], cap["natural"])
    perm = dist.argmin(1)  # permuted row i holds natural patch perm[i]
    assert torch.equal(perm.sort().values, torch.arange(perm.numel()))
    out = {}
    for layer in layers:
        hidden, cu, pos = cap[layer]
        attn = tower.blocks[layer].attn
        t_all = hidden.shape[0]
        q, k, _ = attn.qkv(hidden).reshape(t_all, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *pos)
        seg = torch.zeros(t_all, dtype=torch.long)
        for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            seg[s:e] = i
        logits = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(seg[:, None] != seg[None, :], -math.inf)
        received = logits.softmax(-1).mean(0).sum(0)  # (T,) permuted order
        natural = torch.empty_like(received)
        natural[perm] = received
        groups = natural.reshape(-1, 4).mean(-1)
        per_video, first = [], 0
        for t, h, w in thw.tolist():
            n = t * h * w // 4
            s = groups[first:first + n].reshape(t, -1)
            per_video.append(s / s.sum(-1, keepdim=True))
            first += n
        out[layer] = per_video
    return out


def test_scores_match_a_dense_masked_reference(proc):
    """Window block (0) and full-attention block (3): our hooks give the reference's scores."""
    from aot.models import qwen2_5_vl as adapter

    model = hq.model()
    inp = inputs(proc)
    ref = eager_scores(model, inp["pixel_values_videos"], inp["video_grid_thw"], (0, 3))
    for layer in (0, 3):
        rec = []
        tower = model.model.visual
        h = tower.blocks[layer].attn.register_forward_pre_hook(adapter.score_hook(rec, 7, {}), with_kwargs=True)
        with torch.no_grad():
            model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"])
        h.remove()
        got = adapter._to_llm_grid(rec[0], inp["video_grid_thw"], tower)
        for g, r in zip(got, ref[layer]):
            assert torch.allclose(g.sum(-1), torch.ones(g.shape[0]), atol=1e-5)
            assert torch.allclose(g, r, atol=1e-6)


def test_lm_receives_exactly_the_compressed_tokens(proc):
    model = hq.model()
    inp = inputs(proc)
    thw = inp["video_grid_thw"]
    cfg = aot.AOTConfig(retention=0.25)
    ref = eager_scores(model, inp["pixel_values_videos"], thw, (0, 3))
    with torch.no_grad():
        feats = model.model.get_video_features(inp["pixel_values_videos"], thw).pooler_output
    expected = []
    for v, (t, h, w) in enumerate(thw.tolist()):
        n = h * w // 4
        expected.append(aot.compress(feats[v].reshape(1, t, n, -1), ref[3][v][None], local_scores=ref[0][v][None],
                                     grid=(h // 2, w // 2), config=cfg))
    aot.patch(model, cfg, local_layer=0, global_layer=3)
    cap = hf_tiny.LMInputs(model)
    with torch.no_grad():
        model(**inp)
    cap.remove()
    emb = cap.calls[0]["inputs_embeds"]
    r = [aot.budget(0.25, 4, 16), aot.budget(0.25, 3, 24)]
    assert model._aot.last["llm_video_tokens"] == r
    vid = model.config.video_token_id
    for i in range(2):
        row = _compact_ids(inp, i, r[i], vid, emb.shape[1])
        assert torch.allclose(emb[i][row == vid], expected[i].tokens[0], atol=1e-5)
        ref_text = model.get_input_embeddings()(inp["input_ids"][i][(inp["input_ids"][i] != vid)
                                                                    & inp["attention_mask"][i].bool()])
        assert torch.equal(emb[i][(row != vid) & (row != hq.tokenizer().pad_token_id)], ref_text)


def _compact_ids(inp, i, per_video, vid, width):
    ids = inp["input_ids"][i][inp["attention_mask"][i].bool()].tolist()
    start = ids.index(vid)
    end = start + sum(1 for t in ids if t == vid)
    row = ids[:start] + [vid] * per_video + ids[end:]
    return torch.tensor([hq.tokenizer().pad_token_id] * (width - len(row)) + row)


# --- 3-D M-RoPE ----------------------------------------------------------------------------------

def hand_positions(start, t, h, w, interval, kept, after):
    """M-RoPE ids of `text(start) video text(after)` written from the grid: text i -> (i, i, i);
    video cell (f, y, x) -> (start + f * interval, start + y, start + x); the text after the video
    continues at start + max(h, w) (transformers 5.24's get_rope_index advances by the larger side)."""
    cols = [[i, i, i] for i in range(start)]
    for p in kept:
        f, cell = divmod(int(p), h * w)
        cols.append([start + f * interval, start + cell // w, start + cell % w])
    nxt = start + max(h, w)
    cols += [[nxt + i] * 3 for i in range(after)]
    return torch.tensor(cols).T  # (3, L')


def test_mrope_at_ten_percent_is_the_hand_built_expectation(proc):
    model = hq.model()
    videos = [hq.frames(8, seed=0), hq.frames(8, seed=1, height=48)]
    inp = one(proc, 1, videos=videos)  # text before and after a 4 x (6 x 4) video
    cfg = aot.AOTConfig(retention=0.1)
    aot.patch(model, cfg, local_layer=0, global_layer=3)
    cap = hf_tiny.LMInputs(model)
    model.generate(**inp, max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        model(**inp)
    cap.remove()
    ids = inp["input_ids"][0]
    vid = model.config.video_token_id
    start = int((ids == vid).nonzero()[0])
    after = ids.numel() - start - 4 * 24
    # the kept cells, from aot.compress on the reference scores (written here)
    ref = eager_scores(model, inp["pixel_values_videos"], inp["video_grid_thw"], (0, 3))
    with torch.no_grad():
        feats = model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"]).pooler_output[0]
    kept = aot.compress(feats.reshape(1, 4, 24, -1), ref[3][0][None], local_scores=ref[0][0][None], grid=(6, 4),
                        config=cfg).positions[0]
    assert kept.numel() == aot.budget(0.1, 4, 24) == 10
    want = hand_positions(start, 4, 6, 4, 2, kept, after)  # interval: 24 tokens/s x 2/24 s a slice
    gen_prefill = cap.calls[0]["position_ids"]  # generate: (4, 1, L') text positions, then t, h, w
    assert torch.equal(gen_prefill[1:, 0], want)
    assert torch.equal(gen_prefill[0, 0], torch.arange(want.shape[1]))
    fwd = cap.calls[-1]["position_ids"]  # model(...): (3, 1, L')
    assert torch.equal(fwd[:, 0], want)
    # decoding continues after the uncompressed prompt's last position
    last = int(want[0, -1])
    assert [c["position_ids"][1:, 0, -1].tolist() for c in cap.calls[1:3]] == [[last + 1] * 3, [last + 2] * 3]
    full_len = ids.numel()
    assert model._aot.last["rope_deltas"] == [last + 1 - want.shape[1]]
    assert model.model.rope_deltas.item() == last + 1 - want.shape[1]
    assert full_len - want.shape[1] == 4 * 24 - 10


def test_mrope_decoding_positions_equal_the_unpatched_model(proc):
    """The positions of the text and of every decoded token are those of the unpatched model."""
    model = hq.model()
    inp = inputs(proc)
    cap = hf_tiny.LMInputs(model)
    greedy(model, inp, steps=3)
    ref = [c["position_ids"] for c in cap.calls]
    cap.calls.clear()
    aot.patch(model, aot.AOTConfig(retention=0.1))
    greedy(model, inp, steps=3)
    cap.remove()
    got = [c["position_ids"] for c in cap.calls]
    vid = model.config.video_token_id
    text_ref = ref[0][:, inp["input_ids"] != vid]  # text (and padding) columns keep their positions
    new_ids = cap.calls[0]["inputs_embeds"]  # width of the spliced prompt
    assert got[0].shape[-1] == new_ids.shape[1]
    for a, b in zip(ref[1:], got[1:]):  # decoding steps: t, h, w ids equal (row 0 counts the real tokens)
        assert torch.equal(a[1:], b[1:])
        assert torch.equal(b[0, :, -1], got[0][0, :, -1] + (b[1, 0, -1] - got[0][1, 0, -1]))
    # the text tokens' ids are unchanged (rows compared on their real text tokens)
    for i in range(2):
        keep = inp["attention_mask"][i].bool() & (inp["input_ids"][i] != vid)
        r = ref[0][1:, i, keep]
        row = _compact_ids(inp, i, model._aot.last["llm_video_tokens"][i], vid, got[0].shape[-1])
        g = got[0][1:, i, (row != vid) & (row != hq.tokenizer().pad_token_id)]
        assert torch.equal(g, r)
    assert text_ref.numel() > 0


# --- generate: cache, batches ----------------------------------------------------------------------

def test_generate_with_cache_equals_greedy_loop_without_cache(proc):
    model = hq.model()
    inp = inputs(proc)
    aot.patch(model, aot.AOTConfig(retention=0.25))
    special = [model.config.video_token_id, model.config.image_token_id]
    seq = model.generate(**inp, max_new_tokens=4, do_sample=False, suppress_tokens=special)
    types = inp["mm_token_type_ids"]

    def extra(ids):  # Qwen's other inputs; the generated tokens are text (type 0)
        pad = torch.zeros(2, ids.shape[1] - types.shape[1], dtype=types.dtype)
        return {"video_grid_thw": inp["video_grid_thw"], "second_per_grid_ts": inp["second_per_grid_ts"],
                "mm_token_type_ids": torch.cat([types, pad], 1)}

    # no cache: the whole (re-compressed) prompt every step, through model(...)
    assert torch.equal(seq, hf_tiny.greedy_without_cache(model, inp, 4, extra))


def test_batch_equals_one_at_a_time(proc):
    """Left-padded batch of videos of different lengths (8 and 6 frames) and sizes (32x32, 48x32)."""
    model = hq.model()
    inp = inputs(proc)
    aot.patch(model, aot.AOTConfig(retention=0.25))
    seq, scores = greedy(model, inp)
    for i in range(2):
        s1, sc1 = greedy(model, one(proc, i))
        assert torch.equal(seq[i, -4:], s1[0, -4:])
        assert torch.allclose(scores[i], sc1[0], atol=1e-4)


@pytest.mark.parametrize("name", sorted(aot.methods.names(stage="pre-llm")))
def test_every_registered_method_runs_inside_the_model(proc, name):
    model = hq.model()
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

    model = hq.model()
    img = Image.fromarray(hq.frames(1, seed=5)[0])
    text = ["<|vision_start|><|image_pad|><|vision_end|> and " + V + " what moves ?"]
    inp = proc(text=text, images=[img], videos=[hq.frames(8)], return_tensors="pt")
    with torch.no_grad():
        ref = model(**inp).logits
    aot.patch(model, aot.AOTConfig(retention=1.0))
    with torch.no_grad():
        assert torch.equal(model(**inp).logits, ref)
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(retention=0.25))
    with torch.no_grad():
        assert model(**inp).logits.shape[1] == ref.shape[1] - (64 - 16)


# --- accelerate hooks ------------------------------------------------------------------------------

def test_patch_keeps_accelerate_hooks(proc, tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Qwen2_5_VLForConditionalGeneration

    plain = hq.model()
    plain.save_pretrained(tmp_path / "m")
    device_map = {"model.visual": "cpu", "model.language_model": "disk", "lm_head": "cpu"}
    hooked = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tmp_path / "m", device_map=device_map, offload_folder=str(tmp_path / "off")).eval()
    hooked.generation_config = plain.generation_config
    hf_tiny.assert_offloaded_equals_plain(plain, hooked, inputs(proc), aot.AOTConfig(retention=0.25))


# --- errors --------------------------------------------------------------------------------------

def test_clear_errors(proc):
    model = hq.model()
    with pytest.raises(TypeError, match="Qwen2_5_VLForConditionalGeneration"):
        aot.patch(torch.nn.Linear(2, 2), aot.AOTConfig())
    with pytest.raises(ValueError, match=r"vision layer 4 is out of range: the tower has 4 blocks"):
        aot.patch(model, aot.AOTConfig(), local_layer=4)
    with pytest.raises(TypeError, match="options not supported for Qwen2.5-VL: positions"):
        aot.patch(model, aot.AOTConfig(), positions="original")
    aot.patch(model, aot.AOTConfig(retention=0.25, clip_length=3))
    with pytest.raises(ValueError, match="already patched"):
        aot.patch(model, aot.AOTConfig())
    short = one(proc, 0, videos=[hq.frames(4)])  # 4 frames = 2 temporal slices < clip length 3
    with pytest.raises(ValueError, match="2 temporal slices .4 frames.*fewer than the clip length of 3"):
        model.generate(**short, max_new_tokens=1)
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(retention=0.25))
    edited = one(proc, 0)
    edited["input_ids"][0, 5] = 9  # one placeholder overwritten by hand
    with pytest.raises(ValueError, match="video placeholders"):
        model(**edited)
    gap = one(proc, 0)
    gap["input_ids"][0, [5, -2]] = gap["input_ids"][0, [-2, 5]]  # count kept, run broken
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


def test_transformers_methods_relied_on_exist(monkeypatch):
    from aot.models import qwen2_5_vl as adapter

    adapter.check_transformers()
    monkeypatch.setitem(adapter._RELIED_ON, "Qwen2_5_VLModel.get_rope_index", ("input_ids", "no_such_argument"))
    with pytest.raises(ImportError, match=r"Qwen2_5_VLModel.get_rope_index\(no_such_argument\)"):
        adapter.check_transformers()


def test_beam_search_and_several_sequences(proc):
    """generate's expansion (beams, num_return_sequences) repeats the 4-row position ids per row."""
    model = hq.model()
    inp = inputs(proc)
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    ref = model.generate(**inp, **kw)
    aot.patch(model, aot.AOTConfig(retention=1.0))
    assert torch.equal(model.generate(**inp, **kw), ref)
    aot.unpatch(model)
    aot.patch(model, aot.AOTConfig(retention=0.25))
    seq = model.generate(**inp, **kw)
    assert seq.shape == ref.shape
    assert torch.equal(seq[:, :inp["input_ids"].shape[1]], inp["input_ids"].repeat_interleave(2, 0))


def test_the_tower_runs_once_per_call(proc):
    model = hq.model()
    inp = inputs(proc)
    calls = []
    model.model.visual.register_forward_pre_hook(lambda m, a: calls.append(1))
    aot.patch(model, aot.AOTConfig(retention=0.25))
    model.generate(**inp, max_new_tokens=3, do_sample=False)
    assert len(calls) == 1
    with torch.no_grad():
        model(**inp)
    assert len(calls) == 2
    assert set(model._aot.last["times"]) == {"vision", "scores", "compress"}


def test_aot_run_on_a_qwen_checkpoint_without_its_processor(tmp_path, capsys):
    """aot run loads Qwen2.5-VL (tests/test_run_qwen.py); a folder without the processor files is a
    one-line error saying what is missing, no traceback."""
    from aot.cli import main
    from aot.demo import sample_video

    hq.model().save_pretrained(tmp_path)
    rc = main(["run", "--model", str(tmp_path), "--video", str(sample_video()), "--question", "hi"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("aot run: error:")]
    assert rc == 2 and len(lines) == 1 and "cannot load the processor" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(aot.methods.names(stage="llm")))
def test_in_llm_methods_patch_and_prune_inside_the_decoder(proc, name):
    """FastV/PDrop (tests/test_qwen_inllm.py checks them against a reference): their published
    layers do not fit the 2-layer tiny decoder, a clear error that leaves the model unpatched; a
    schedule that fits prunes inside the decoder while the prompt reaches it whole."""
    model = hq.model()
    method = aot.methods.get(name)
    with pytest.raises(ValueError, match="do not fit a language model of 2 layers"):
        aot.patch(model, method.config(), method=name)
    assert getattr(model, "_aot", None) is None
    fits = method.config(retention=0.5, k=1) if name == "fastv" else method.config(retention=0.5, layers=(1,))
    aot.patch(model, fits)
    inp = inputs(proc, videos=[hq.frames(8, seed=0), hq.frames(8, seed=1)])
    calls = hf_tiny.LMInputs(model)
    seq = model.generate(**inp, max_new_tokens=2, do_sample=False)
    calls.remove()
    assert calls.calls[0]["inputs_embeds"].shape[1] == inp["input_ids"].shape[1]
    assert torch.equal(seq[:, :inp["input_ids"].shape[1]], inp["input_ids"])
    last = model._aot.last
    assert (last["method"], last["stage"], last["tokens_in"], last["tokens_out"]) == (name, "llm", 64, 32)
