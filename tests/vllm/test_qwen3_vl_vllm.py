"""AOT in vLLM's Qwen3-VL against the transformers adapter (aot.models.qwen3_vl), on the same tiny random
checkpoint (tests/hf_tiny_qwen3.py's tokenizer, processor and tower with DeepStack taps at blocks 1 and 2;
a text model with head size 64 for vLLM's CPU paged attention). One engine start.
"""

from __future__ import annotations

import gc
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: hf_tiny_qwen3

import hf_tiny_qwen3 as h3  # noqa: E402

import aot  # noqa: E402
from aot.serving import options as opts  # noqa: E402

ARCH = "AotQwen3VLForConditionalGeneration"
FPS = 2.0
PROMPT = "<s><|vision_start|><|video_pad|><|vision_end|> what is in the video ?</s><s>"
PROMPT2 = ("<s><|vision_start|><|video_pad|><|vision_end|> and <|vision_start|><|video_pad|><|vision_end|> "
           "what is in the video ?</s><s>")
VIDEOS = {"a": h3.frames(8, seed=0), "b": h3.frames(6, seed=1, height=48, width=32)}


def config():
    cfg = h3.config("qwen3_vl", hidden=128)
    text = cfg.text_config
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 2, 64
    text.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                            "mrope_interleaved": True}
    return cfg


def save_processor(folder):
    """tests/hf_tiny_qwen3.py's processor with the image processor's mean/std set to the video processor's
    (0.5, as in the released Qwen3-VL checkpoints). With the two sets different (CLIP's for images, 0.5 for
    videos) vLLM 0.32's tower output differed from transformers' on the same video (log-probabilities 3.2
    apart, stock text path equal); with them equal, 8e-6: vLLM's Qwen3-VL path evidently normalises videos
    with the image processor's statistics (not traced further)."""
    proc = h3.processor()
    proc.image_processor.image_mean = list(proc.video_processor.image_mean)
    proc.image_processor.image_std = list(proc.video_processor.image_std)
    proc.save_pretrained(folder)


def meta(frames):
    n, h, w, _ = frames.shape
    return dict(total_num_frames=n, fps=FPS, width=w, height=h, duration=n / FPS, video_backend="opencv",
                frames_indices=list(range(n)))


def grid(name):
    n, h, w, _ = VIDEOS[name].shape
    return n // 2, h // 8, w // 8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from transformers import Qwen3VLForConditionalGeneration

    folder = tmp_path_factory.mktemp("qwen3vl")
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config()).eval()
    model.generation_config.pad_token_id = h3.tokenizer().pad_token_id
    model.save_pretrained(folder)
    save_processor(folder)
    return folder


@pytest.fixture(scope="module")
def reference(ckpt):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    model = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(ckpt)

    def run(name, retention):
        frames = [VIDEOS[n] for n in name.split("+")]  # "b+a": both videos in one prompt
        inputs = proc(text=PROMPT if len(frames) == 1 else PROMPT2, videos=frames,
                      video_metadata=[VideoMetadata(**meta(f)) for f in frames], return_tensors="pt")
        if retention is not None:
            aot.patch(model, aot.AOTConfig(retention=retention))
        try:
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1].float()
            last = getattr(model, "_aot", None) and model._aot.last
        finally:
            if retention is not None:
                aot.unpatch(model)
        return torch.log_softmax(logits, -1), last

    return run


def request(name, retention=None):
    videos = [(VIDEOS[n], meta(VIDEOS[n])) for n in name.split("+")]
    r = {"prompt": PROMPT if len(videos) == 1 else PROMPT2,
         "multi_modal_data": {"video": videos[0] if len(videos) == 1 else videos}}
    if retention is not None:
        r["mm_processor_kwargs"] = {opts.REQUEST_KWARG: retention}
    return r


def test_budget_layout_and_logits(ckpt, reference):
    """placeholders = kept rows = aot.budget per video; the rows follow the transformers adapter's per-slice
    layout; first-token log-probabilities (float32) equal the adapter's at retention 1.0 and 25%, also for
    two requests with different videos and retentions in one batch."""
    from vllm import LLM, SamplingParams

    over = {"architectures": [ARCH], "aot": {"method": "aot", "retention": 0.25}}
    llm = LLM(model=str(ckpt), hf_overrides=over, video_pruning_rate=0.5, dtype="float32", max_model_len=1024,
              enforce_eager=True, max_num_seqs=4, limit_mm_per_prompt={"video": 2}, max_logprobs=-1, seed=0,
              gpu_memory_utilization=0.1, enable_prefix_caching=True, enable_chunked_prefill=False,
              max_num_batched_tokens=1024)
    try:
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
    finally:
        del llm
        gc.collect()


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


def test_qwen3_5_budget_and_layout(tmp_path):
    """Qwen3.5 (dense, Gated DeltaNet layers, no DeepStack) through AotQwen3_5ForConditionalGeneration, in
    bfloat16 (vLLM 0.32's CPU Gated DeltaNet kernel refuses float32, so no float32 logits comparison):
    placeholders = kept rows = aot.budget at retention 1.0 and 0.25, the run has the uncompressed run's
    length minus the dropped pads, and 4 greedy tokens decode."""
    from transformers import Qwen3_5ForConditionalGeneration
    from vllm import LLM, SamplingParams

    cfg = h3.config("qwen3_5", hidden=128)
    text = cfg.text_config
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 2, 64
    text.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                            "mrope_interleaved": True, "partial_rotary_factor": 1.0}
    text.linear_key_head_dim = text.linear_value_head_dim = 128  # vLLM 0.32 CPU kernels: 32 and 16 refused
    torch.manual_seed(0)
    Qwen3_5ForConditionalGeneration(cfg).eval().save_pretrained(tmp_path)
    save_processor(tmp_path)
    arch = "AotQwen3_5ForConditionalGeneration"
    llm = LLM(model=str(tmp_path), hf_overrides={"architectures": [arch], "aot": {"method": "aot", "retention": 0.25}},
              video_pruning_rate=0.5, dtype="bfloat16", max_model_len=1024, enforce_eager=True, max_num_seqs=2,
              limit_mm_per_prompt={"video": 1}, seed=0, gpu_memory_utilization=0.1,
              enable_prefix_caching=False, enable_chunked_prefill=False, max_num_batched_tokens=1024)
    try:
        model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        assert type(model).__name__ == arch and not model.use_deepstack
        vid = cfg.video_token_id
        t, h, w = grid("a")
        runs = {}
        for retention in (1.0, 0.25):
            out = llm.generate([request("a", retention)], SamplingParams(max_tokens=4, temperature=0.0))[0]
            want = aot.budget(retention, t, h * w)
            assert sum(1 for i in out.prompt_token_ids if i == vid) == want
            mine = model.aot_last["videos"][0]
            assert mine["kept"] == sum(mine["slice_tokens"]) == want and len(mine["slice_tokens"]) == t
            runs[retention] = mine["rows"]
            assert len(out.outputs[0].token_ids) == 4
        assert runs[1.0] - runs[0.25] == t * h * w - aot.budget(0.25, t, h * w)
    finally:
        del llm
        gc.collect()
