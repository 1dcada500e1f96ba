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
        frames = VIDEOS[name]
        inputs = proc(text=PROMPT, videos=[frames], video_metadata=[VideoMetadata(**meta(frames))],
                      return_tensors="pt")
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
    r = {"prompt": PROMPT, "multi_modal_data": {"video": (VIDEOS[name], meta(VIDEOS[name]))}}
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
              enforce_eager=True, max_num_seqs=4, limit_mm_per_prompt={"video": 1}, max_logprobs=-1, seed=0,
              gpu_memory_utilization=0.1, enable_prefix_caching=False, enable_chunked_prefill=False,
              max_num_batched_tokens=1024)
    try:
        cfg = llm.llm_engine.model_config.hf_config
        vocab, vid = cfg.text_config.vocab_size, cfg.video_token_id
        model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        assert type(model).__name__ == ARCH and model.is_multimodal_pruning_enabled
        sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1)

        def check(out, name, retention):
            t, h, w = grid(name)
            want = aot.budget(retention, t, h * w)
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
            if retention == 0.25:
                assert len(set(mine["slice_tokens"])) > 1 or mine["slice_tokens"][0] != mine["kept"]
            if retention == 1.0:
                plain, _ = reference("a", None)
                got = torch.tensor([out.outputs[0].logprobs[0][i].logprob for i in range(vocab)])
                assert torch.allclose(got, plain, atol=2e-4)

        cases = (("a", 0.5), ("b", 0.3))
        for out, (name, retention) in zip(llm.generate([request(n, r) for n, r in cases], sp), cases):
            check(out, name, retention)
    finally:
        del llm
        gc.collect()
