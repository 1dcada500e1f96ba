"""Tiny, randomly initialised Qwen2.5-VL models and a real processor for them, built offline.

The processor is transformers' own Qwen2_5_VLProcessor with its official video processor
(Qwen2VLVideoProcessor, needs torchvision) around a small word-level tokenizer (as tests/hf_tiny.py),
so tests exercise the user path: ``processor(text=..., videos=frames, return_tensors="pt")`` then
``model.generate(**inputs)``.

Sizes: patches of 4 px, 2x2 merger, windows of 16 px (2x2 merged cells), so a 32x32 frame pair is one
temporal slice of 8x8 patches = 4x4 LLM tokens in 4 windows; 48x32 frames give 6x4 (windows padded).
"""

from __future__ import annotations

import torch

from hf_tiny import BASE_SPECIAL, WORDS, moving_frames, word_tokenizer  # noqa: F401 (WORDS: public, as before)

SPECIAL = BASE_SPECIAL + ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
PATCH = 4
MERGE = 2
SIDE = 32  # default frame size in pixels -> 8x8 patches -> 4x4 merged tokens a temporal slice


def tokenizer():
    """The word-level tokenizer of tests/hf_tiny.py with Qwen2.5-VL's vision placeholders."""
    return word_tokenizer(tuple(SPECIAL[len(BASE_SPECIAL):]))


def ids(token: str) -> int:
    return tokenizer().convert_tokens_to_ids(token)


# A chat template of our own (real checkpoints ship Qwen's): every message's video block and text
# between <s> and </s>, and <s> again for the answer; only words the tiny tokenizer knows.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{% for c in m['content'] %}{% if c['type'] == 'video' %}"
                 "<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'text' %} {{ c['text'] }}"
                 "{% endif %}{% endfor %}</s>{% endfor %}{% if add_generation_prompt %}<s>{% endif %}")


def processor(chat_template: str | None = None):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = dict(min_pixels=16 * 16, max_pixels=64 * 64, patch_size=PATCH, temporal_patch_size=2,
                  merge_size=MERGE)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels, do_sample_frames=False, cap_pixels_per_frame=True),
        tokenizer=tokenizer(), chat_template=chat_template)


def config(depth: int = 4, fullatt=(1, 3), text_layers: int = 2, hidden: int = 64):
    from transformers import Qwen2_5_VLConfig

    tok = tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id, initializer_range=0.2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                  spatial_merge_size=MERGE, temporal_patch_size=2, window_size=16, out_hidden_size=hidden,
                  fullatt_block_indexes=list(fullatt), tokens_per_second=24, initializer_range=0.2)  # fps 24 (the processor default): t step 2
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                            video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                            vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)


def model(seed: int = 0, **kw):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    m = Qwen2_5_VLForConditionalGeneration(config(**kw)).eval()
    m.generation_config.pad_token_id = tokenizer().pad_token_id
    m.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are fixed
    return m


def frames(n: int = 8, seed: int = 0, height: int = SIDE, width: int = SIDE):
    """n uint8 RGB frames (n, height, width, 3) of a smooth moving pattern plus noise."""
    return moving_frames(n, seed, height, width)
