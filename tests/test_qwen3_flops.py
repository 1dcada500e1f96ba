"""``aot flops`` on Qwen3-VL / Qwen3.5 config.json files (dense, MoE, hybrid linear attention).

Independent answers: the numbers of transformers' own default configs (to_dict, as saved in a
config.json), and Eq. 17 / 18 written out here layer by layer."""

from __future__ import annotations

import json

import pytest

from aot import flops


def cfg(name):
    import transformers

    return getattr(transformers, name)().to_dict()


def eq17(n, d, m):
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def test_qwen3_vl_dense_llm_and_tower():
    c = cfg("Qwen3VLConfig")
    spec = flops.spec_from_config(c)
    t = c["text_config"]
    assert (spec.llm.layers, spec.llm.hidden, spec.llm.ffn) == (t["num_hidden_layers"], t["hidden_size"],
                                                                 t["intermediate_size"])
    assert not spec.llm.linear and not spec.llm.ffns
    v = c["vision_config"]
    grid = 448 // v["patch_size"]  # 28 x 28 patches a temporal slice
    assert spec.tokens_per_frame == grid * grid // 8  # 2x2 merger, 2 frames a slice
    cat = 4 * v["hidden_size"]
    tower = v["depth"] * eq17(grid * grid, v["hidden_size"], v["intermediate_size"])
    mergers = 1 + len(v["deepstack_visual_indexes"])  # the main merger and one per DeepStack level
    proj = mergers * (2 * grid * grid // 4 * cat * cat + 2 * grid * grid // 4 * cat * v["out_hidden_size"])
    assert flops.vision_flops(spec.vision, 32) == 16 * (tower + proj)
    assert flops.prefill_flops(spec.llm, 500) == t["num_hidden_layers"] * eq17(500, t["hidden_size"],
                                                                               t["intermediate_size"])


def test_qwen3_vl_moe_counts_the_experts_a_token_runs_through():
    c = cfg("Qwen3VLMoeConfig")
    t = c["text_config"]
    spec = flops.spec_from_config(c).llm
    assert spec.ffn == t["num_experts_per_tok"] * t["moe_intermediate_size"]
    assert flops.prefill_flops(spec, 300) == t["num_hidden_layers"] * eq17(300, t["hidden_size"], spec.ffn)
    t = dict(t, mlp_only_layers=[0, 5])  # two dense layers
    mixed = flops.spec_from_config({"text_config": t}).llm
    want = sum(eq17(300, t["hidden_size"], t["intermediate_size"] if i in (0, 5) else spec.ffn)
               for i in range(t["num_hidden_layers"]))
    assert flops.prefill_flops(mixed, 300) == want


@pytest.mark.parametrize("name", ["Qwen3_5Config", "Qwen3_5MoeConfig"])
def test_qwen3_5_hybrid_layers(name):
    c = cfg(name)
    t = c["text_config"]
    spec = flops.spec_from_config(c).llm
    linear = [i for i, k in enumerate(t["layer_types"]) if k == "linear_attention"]
    assert spec.linear == tuple(linear) and len(linear) == 3 * t["num_hidden_layers"] // 4
    state = 6 * t["linear_num_value_heads"] * t["linear_key_head_dim"] * t["linear_value_head_dim"]
    m = (t["num_experts_per_tok"] * t["moe_intermediate_size"] + t["shared_expert_intermediate_size"]
         if "Moe" in name else t["intermediate_size"])
    d, n = t["hidden_size"], 700
    want = sum(4 * n * d * d + 2 * n * d * m + n * state if i in linear else eq17(n, d, m)
               for i in range(t["num_hidden_layers"]))
    assert flops.prefill_flops(spec, n) == want
    r = 5
    want_dec = sum(r * (4 * d * d + 2 * d * m) + (r * state if i in linear else 2 * r * d * n + d * r * (r + 1))
                   for i in range(t["num_hidden_layers"]))
    assert flops.decode_flops(spec, n, r) == want_dec
    # the state costs a token a fixed 6 h dk dv, full attention 2 n d: cheaper only for long prompts
    long = 20000
    assert flops.prefill_flops(spec, long) < t["num_hidden_layers"] * eq17(long, d, m)


def test_aot_flops_cli_reads_a_qwen3_5_config(tmp_path, capsys):
    from aot.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg("Qwen3_5MoeConfig")))
    assert main(["flops", "--config", str(path), "--frames", "16", "--tokens-per-frame", "98"]) == 0
    out = capsys.readouterr().out
    assert "16 frames x 98 tokens" in out and "| 100% | 1568 |" in out
