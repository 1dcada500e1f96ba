"""FastV / PDrop on Qwen2.5-VL through aot.patch: prefill time and the pruner's own cost, on a CPU.

No Qwen2.5-VL weights are available here, so the model is randomly initialised: a text decoder
with Qwen2.5-VL's attention geometry (head_dim 128, M-RoPE sections 16/24/24, grouped k/v heads)
at a reduced size (12 layers, width 512, 4 heads, 2 k/v heads, MLP 1536) and a tiny vision tower
(4-px patches) that yields ``--slices`` x 64 video tokens (8x8 merged cells a slice). One prompt:
the video, then a short question. Times are ``model(**inputs)`` (tower + decoder, no grad), median
of ``--reps``, one thread; "prune + score" is what the pruner spends (``model._aot.last``).
PDrop's stages sit at layers 3/6/9 of 12 (8/16/24 of 28, scaled).

    python benchmarks/qwen_inllm_prefill.py [--slices 16] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(vocab_size=64, hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                bos_token_id=0, eos_token_id=1, pad_token_id=2,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=16, out_hidden_size=512, fullatt_block_indexes=[1])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=60, video_token_id=61,
                           vision_start_token_id=62, vision_end_token_id=63)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def prompt(model, slices: int) -> dict:
    cfg = model.config
    t, h, w = slices, 16, 16  # 16x16 patches a slice -> 8x8 = 64 LLM tokens
    n_vis = t * h * w // 4
    ids = torch.tensor([[cfg.vision_start_token_id] + [cfg.video_token_id] * n_vis + [cfg.vision_end_token_id]
                        + list(range(10, 22))])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                mm_token_type_ids=2 * (ids == cfg.video_token_id).int(),
                pixel_values_videos=torch.randn(t * h * w, 3 * 2 * 4 * 4),
                video_grid_thw=torch.tensor([[t, h, w]]), second_per_grid_ts=torch.tensor([0.5]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import aot
    import aot.methods

    model = build()
    inp = prompt(model, args.slices)
    n_vis = int((inp["input_ids"] == model.config.video_token_id).sum())

    def prefill() -> float:
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            with torch.no_grad():
                model(**inp)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    prefill()  # warm-up
    rows = [("unpatched", None),
            ("fastv retention=0.5", aot.methods.get("fastv").config(retention=0.5)),
            ("fastv retention=0.2", aot.methods.get("fastv").config(retention=0.2)),
            ("pdrop retention=0.5, layers 3/6/9", aot.methods.get("pdrop").config(retention=0.5, layers=(3, 6, 9)))]
    print(f"prompt {inp['input_ids'].shape[1]} tokens, {n_vis} video tokens, 12 layers, 1 thread\n")
    print("| method | video tokens by layer | prefill (s) | prune + score (s) |")
    print("|---|---|---:|---:|")
    base = None
    for name, config in rows:
        if config is not None:
            aot.patch(model, config)
        sec = prefill()
        base = base or sec
        last = model._aot.last if config is not None else {}
        sched = ", ".join([f"{n_vis} from 0"] + [f"{k} from {layer}" for layer, k in last.get("schedule", [])])
        cost = last.get("times", {}).get("compress", 0.0)
        print(f"| {name} | {sched} | {sec:.3f} ({sec / base:.2f}x) | {cost:.4f} |")
        if config is not None:
            aot.unpatch(model)


if __name__ == "__main__":
    main()
