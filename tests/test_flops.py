import argparse
import dataclasses
import json
import math

import pytest

import aot.methods

from aot.config import budget
from aot.flops import (PRESETS, LLMSpec, VisionSpec, add_flops_parser, decode_flops, get_spec,
                       layer_flops, prefill_flops, report, run_flops, spec_from_config, vision_flops)

TINY = LLMSpec(layers=2, hidden=4, ffn=8, name="tiny")
OV = PRESETS["llava-onevision-7b"]
VIDEO = PRESETS["llava-video-7b"]


def tera(flops: int) -> float:
    return round(flops / 1e12, 1)


# ---- hand-computed values ----------------------------------------------------------------------

def test_prefill_by_hand():
    # n=3, d=4, m=8: 4nd^2 = 4*3*16 = 192, 2n^2d = 2*9*4 = 72, 2ndm = 2*3*4*8 = 192 -> 456 a layer, x2 layers
    assert prefill_flops(TINY, 3) == 912
    assert prefill_flops(TINY, 0) == 0


def test_decode_by_hand_and_by_loop():
    # n=3, R=2: R(4d^2 + 2dm) = 2*(64 + 64) = 256, 2Rdn = 2*2*4*3 = 48, dR(R+1) = 4*2*3 = 24 -> 328 a layer
    assert decode_flops(TINY, 3, 2) == 656
    # independent: token t of R pays the linear layers and attends over n + t cached keys (2 d (n + t))
    n, r, d, m = 50, 7, TINY.hidden, TINY.ffn
    loop = sum(4 * d * d + 2 * d * m + 2 * d * (n + t) for t in range(1, r + 1)) * TINY.layers
    assert decode_flops(TINY, n, r) == loop
    assert decode_flops(TINY, n, 0) == 0


def test_vision_by_hand():
    # one layer, d=2, m=4, 4 tokens: 4*4*4 + 2*16*2 + 2*4*2*4 = 64 + 64 + 64 = 192 a forward;
    # projector on 4 / merge 2 = 2 tokens: 2*2*2*3 + 2*2*3*3 = 24 + 36 = 60; 3 frames / 2 a forward -> 2 forwards
    vis = VisionSpec(1, 2, 4, 4, ((2, 3), (3, 3)), merge=2, temporal_patch=2)
    assert vision_flops(vis, 3) == 2 * (192 + 60)
    assert vision_flops(vis, 2) == 192 + 60


# ---- the paper ---------------------------------------------------------------------------------

def test_eq17_matches_layer_sum():
    assert prefill_flops(OV.llm, 6272) == sum(layer_flops(6272, 3584, 18944) for _ in range(28))


@pytest.mark.parametrize("retention, paper", [(1.0, 40.8), (0.25, 8.7), (0.1, 3.4)])
def test_table1_exact_budget(retention, paper):
    # LLaVA-OV-7B, 32 frames x 196: the exact budget reproduces these rows
    assert tera(prefill_flops(OV.llm, budget(retention, 32, 196))) == paper


@pytest.mark.parametrize("retention, per_frame, ours, paper", [(0.2, 40, 6.9, 7.0), (0.15, 30, 5.1, 5.2)])
def test_table1_rows_that_use_per_frame_ceil(retention, per_frame, ours, paper):
    # The paper's 7.0 / 5.2 are one decimal above Eq. 17 at round(rho*F*N) = 1254 / 941 tokens; they
    # match ceil(rho * 196) tokens in each of the 32 frames (40 -> 1280, 30 -> 960).
    assert tera(prefill_flops(OV.llm, budget(retention, 32, 196))) == ours
    assert per_frame == math.ceil(retention * 196)
    assert tera(prefill_flops(OV.llm, 32 * per_frame)) == paper


def test_table2():
    # LLaVA-Video-7B, 64 frames x 169
    vanilla = prefill_flops(VIDEO.llm, 64 * 169)
    assert tera(vanilla) == 80.2
    # 15% row (9.3 T, 11.6%): exact budget 1622 gives 9.0 T; ceil(0.15 * 169) = 26 a frame gives 9.3
    assert tera(prefill_flops(VIDEO.llm, budget(0.15, 64, 169))) == 9.0
    assert tera(prefill_flops(VIDEO.llm, 64 * 26)) == 9.3
    assert round(100 * prefill_flops(VIDEO.llm, 64 * 26) / vanilla, 1) == 11.6
    # 25% row: the paper prints 9.3 T (the 15% row's figure) with ratio 18.9%; the exact budget gives
    # 15.6 T / 19.5%; 18.9% is what 41 tokens a frame (2624) gives.
    assert tera(prefill_flops(VIDEO.llm, budget(0.25, 64, 169))) == 15.6
    assert round(100 * prefill_flops(VIDEO.llm, 64 * 41) / vanilla, 1) == 18.9


