"""Tiny, randomly initialised LLaVA-OneVision models and a real processor for them, built offline.

The processor is transformers' own LlavaOnevisionProcessor (official video processor, needs
torchvision) around a small word-level tokenizer, so tests exercise the exact user path:
``processor(text=..., videos=frames, return_tensors="pt")`` then ``model.generate(**inputs)``.
"""

from __future__ import annotations

import functools
import math

import torch

WORDS = ("what is in the video describe it a an cat dog red blue green moves left right up down "
         "yes no one two three four and of to on with color where when how many").split()
BASE_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
SPECIAL = BASE_SPECIAL + ["<image>", "<video>"]
IMAGE = 28  # pixels: 7x7 patches of 4 -> pooled 4x4 = 16 tokens a frame ("onevision"), 3x3 ("llava-video")
PATCH = 4


@functools.lru_cache(maxsize=None)
def word_tokenizer(placeholders: tuple[str, ...]):
    """A word-level fast tokenizer over WORDS and punctuation, shared by the tiny models of every family.

    Ids: <pad> <unk> <s> </s>, then ``placeholders`` (the model family's image/video tokens, added as
    special tokens so they are split off before the words), then WORDS, then ``?.,!:0-9``. Pads left.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(BASE_SPECIAL + list(placeholders) + WORDS + list("?.,!:0123456789"))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # placeholders are special tokens (split off before this); words and punctuation are tokens
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=list(placeholders))
    fast.padding_side = "left"
    return fast


def tokenizer():
    return word_tokenizer(tuple(SPECIAL[len(BASE_SPECIAL):]))


def processor():
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    tok = tokenizer()
    size = {"height": IMAGE, "width": IMAGE}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[IMAGE, IMAGE]]),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok, num_image_tokens=(IMAGE // PATCH) ** 2, vision_feature_select_strategy="full")


def config(layers: int = 6, text_layers: int = 2, hidden: int = 64):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    tok = tokenizer()
    text = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                       initializer_range=0.2)  # large random weights: greedy outputs vary with the input
    vision = SiglipVisionConfig(image_size=IMAGE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=layers, num_attention_heads=2)
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-2,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[IMAGE, IMAGE]], tie_word_embeddings=False)


def model(seed: int = 0, **kw):
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    m = LlavaOnevisionForConditionalGeneration(config(**kw)).eval()
    with torch.no_grad():  # a random newline of the same scale as the features (the init leaves it ~N(0, 1))
        m.model.image_newline.normal_()
    m.generation_config.pad_token_id = tokenizer().pad_token_id
    m.generation_config.eos_token_id = None  # random weights: never stop early, so lengths are fixed
    return m


def frames(n: int = 8, seed: int = 0, size: int = 40):
    """n uint8 RGB frames (n, size, size, 3) of a smooth moving pattern plus noise (not constant)."""
    return moving_frames(n, seed, size, size)


def moving_frames(n: int, seed: int, height: int, width: int):
    """n uint8 RGB frames (n, height, width, 3) of a smooth moving pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    out = []
    for t in range(n):
        base = torch.stack([(xx + 3 * t) % width, (yy + 2 * t) % height, (xx + yy + t) % width], -1).float()
        out.append((base * (255.0 / max(height, width)) + 20 * torch.rand(height, width, 3, generator=g)).clamp(0, 255))
    return torch.stack(out).to(torch.uint8).numpy()


# --- what the patched-model tests of every family share -------------------------------------------

class LMInputs:
    """Captures what a VLM's language model receives (inputs_embeds, position_ids, attention_mask) on each call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("inputs_embeds", "position_ids", "attention_mask")})

    def remove(self):
        self.handle.remove()


def greedy_without_cache(model, inp: dict, steps: int, extra=lambda ids: {}) -> torch.Tensor:
    """Greedy decoding by hand, the whole prompt (and its video) through ``model(...)`` at every step
    with no cache; the video/image placeholder ids suppressed as in the ``generate`` it is compared
    with. ``extra(ids)``: the model's other inputs for the current ids. Returns (B, L + steps) ids."""
    special = [model.config.video_token_id, model.config.image_token_id]  # a random LM may emit them
    ids, mask = inp["input_ids"], inp["attention_mask"]
    for _ in range(steps):
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, pixel_values_videos=inp["pixel_values_videos"],
                        use_cache=False, **extra(ids))
        logits = out.logits[:, -1]
        logits[:, special] = -math.inf
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def assert_offloaded_equals_plain(plain, hooked, inp: dict, config, **patch_kwargs) -> None:
    """``hooked`` (the same weights loaded with accelerate's disk offload of the language model) patched
    like ``plain`` keeps its offload hook and gives the same logits and generated tokens."""
    import aot

    assert hasattr(hooked.model.language_model, "_hf_hook")
    aot.patch(plain, config, **patch_kwargs)
    aot.patch(hooked, config, **patch_kwargs)
    assert hasattr(hooked.model.language_model, "_hf_hook")  # the offload hook is still in place
    with torch.no_grad():
        a, b = plain(**inp).logits, hooked(**inp).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(plain.generate(**inp, max_new_tokens=3, do_sample=False),
                       hooked.generate(**inp, max_new_tokens=3, do_sample=False))
