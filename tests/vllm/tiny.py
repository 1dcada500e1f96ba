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


def adapter_scores(hf, inputs) -> dict:
    """The transformers adapter's per-patch scores of both default score blocks, all heads, on ``hf``
    (a loaded Qwen2.5-VL) and processor ``inputs``: {"local": (T,), "global": (T,)} in the tower's
    window order (``qwen2_5_vl._to_llm_grid`` maps them to the LLM grid)."""
    from aot.models import qwen2_5_vl as adapter

    rec = {"local": [], "global": []}
    layers = adapter.default_layers(hf.config.vision_config)
    handles = [hf.model.visual.blocks[layer].attn.register_forward_pre_hook(
        adapter.score_hook(rec[key], 256, {}), with_kwargs=True) for key, layer in zip(rec, layers)]
    try:
        with torch.no_grad():
            hf.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    finally:
        for hnd in handles:
            hnd.remove()
    return {key: r[0] for key, r in rec.items()}


def video(n: int = 8, seed: int = 0, height: int = 32, width: int = 32):
    return hq.frames(n, seed, height, width)


def save_llava(folder, seed: int = 0) -> pathlib.Path:
    """Tiny random LLaVA-OneVision (tests/hf_tiny.py's tower and processor; text head size 64)."""
    import hf_tiny as ht
    from transformers import LlavaOnevisionForConditionalGeneration

    folder = pathlib.Path(folder)
    cfg = ht.config(hidden=128)
    cfg.text_config.num_attention_heads, cfg.text_config.num_key_value_heads = 2, 2
    cfg.text_config.head_dim = 64
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    model.save_pretrained(folder)
    # transformers 5.19 writes the tower as "vision_tower.encoder...", the hub checkpoints (and vLLM 0.32's
    # weight mapper) have "vision_tower.vision_model.encoder...": write the hub's names
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(path)
    save_file({(k.replace("vision_tower.", "vision_tower.vision_model.", 1)
                if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") else k): v
               for k, v in weights.items()}, path, metadata={"format": "pt"})
    ht.processor().save_pretrained(folder)
    return folder


LLAVA_PROMPT = "<s><video> what is in the video ?</s><s>"


def llava_video(n: int = 8, seed: int = 0):
    import hf_tiny as ht

    return ht.moving_frames(n, seed, ht.IMAGE, ht.IMAGE)
