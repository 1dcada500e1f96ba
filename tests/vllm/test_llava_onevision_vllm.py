"""AOT in vLLM's LLaVA-OneVision against the transformers adapter on the same tiny random checkpoint.

Engine starts: one per retention (1.0, 0.25; the retention is the server's), one refused at start-up.
"""

from __future__ import annotations

import gc

import pytest
import torch

import tiny

import aot

ARCH = "AotLlavaOnevisionForConditionalGeneration"
LAYERS = dict(local_layer=1, global_layer=-2)  # the tiny tower has 6 layers; vLLM builds 5 (feature layer -2)
VIDEO = tiny.llava_video(8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny.save_llava(tmp_path_factory.mktemp("llava_ov"))


def engine(ckpt, retention, engine_kw=None, **aot_extra):
    from vllm import LLM

    over = {"architectures": [ARCH], "aot": {"method": "aot", "retention": retention, **LAYERS, **aot_extra}}
    return LLM(model=str(ckpt), hf_overrides=over, dtype="float32", max_model_len=1024, enforce_eager=True,
               max_num_seqs=2, limit_mm_per_prompt={"video": 1}, max_logprobs=-1, seed=0, gpu_memory_utilization=0.1,
               **(engine_kw or {}))


GREEDY = {}


def reference(ckpt, retention):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(ckpt)
    inputs = proc(text=tiny.LLAVA_PROMPT, videos=[VIDEO], return_tensors="pt")
    with torch.no_grad():
        plain = model(**inputs).logits[0, -1]
        aot.patch(model, aot.AOTConfig(retention=retention), **LAYERS)
        logits = model(**inputs).logits[0, -1]
    return torch.log_softmax(logits.float(), -1), torch.log_softmax(plain.float(), -1), model._aot.last


@pytest.mark.parametrize("retention", [1.0, 0.25])
def test_logits_and_budget_match_transformers(ckpt, retention):
    from vllm import SamplingParams

    ref, plain, last = reference(ckpt, retention)
    llm = engine(ckpt, retention)
    try:
        cfg = llm.llm_engine.model_config.hf_config
        out = llm.generate({"prompt": tiny.LLAVA_PROMPT, "multi_modal_data": {"video": VIDEO}},
                           SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1))[0]
        model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        n = 16  # 28 px / 4 px patches = 7 -> bilinear 4x4
        want = aot.budget(retention, 8, n)
        assert sum(t == cfg.video_token_index for t in out.prompt_token_ids) == want + 1  # + the newline
        assert [v["kept"] for v in model.aot_last["videos"]] == [want] == [last["tokens_out"]]
        vocab = cfg.text_config.vocab_size
        lp = out.outputs[0].logprobs[0]
        got = torch.tensor([lp[i].logprob for i in range(vocab)])
        assert torch.allclose(got, ref, atol=2e-4), (got - ref).abs().max()
        if retention == 1.0:
            assert torch.allclose(got, plain, atol=2e-4)
        else:
            assert not torch.allclose(got, plain, atol=1e-3)  # compression changed the answer's distribution
        GREEDY[retention] = list(llm.generate({"prompt": tiny.LLAVA_PROMPT, "multi_modal_data": {"video": VIDEO}},
                                              SamplingParams(max_tokens=8, temperature=0.0))[0].outputs[0].token_ids)
    finally:
        del llm
        gc.collect()


def test_chunked_prefill_keeps_greedy_output(ckpt):
    """16-token prefill steps split the 33 video tokens (32 kept + newline); prefix caching off."""
    from vllm import SamplingParams

    assert 0.25 in GREEDY, "runs after test_logits_and_budget_match_transformers"
    llm = engine(ckpt, 0.25, dict(enable_chunked_prefill=True, max_num_batched_tokens=16, enable_prefix_caching=False))
    try:
        assert llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens == 16
        out = llm.generate({"prompt": tiny.LLAVA_PROMPT, "multi_modal_data": {"video": VIDEO}},
                           SamplingParams(max_tokens=8, temperature=0.0))[0]
        assert list(out.outputs[0].token_ids) == GREEDY[0.25]
    finally:
        del llm
        gc.collect()


def test_layer_vllm_did_not_build_is_refused(ckpt):
    with pytest.raises(Exception) as info:
        engine(ckpt, 0.25, local_layer=5)
    text = ""
    err = info.value
    while err is not None:
        text += str(err)
        err = err.__cause__ or err.__context__
    assert "local_layer=5 is layer 5 of 6; vLLM builds the tower only up to vision_feature_layer (5 layers)" in text
