"""The prefix-cache check shared by the Qwen engine tests (an engine with prefix caching on, small blocks)."""

from __future__ import annotations

import torch

# the engines' block_size (the CPU attention takes multiples of 32): with vLLM's CPU default, 128, no block
# of these tiny prompts would ever be full, so nothing could be cached
BLOCK = 32


def check_prefix_cache(llm, request, video_token_id: int) -> None:
    """``request(name, retention)`` for the videos "a" and "c" (same size and length, other pixels), at a
    retention no other test asks for: the first request caches nothing; the same request again gives the
    same greedy tokens and first-token log-probabilities and hits every full block before its last token;
    video "c" has the same prompt token ids as "a" (same placeholder count) but must not hit "a"'s blocks
    (vLLM's multimodal hash; the video's first block holds placeholders)."""
    from vllm import SamplingParams

    sp = SamplingParams(max_tokens=8, temperature=0.0, logprobs=4)
    retention = 0.45
    (first,) = llm.generate([request("a", retention)], sp)
    (again,) = llm.generate([request("a", retention)], sp)
    (other,) = llm.generate([request("c", retention)], sp)
    n = len(first.prompt_token_ids)
    assert first.num_cached_tokens == 0, first.num_cached_tokens
    assert again.prompt_token_ids == first.prompt_token_ids
    assert again.num_cached_tokens == (n - 1) // BLOCK * BLOCK > 0, (again.num_cached_tokens, n)
    assert list(again.outputs[0].token_ids) == list(first.outputs[0].token_ids)
    lp_first, lp_again = first.outputs[0].logprobs[0], again.outputs[0].logprobs[0]
    token = first.outputs[0].token_ids[0]
    assert torch.isclose(torch.tensor(lp_again[token].logprob), torch.tensor(lp_first[token].logprob), atol=2e-4)
    first_video = first.prompt_token_ids.index(video_token_id)
    assert first_video < BLOCK  # so "a"'s first block already depends on the video
    assert other.prompt_token_ids == first.prompt_token_ids and other.num_cached_tokens == 0, other.num_cached_tokens


def check_hit_inside_run(llm, request, vision_end_id: int) -> None:
    """``request(prompt)``: video "a" with another question after it. After the usual prompt has run, the
    other question shares the blocks up to the video's end, so its cache hit ends inside the video's run:
    the rest of the run is placed from ``num_computed_tokens`` > 0 (rows past the run's first). Its greedy
    tokens and first-token log-probabilities equal those of the same request with the cache emptied."""
    from vllm import SamplingParams

    sp = SamplingParams(max_tokens=8, temperature=0.0, logprobs=4)
    usual = "<s><|vision_start|><|video_pad|><|vision_end|> what is in the video ?</s><s>"
    other = "<s><|vision_start|><|video_pad|><|vision_end|> describe the video ?</s><s>"
    llm.generate([request(usual)], sp)
    (hit,) = llm.generate([request(other)], sp)
    assert llm.reset_prefix_cache()
    (cold,) = llm.generate([request(other)], sp)
    run_end = len(hit.prompt_token_ids) - 1 - hit.prompt_token_ids[::-1].index(vision_end_id)  # the template's
    assert cold.num_cached_tokens == 0 and 0 < hit.num_cached_tokens < run_end - 1, (hit.num_cached_tokens, run_end)
    assert list(hit.outputs[0].token_ids) == list(cold.outputs[0].token_ids)
    token = cold.outputs[0].token_ids[0]
    assert abs(hit.outputs[0].logprobs[0][token].logprob - cold.outputs[0].logprobs[0][token].logprob) < 2e-4