def test_fastv_rows():
    # FastV (K=2, keep 20% after layer 2) in the same convention gives the tables' 9.3 T and 17.1 T
    def fastv(spec, n):
        return 2 * layer_flops(n, spec.hidden, spec.ffn) + (spec.layers - 2) * layer_flops(round(0.2 * n), spec.hidden, spec.ffn)
    assert tera(fastv(OV.llm, 6272)) == 9.3
    assert tera(fastv(VIDEO.llm, 10816)) == 17.1


def test_decode_share_about_two_percent():
    # Sec. 4.1: with R = 100 decoding is about 2% of the total
    share = decode_flops(OV.llm, 6272, 100) / (prefill_flops(OV.llm, 6272) + decode_flops(OV.llm, 6272, 100))
    assert 0.01 < share < 0.025


def test_siglip_tower_about_10_tera():
    tower = OV.vision.layers * layer_flops(729, 1152, 4304) * 32
    assert tera(tower) == 10.3  # 26 layers (10.25 T); all 27 would give 10.6
    assert tera(vision_flops(OV.vision, 32)) == 11.0  # plus the 2-layer projector on 729 tokens a frame


# ---- report --------------------------------------------------------------------------------------

def test_report_rows():
    rows = report("llava-onevision-7b")
    assert [r.visual_tokens for r in rows] == [6272, 1568, 1254, 941, 627]
    assert [round(r.llm_tflops, 1) for r in rows] == [40.8, 8.7, 6.9, 5.1, 3.4]
    for r in rows:
        assert r.total_tflops == pytest.approx(r.llm_tflops + r.vision_tflops)
        assert r.llm_share + r.vision_share + r.decode_share == pytest.approx(1.0)
        assert r.vision_tflops == rows[0].vision_tflops  # compression happens after the projector
    assert rows[0].vs_vanilla == 1.0
    assert rows[-1].vision_share > 0.7  # at 10% the tower is most of the remaining work


def test_report_text_decode_and_llm_only():
    row = report("llava-video-7b", retentions=(0.1,), text_tokens=20, decode_tokens=5)[0]
    n = budget(0.1, 64, 169) + 20
    assert row.llm_tflops == prefill_flops(VIDEO.llm, n) / 1e12
    assert row.decode_tflops == decode_flops(VIDEO.llm, n, 5) / 1e12
    bare = report(TINY, frames=2, tokens_per_frame=3, retentions=(1.0,))[0]
    assert bare.vision_tflops == 0 and bare.llm_tflops == prefill_flops(TINY, 6) / 1e12


def test_errors():
    with pytest.raises(ValueError, match="llava-onevision-7b"):
        get_spec("llava-video-0.5b")
    with pytest.raises(ValueError, match="pass both"):
        report(TINY)
    with pytest.raises(ValueError, match="retention"):
        report("llava-onevision-7b", retentions=(0.0,))
    with pytest.raises(ValueError, match="n_tokens"):
        prefill_flops(TINY, -1)


# ---- config.json ---------------------------------------------------------------------------------

def _llava_ov_config():
    return {"model_type": "llava_onevision",
            "text_config": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                              "num_hidden_layers": 26, "image_size": 384, "patch_size": 14}}


def _qwen25vl_config():
    return {"model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "out_hidden_size": 3584,
                              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}}


def test_config_llava_onevision(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_llava_ov_config()))
    spec = spec_from_config(path)
    assert spec.llm.layers == 28 and spec.llm.hidden == 3584 and spec.llm.ffn == 18944
    assert spec.vision == dataclasses.replace(OV.vision, name=spec.vision.name)
    assert (spec.frames, spec.tokens_per_frame) == (32, 196)
    assert report(spec)[0].total_tflops == report("llava-onevision-7b")[0].total_tflops


def test_config_qwen25vl(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_qwen25vl_config()))
    spec = spec_from_config(str(path))
    ref = PRESETS["qwen2.5-vl-7b"]
    assert (spec.llm.layers, spec.llm.hidden, spec.llm.ffn) == (28, 3584, 18944)
    assert vision_flops(spec.vision, 32) == vision_flops(ref.vision, 32)
    assert spec.tokens_per_frame == 128


