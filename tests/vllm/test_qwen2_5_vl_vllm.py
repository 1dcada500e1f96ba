"""AOT in vLLM's Qwen2.5-VL against the transformers adapter, on the same tiny random checkpoint.

Three engine starts in all (about 15 s each here): the main engine (prefix caching on, no chunking of
the prompt), a chunked-prefill engine whose token budget splits the video across steps (prefix caching
off), and an engine with a bad override that must fail with aot run's message.
"""

from __future__ import annotations

import gc

import pytest
import torch

import prefix_cache
import tiny

import aot
from aot.serving import options as opts

ARCH = "AotQwen2_5_VLForConditionalGeneration"
FPS = 2.0  # seconds per temporal slice = 2 / fps = 1 -> t step = tokens_per_second * 1 = 2


def meta(frames):
    n, h, w, _ = frames.shape
    return dict(total_num_frames=n, fps=FPS, width=w, height=h, duration=n / FPS, video_backend="opencv",
                frames_indices=list(range(n)))


VIDEOS = {"a": tiny.video(8, seed=0), "b": tiny.video(6, seed=1, height=48, width=32),
          "c": tiny.video(8, seed=2)}  # "c": the size and length of "a", other pixels


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny.save_qwen(tmp_path_factory.mktemp("qwen25vl"))


@pytest.fixture(scope="module")
def reference(ckpt):
    """The transformers adapter (aot.patch) on the same weights and processor output."""
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    model = tiny.load_qwen(ckpt)
    proc = AutoProcessor.from_pretrained(ckpt)
    cache = {}

    def run(name: str, retention: float | None):
        if (name, retention) in cache:
            return cache[name, retention]
        names = name.split("+")  # "a+b": both videos in one prompt
        frames = [VIDEOS[n] for n in names]
        inputs = proc(text=prompt_for(len(names)), videos=frames,
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
        cache[name, retention] = (torch.log_softmax(logits, -1), last, inputs)
        return cache[name, retention]

    return run


def make_engine(ckpt, retention=0.25, **kw):
    from vllm import LLM

    over = {"architectures": [ARCH], "aot": {"method": "aot", "retention": retention}}
    args = dict(model=str(ckpt), hf_overrides=over, video_pruning_rate=0.5, dtype="float32", max_model_len=1024,
                enforce_eager=True, max_num_seqs=4, limit_mm_per_prompt={"video": 2}, max_logprobs=-1, seed=0,
                gpu_memory_utilization=0.1)
    return LLM(**{**args, **kw})


def prompt_for(n_videos: int) -> str:
    if n_videos == 1:
        return tiny.PROMPT
    return "<s><|vision_start|><|video_pad|><|vision_end|> and <|vision_start|><|video_pad|><|vision_end|> what is in the video ?</s><s>"


def request(name, retention=None, prompt: str | None = None):
    names = name.split("+")
    videos = [(VIDEOS[n], meta(VIDEOS[n])) for n in names]
    r = {"prompt": prompt or prompt_for(len(names)), "multi_modal_data": {"video": videos if len(videos) > 1 else videos[0]}}
    if retention is not None:
        r["mm_processor_kwargs"] = {opts.REQUEST_KWARG: retention}
    return r


def first_logprobs(out, vocab: int) -> torch.Tensor:
    lp = out.outputs[0].logprobs[0]
    assert len(lp) >= vocab
    return torch.tensor([lp[i].logprob for i in range(vocab)])


def video_tokens(out, video_token_id) -> int:
    return sum(1 for t in out.prompt_token_ids if t == video_token_id)


def grid(name):
    n, h, w, _ = VIDEOS[name].shape
    return n // 2, h // 8, w // 8  # slices of 2 frames, 4-px patches merged 2x2


@pytest.fixture(scope="module")
def engine(ckpt):
    llm = make_engine(ckpt, enable_prefix_caching=True, enable_chunked_prefill=False, max_num_batched_tokens=1024,
                      block_size=prefix_cache.BLOCK)
    yield llm
    del llm
    gc.collect()


def sampling(n=1):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0.0, logprobs=-1)


def model_of(llm):
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner.model


GREEDY = {}


