"""A tiny random Qwen2.5-VL checkpoint saved to a folder, with its tokenizer and processor (offline).

The same tokenizer, processor and vision tower as tests/hf_tiny_qwen.py, with a text model vLLM's CPU
paged attention accepts (head size 64: hidden 128, 2 heads; M-RoPE sections 8/12/12 of 32 pairs).
"""

from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: hf_tiny, hf_tiny_qwen

import hf_tiny_qwen as hq  # noqa: E402

PROMPT = "<s><|vision_start|><|video_pad|><|vision_end|> what is in the video ?</s><s>"


def qwen_config(depth: int = 4, fullatt=(1, 3)):
    cfg = hq.config(depth=depth, fullatt=fullatt, hidden=128)
    text = cfg.text_config
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 2, 64
    text.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}
    cfg.vision_config.tokens_per_second = 2  # as the real checkpoints: t step = 2 * seconds per slice
    return cfg


def save_qwen(folder, seed: int = 0) -> pathlib.Path:
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = pathlib.Path(folder)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(qwen_config()).eval()
    model.generation_config.pad_token_id = hq.tokenizer().pad_token_id
    model.save_pretrained(folder)
    proc = hq.processor()
    proc.save_pretrained(folder)
    return folder


def load_qwen(folder):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def video(n: int = 8, seed: int = 0, height: int = 32, width: int = 32):
    return hq.frames(n, seed, height, width)
