"""Tiny, randomly initialised Qwen3-VL (dense and MoE) and Qwen3.5 (dense and MoE) models and a real
processor for them, built offline.

The processor is transformers' own Qwen3VLProcessor (Qwen3.5 checkpoints ship the same class) with
its official video processor (Qwen3VLVideoProcessor, needs torchvision) around a small word-level
tokenizer whose vocabulary holds what the processor writes before every temporal slice
(``<0.1 seconds>``: ``<``, digits, ``.``, ``seconds``, ``>``), so timestamps are real tokens.

Sizes: patches of 4 px, 2x2 merger, so a 32x32 frame pair is one temporal slice of 8x8 patches = 4x4
LLM tokens; 48x32 frames give 6x4. Qwen3-VL's tower: 4 blocks, DeepStack taps at blocks 1 and 2
(merged features added after text layers 0 and 1). Qwen3.5's text model: 4 layers, linear attention
(Gated DeltaNet, transformers' torch fallback) at layers 0-2 and full attention at layer 3.
"""

from __future__ import annotations

import functools

import torch

from hf_tiny import BASE_SPECIAL, WORDS, moving_frames

PLACEHOLDERS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
PATCH = 4
MERGE = 2
SIDE = 32
FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


@functools.lru_cache(maxsize=None)
def tokenizer():
    """Word-level fast tokenizer: <pad> <unk> <s> </s>, the vision placeholders, WORDS, ``seconds``,
    then ``?.,!:<>0-9`` (so ``<2.5 seconds>`` is 6 known tokens). Pads left."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(BASE_SPECIAL + PLACEHOLDERS + WORDS + ["seconds"] + list("?.,!:<>0123456789"))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", additional_special_tokens=PLACEHOLDERS)
    fast.padding_side = "left"
    return fast


def ids(token: str) -> int:
    return tokenizer().convert_tokens_to_ids(token)


CHAT_TEMPLATE = ("{% for m in messages %}<s>{% for c in m['content'] %}{% if c['type'] == 'video' %}"
                 "<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'text' %} {{ c['text'] }}"
                 "{% endif %}{% endfor %}</s>{% endfor %}{% if add_generation_prompt %}<s>{% endif %}")


def processor(chat_template: str | None = None):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image = Qwen2VLImageProcessor(min_pixels=16 * 16, max_pixels=64 * 64, patch_size=PATCH, temporal_patch_size=2,
                                  merge_size=MERGE)
    video = Qwen3VLVideoProcessor(size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64 * 64}, patch_size=PATCH,
                                  temporal_patch_size=2, merge_size=MERGE, do_sample_frames=False,
                                  cap_pixels_per_frame=False)
    return Qwen3VLProcessor(image_processor=image, video_processor=video, tokenizer=tokenizer(),
                            chat_template=chat_template)


def _text(hidden: int, layers: int) -> dict:
    tok = tokenizer()
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=4096,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                initializer_range=0.2)


def _vision(hidden: int, depth: int, deepstack) -> dict:
    v = dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
             spatial_merge_size=MERGE, temporal_patch_size=2, out_hidden_size=hidden, num_position_embeddings=16,
             initializer_range=0.2)
    if deepstack is not None:
        v["deepstack_visual_indexes"] = list(deepstack)
    return v


def _ids() -> dict:
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
                tie_word_embeddings=False)


def config(family: str = "qwen3_vl", depth: int = 4, deepstack=(1, 2), text_layers: int | None = None,
           hidden: int = 64):
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    if family.startswith("qwen3_vl"):
        text = {**_text(hidden, text_layers or 3), "rope_parameters": rope}
        if family == "qwen3_vl_moe":
            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden, decoder_sparse_step=1)
            cls = transformers.Qwen3VLMoeConfig
        else:
            cls = transformers.Qwen3VLConfig
        return cls(text_config=text, vision_config=_vision(hidden, depth, deepstack), **_ids())
    layers = text_layers or 4
    kinds = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    text = {**_text(hidden, layers), "layer_types": kinds, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 16,
            "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "rope_parameters": {**rope, "partial_rotary_factor": 1.0}}
    if family == "qwen3_5_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden,
                    shared_expert_intermediate_size=hidden)
        cls = transformers.Qwen3_5MoeConfig
    else:
        cls = transformers.Qwen3_5Config
    return cls(text_config=text, vision_config=_vision(hidden, depth, None), **_ids())


MODEL_CLASSES = {"qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
                 "qwen3_5": "Qwen3_5ForConditionalGeneration", "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}


def model(family: str = "qwen3_vl", seed: int = 0, **kw):
    import transformers

    torch.manual_seed(seed)
    m = getattr(transformers, MODEL_CLASSES[family])(config(family, **kw)).eval()
    m.generation_config.pad_token_id = tokenizer().pad_token_id
    m.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are fixed
    return m


def frames(n: int = 8, seed: int = 0, height: int = SIDE, width: int = SIDE):
    """n uint8 RGB frames (n, height, width, 3) of a smooth moving pattern plus noise."""
    return moving_frames(n, seed, height, width)


# --- a test-only merging method that returns its mix ------------------------------------------------

from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class NearestMergeConfig:
    retention: float = 0.25
    only_frames: tuple | None = None  # keep tokens from these frames only (None: any frame)


def nearest_merge(x, scores, *, local_scores=None, grid=None, config=NearestMergeConfig()):
    """Keep the R = budget(retention) top-score tokens (from ``only_frames`` if given), in flat order;
    every other token is averaged into the kept token nearest in flat index (the earlier on a tie),
    so a row is the mean of the tokens it absorbed. Returns an aot.Compressed with its mix."""
    import aot
    from aot.compress import Compressed, Mix, apply_mix, stack

    if x.dim() == 4:
        return stack([nearest_merge(x[i], scores[i], config=config) for i in range(x.shape[0])])
    f, n, _ = x.shape
    r = aot.budget(config.retention, f, n)
    s = scores.flatten().float().clone()
    if config.only_frames is not None:
        allowed = torch.zeros(f, dtype=torch.bool)
        allowed[list(config.only_frames)] = True
        s[~allowed.repeat_interleave(n)] = -1.0
    kept = s.topk(r).indices.sort().values  # (R,)
    flat = torch.arange(f * n)
    owner = (flat[:, None] - kept[None, :]).abs().argmin(1)  # (F*N,) row of the nearest kept token
    sizes = torch.bincount(owner, minlength=r)
    mix = Mix(owner, flat.clone(), 1.0 / sizes[owner].double() if x.dtype == torch.float64
              else 1.0 / sizes[owner].float())
    tokens = apply_mix(mix, x.reshape(f * n, -1), r)
    return Compressed(tokens, sizes, kept // n, kept, owner, torch.zeros(r, dtype=torch.bool), mix)


@contextmanager
def merge_method():
    """Registers ``nearest_merge`` as the method "nearest-merge" while the block runs."""
    from aot.methods import registry

    m = registry.Method("nearest-merge", nearest_merge, NearestMergeConfig, "test: merge into the nearest kept token")
    registry._REGISTRY[m.name] = m
    try:
        yield m
    finally:
        del registry._REGISTRY[m.name]