def test_config_plain_llm_and_missing_key():
    spec = spec_from_config({"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2})
    assert spec.vision is None and prefill_flops(spec.llm, 3) == 912
    cfg = _llava_ov_config()
    del cfg["vision_config"]["patch_size"]
    with pytest.raises(KeyError, match="vision_config.'patch_size'"):
        spec_from_config(cfg)
    cfg = _qwen25vl_config()
    del cfg["intermediate_size"]
    with pytest.raises(KeyError, match="'intermediate_size'"):
        spec_from_config(cfg)


# ---- CLI -----------------------------------------------------------------------------------------

def _run(argv):
    parser = argparse.ArgumentParser(prog="aot")
    add_flops_parser(parser.add_subparsers(dest="command", required=True))
    return run_flops(parser.parse_args(["flops", *argv]))


def test_cli_table_and_json(capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert _run(["--retention", "1,0.1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| retention | visual tokens | LLM prefill TFLOPs" in text
    assert "| 100% | 6272 | 40.77 |" in text and "| 10% | 627 | 3.36 |" in text
    data = json.loads(out.read_text())
    assert data["frames"] == 32 and [r["visual_tokens"] for r in data["rows"]] == [6272, 627]


def test_cli_presets_config_and_errors(capsys, tmp_path):
    assert _run(["--model", "llava-video-7b", "--decode-tokens", "100"]) == 0
    text = capsys.readouterr().out
    assert "64 frames x 169" in text and "decode TFLOPs" in text and "| 100% | 10816 | 80.16 |" in text
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2}))
    assert _run(["--config", str(path)]) == 2
    assert "pass both" in capsys.readouterr().err
    assert _run(["--config", str(path), "--frames", "1", "--tokens-per-frame", "3"]) == 0
    capsys.readouterr()
    assert _run(["--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown model preset 'nope'" in err and "qwen2.5-vl-7b" in err
    assert _run(["--config", str(tmp_path / "missing.json")]) == 2


# --- in-LLM pruning (FastV, PDrop): a layer schedule ------------------------------------------

def _hand_layer(n, d=3584, m=18944):  # Qwen2-7B, written out: 4 n d^2 + 2 n^2 d + 2 n d m
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def test_schedule_prefill_flops_is_the_sum_over_layers():
    from aot.flops import LLMSpec, schedule_prefill_flops

    spec = LLMSpec(3, 8, 16)
    # layer over 10 tokens: 4*10*64 + 2*100*8 + 2*10*8*16 = 6720; over 4: 1024 + 256 + 1024 = 2304
    assert schedule_prefill_flops(spec, [10, 10, 4]) == 2 * 6720 + 2304
    with pytest.raises(ValueError, match="has 2 entries; llm has 3 layers"):
        schedule_prefill_flops(spec, [1, 2])


def test_fastv_reproduces_the_papers_row():
    """Table 1: FastV 9.3 T, 22.8% on LLaVA-OV-7B (32 x 196 = 6272 visual tokens): K = 2, R = 80%."""
    from aot.flops import inllm_report, inllm_tokens_per_layer, schedule_prefill_flops, PRESETS

    spec = PRESETS["llava-onevision-7b"].llm
    tokens = inllm_tokens_per_layer("fastv", aot.methods.get("fastv").config(retention=0.2), 6272, 28)
    assert tokens == [6272] * 2 + [1254] * 26  # budget(0.2, 1, 6272) = round(1254.4)
    f = schedule_prefill_flops(spec, tokens)
    assert f == 2 * _hand_layer(6272) + 26 * _hand_layer(1254)
    assert f"{f / 1e12:.1f}" == "9.3" and f"{f / (28 * _hand_layer(6272)):.1%}" == "22.8%"
    rows = {(r.method, r.config["retention"]): r for r in inllm_report("llava-onevision-7b")}
    assert rows["fastv", 0.2].llm_tflops == f / 1e12
    assert rows["fastv", 0.5].schedule == [(0, 6272), (2, 3136)]
    # Table 2: FastV 17.1 T on LLaVA-Video-7B (64 x 169 = 10816) with the same K and R
    lv = {(r.method, r.config["retention"]): r for r in inllm_report("llava-video-7b")}
    assert f"{lv['fastv', 0.2].llm_tflops:.1f}" == "17.1"


def test_pdrop_published_defaults_and_why_not_the_papers_row():
    from aot.flops import inllm_report

    row = [r for r in inllm_report("llava-onevision-7b") if r.method == "pdrop"][0]
    assert row.schedule == [(0, 6272), (8, 3136), (16, 1568), (24, 784)]
    want = 8 * (_hand_layer(6272) + _hand_layer(3136) + _hand_layer(1568)) + 4 * _hand_layer(784)
    assert row.llm_tflops == want / 1e12 and f"{want / 1e12:.1f}" == "20.0"
    # the paper's PDrop row (10.5 T) is below what its first 8 full layers alone cost: not reachable with 8/16/24
    assert 8 * _hand_layer(6272) / 1e12 > 11.6 > 10.5


def test_flops_cli_in_llm_rows(capsys):
    from aot.cli import main

    assert main(["flops", "--in-llm"]) == 0
    out = capsys.readouterr().out
    assert "| fastv | retention=0.2, k=2 | 6272 from 0, 1254 from 2 | 9.31 | 22.8% |" in out
    assert "| pdrop | retention=0.5, layers=(8, 16, 24) |" in out
