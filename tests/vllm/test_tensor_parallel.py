"""AOT in vLLM's Qwen2.5-VL with tensor parallelism 2 (two CPU worker processes, gloo), one engine start.

Each rank's tower holds one of the tiny tower's two heads, so a rank alone would rank the patches by its
own head and keep other tokens than its neighbour: the per-key scores must be summed across the ranks
(aot/serving/qwen_common.py, ``tensor_model_parallel_all_reduce``) before the selection. Checked here:
both ranks end with the same scores, equal to the transformers adapter's hooks (all heads) on the same
weights; placeholders = kept rows = ``aot.budget`` on each rank; first-token log-probabilities equal the
transformers adapter's at retention 0.25.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

import tiny
from test_qwen2_5_vl_vllm import (ckpt, first_logprobs, grid, make_engine, reference,  # noqa: F401 (fixtures)
                                  request, sampling, video_tokens)

import aot

TP = 2


def _skip_reason() -> str | None:
    if (os.cpu_count() or 1) < TP:
        return f"tensor parallelism {TP} needs {TP} CPUs for its worker processes, this machine has {os.cpu_count()}"
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "vLLM's CPU workers talk through torch.distributed's gloo backend, which this torch lacks"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def worker_state(model):
    """Runs inside each worker process (LLM.apply_model): what the last video batch did on that rank."""
    attn = model.visual.blocks[0].attn
    return {"heads": attn.num_attention_heads_per_partition,
            "videos": [{"kept": v["kept"], "grid": v["grid"], "scores": [s.clone() for s in v["scores"]]}
                       for v in model.aot_last["videos"]]}


@pytest.fixture(scope="module")
def tp_engine(ckpt):  # noqa: F811
    # vLLM's CPU executor binds each worker's OpenMP threads to its own NUMA node by default
    # (VLLM_CPU_OMP_THREADS_BIND=auto) and refuses to start 2 workers on a 1-node machine; "nobind" leaves
    # the threads to the OS
    old = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    llm = None
    try:
        llm = make_engine(ckpt, tensor_parallel_size=TP, distributed_executor_backend="mp",
                          enable_prefix_caching=False, enable_chunked_prefill=False, max_num_batched_tokens=1024)
        yield llm
    finally:
        if old is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = old
        del llm
        gc.collect()


def test_scores_reduced_across_ranks(tp_engine, reference, ckpt):  # noqa: F811
    from transformers import AutoConfig

    from aot.models import qwen2_5_vl as adapter

    cfg = AutoConfig.from_pretrained(ckpt)
    assert cfg.vision_config.num_heads % TP == 0
    vocab, vid = cfg.text_config.vocab_size, cfg.video_token_id
    retention = 0.25
    out = tp_engine.generate([request("a", retention)], sampling(1))[0]
    t, h, w = grid("a")
    want = aot.budget(retention, t, h * w)
    assert video_tokens(out, vid) == want

    ranks = tp_engine.apply_model(worker_state)
    assert len(ranks) == TP
    assert [r["heads"] for r in ranks] == [cfg.vision_config.num_heads // TP] * TP  # the heads are split
    for r in ranks:
        assert [v["kept"] for v in r["videos"]] == [want]
        assert [v["grid"] for v in r["videos"]] == [grid("a")]

    # the answer: the first token's log-probabilities are the transformers adapter's (float32)
    ref, last, inputs = reference("a", retention)
    assert last["tokens_out"] == want
    got = first_logprobs(out, vocab)
    assert torch.allclose(got, ref, atol=2e-4), (got - ref).abs().max()

    # the scores: the same on every rank, and those of all heads (the transformers adapter's hooks)
    hf = tiny.load_qwen(ckpt)
    rec = tiny.adapter_scores(hf, inputs)
    first, second = (r["videos"][0]["scores"] for r in ranks)
    for key, mine, other in zip(rec, first, second):
        theirs = adapter._to_llm_grid(rec[key], inputs["video_grid_thw"], hf.model.visual)[0]
        assert torch.allclose(mine, other, atol=1e-6), (key, (mine - other).abs().max())
        assert torch.allclose(mine, theirs, atol=1e-6), (key, (mine - theirs).abs().max())