def test_budget_logits_and_concurrency(engine, reference, ckpt):
    """One engine: placeholders = kept rows = aot.budget; first-token log-probabilities (float32) equal the
    transformers adapter's at retention 1.0 and 25%; two requests in one batch with different videos and
    retentions each match their own reference; a repeated request (prefix cache hit) decodes the same."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(ckpt)
    vocab, vid = cfg.text_config.vocab_size, cfg.video_token_id
    model = model_of(engine)
    assert type(model).__name__ == ARCH and model.is_multimodal_pruning_enabled

    for retention in (1.0, 0.25):
        out = engine.generate([request("a", retention)], sampling(8))[0]
        t, h, w = grid("a")
        want = aot.budget(retention, t, h * w)
        assert video_tokens(out, vid) == want
        assert [v["kept"] for v in model.aot_last["videos"]] == [want]
        ref, last, _ = reference("a", retention)
        assert last["tokens_out"] == want
        got = first_logprobs(out, vocab)
        assert torch.allclose(got, ref, atol=2e-4), (got - ref).abs().max()
        GREEDY[retention] = list(out.outputs[0].token_ids)
        if retention == 1.0:  # and the unpatched model
            plain, _, _ = reference("a", None)
            assert torch.allclose(got, plain, atol=2e-4)
        else:  # the engine's default retention (from the overrides) gives the same as asking for it
            again = engine.generate([request("a")], sampling(8))[0]
            assert list(again.outputs[0].token_ids) == GREEDY[0.25]

    # concurrent requests: different videos (sizes, lengths), different retentions, one with the server's
    # default in the same batch, and one prompt holding two videos (positions continue across both)
    cases = (("a", 0.5), ("b", 0.3), ("b", None), ("b+a", 0.4))
    outs = engine.generate([request(n, r) for n, r in cases], sampling(1))
    for out, (name, retention) in zip(outs, cases):
        r = 0.25 if retention is None else retention
        assert video_tokens(out, vid) == sum(aot.budget(r, t, h * w) for t, h, w in map(grid, name.split("+")))
        ref, _, _ = reference(name, r)
        got = first_logprobs(out, vocab)
        assert torch.allclose(got, ref, atol=2e-4), (name, retention, (got - ref).abs().max())

    # the scores the vLLM hooks computed equal the transformers adapter's hooks on the same weights
    from aot.models import qwen2_5_vl as adapter

    engine.generate([request("b", 0.35)], sampling(1))  # a retention not asked before: no encoder-cache hit
    assert [v["grid"] for v in model.aot_last["videos"]] == [grid("b")]
    got = model.aot_last["videos"][0]["scores"]
    hf = tiny.load_qwen(ckpt)
    _, _, inputs = reference("b", 0.3)
    rec = tiny.adapter_scores(hf, inputs)
    for key, mine in zip(rec, got):
        theirs = adapter._to_llm_grid(rec[key], inputs["video_grid_thw"], hf.model.visual)[0]
        assert mine.shape == theirs.shape == (grid("b")[0], grid("b")[1] * grid("b")[2])
        assert torch.allclose(mine, theirs, atol=1e-6), (mine - theirs).abs().max()
    assert not torch.allclose(got[0], got[1])  # two different blocks


def test_prefix_cache(engine, ckpt):
    """The same request twice hits the prefix cache and decodes the same; a different video of the same
    size (same prompt token ids) does not hit it; a hit that ends inside the video's run decodes as the
    same request without a cache."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(ckpt)
    prefix_cache.check_prefix_cache(engine, request, cfg.video_token_id)
    # retention 1.0: 64 pads from index 2, so the shared 32-token blocks end inside them
    prefix_cache.check_hit_inside_run(engine, lambda prompt: request("a", 1.0, prompt), cfg.vision_end_token_id)


def test_chunked_prefill_without_prefix_cache(engine, reference, ckpt):
    """A token budget of 16 splits every video across prefill steps; greedy output and first-token
    log-probabilities stay those of the unchunked engine and of the transformers adapter."""
    assert GREEDY, "runs after test_budget_logits_and_concurrency"
    del engine  # the module engine stays idle; this one is the only one working
    llm = make_engine(ckpt, enable_prefix_caching=False, enable_chunked_prefill=True, max_num_batched_tokens=16)
    try:
        assert llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens == 16
        vocab = llm.llm_engine.model_config.hf_config.text_config.vocab_size
        outs = llm.generate([request("a", 1.0), request("a", 0.25)], sampling(8))
        for out, retention in zip(outs, (1.0, 0.25)):
            assert list(out.outputs[0].token_ids) == GREEDY[retention]
            ref, _, _ = reference("a", retention)
            assert torch.allclose(first_logprobs(out, vocab), ref, atol=2e-4)
    finally:
        del llm
        gc.collect()


def test_bad_override_is_one_clear_error(ckpt):
    """A bad aot override stops the engine at start-up with aot run's own message."""
    with pytest.raises(Exception) as info:
        make_engine(ckpt, retention=1.5)
    text = "".join(str(e) for e in _chain(info.value))
    assert "retention must be a number in (0.0, 1.0], got 1.5" in text
    with pytest.raises(ValueError, match="unknown aot override\\(s\\) 'retnetion'"):
        opts.parse_overrides({"method": "aot", "retnetion": 0.1})


def _chain(err):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__
