"""The plugin's pure pieces, without an engine: registration, version gate, overrides, position columns."""

from __future__ import annotations

import pytest
import torch

import tiny

import aot
from aot.serving import options as opts


def test_register_is_idempotent_and_adds_names_only():
    from vllm import ModelRegistry

    from aot.serving import plugin

    before = set(ModelRegistry.get_supported_archs())
    plugin.register()
    plugin.register()
    after = set(ModelRegistry.get_supported_archs())
    assert set(plugin.ARCHITECTURES) <= after
    assert before - after == set()  # nothing removed, stock names untouched
    assert after - before <= set(plugin.ARCHITECTURES)


def test_untested_vllm_is_refused(monkeypatch):
    monkeypatch.delenv("AOT_VLLM_UNTESTED", raising=False)
    opts.check_vllm_version("0.32.0+cpu")
    with pytest.raises(RuntimeError, match="tested with vLLM 0.32.0, not 0.33.1"):
        opts.check_vllm_version("0.33.1")
    monkeypatch.setenv("AOT_VLLM_UNTESTED", "1")
    opts.check_vllm_version("0.33.1")


def test_overrides_give_aot_runs_messages():
    import argparse

    from aot.cli import method_config_from_args

    for bad, flags in (({"method": "aot", "lam_intra": -1.0}, dict(method="aot", lam_intra=-1.0)),
                       ({"method": "aot-paper", "lam_intra": 0.1}, dict(method="aot-paper", lam_intra=0.1)),
                       ({"method": "visionzp"}, dict(method="visionzp"))):
        with pytest.raises(ValueError) as ours:
            opts.parse_overrides(bad)
        with pytest.raises(ValueError) as cli:
            method_config_from_args(argparse.Namespace(**flags))
        assert str(ours.value) == str(cli.value)
    with pytest.raises(ValueError, match="prunes inside the language model"):
        opts.parse_overrides({"method": "fastv"})
    o = opts.parse_overrides({"method": "aot", "retention": 0.2, "windows": [2, 2], "global_layer": 3})
    assert o.config == aot.AOTConfig(retention=0.2, windows=(2, 2)) and o.global_layer == 3
    assert opts.video_budget(opts.with_retention(o, 0.15), 4, 20) == aot.budget(0.15, 4, 20) == 12


@pytest.mark.parametrize("hw", [(32, 32), (48, 32)])
def test_position_columns_reproduce_transformers_rope_index(hw):
    """Every kept token's (t, h, w) + start and the text after the video equal get_rope_index's positions
    of the uncompressed prompt at the same columns (what the transformers adapter gathers)."""
    from transformers import AutoProcessor
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.video_utils import VideoMetadata

    import tempfile
    folder = tiny.save_qwen(tempfile.mkdtemp())
    proc = AutoProcessor.from_pretrained(folder)
    frames = tiny.video(6, height=hw[0], width=hw[1])
    md = VideoMetadata(total_num_frames=6, fps=1.5, width=hw[1], height=hw[0], duration=4.0, frames_indices=list(range(6)))
    inputs = proc(text=tiny.PROMPT, videos=[frames], video_metadata=[md], return_tensors="pt")
    model = Qwen2_5_VLModel(tiny.qwen_config())
    ids = inputs["input_ids"]
    vid = model.config.video_token_id
    types_ = 2 * (ids == vid).int()
    full, _ = model.get_rope_index(ids, mm_token_type_ids=types_, video_grid_thw=inputs["video_grid_thw"],
                                   second_per_grid_ts=inputs["second_per_grid_ts"])
    t, h, w = (int(v) for v in inputs["video_grid_thw"][0])
    gh, gw = h // 2, w // 2
    start = int((ids[0] == vid).nonzero()[0])
    kept = torch.tensor(sorted(torch.randperm(t * gh * gw)[:7].tolist()))
    interval = model.config.vision_config.tokens_per_second * float(inputs["second_per_grid_ts"][0])
    cols = opts.qwen_position_columns(kept, (t, gh, gw), interval)
    base = int(full[0, 0, start - 1]) + 1
    assert torch.equal(cols[:, :3].T + base, full[:, 0, start + kept])
    after = start + t * gh * gw  # first text token after the video
    assert int(full[0, 0, after]) == base + int(cols[0, 3])
    assert interval != int(interval)  # fps 1.5: a fractional t step, truncated after the product


def test_aot_serve_checks_before_loading(tmp_path, capsys):
    """aot serve validates the config and the architecture from config.json alone, prints what it sets."""
    import json

    from aot.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlavaForConditionalGeneration"]}))
    assert main(["serve", str(tmp_path), "--dry-run"]) == 2
    assert "is a LlavaForConditionalGeneration; aot serve supports Qwen2_5_VLForConditionalGeneration" \
        in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    assert main(["serve", str(tmp_path), "--retention", "0", "--dry-run"]) == 2
    assert "retention must be a number in (0.0, 1.0], got 0.0" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--retention", "0.2", "--lam-intra", "0.5", "--port", "8123",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    command = out.strip().splitlines()[-1]
    assert "--video-pruning-rate 0.8" in command and "--port 8123" in command
    over = json.loads(command.split("--hf-overrides ")[1].split("' ")[0].strip("'"))
    assert over == {"architectures": ["AotQwen2_5_VLForConditionalGeneration"],
                    "aot": {"method": "aot", "retention": 0.2, "lam_intra": 0.5}}
    opts.parse_overrides(over["aot"])  # what the engine will parse


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_position_columns_survive_half_precision(dtype):
    cols = torch.tensor([[0, 0, 0, 4], [255, 256, 257, 30], [766, 41, 73, 41], [65535, 1, 2, 3]])
    enc = opts.encode_columns(cols, dtype)
    assert enc.dtype == dtype and enc.shape == (4, 8)
    assert torch.equal(opts.decode_columns(enc), cols)
    assert not torch.equal(cols.to(torch.bfloat16).long(), cols)  # what plain bfloat16 columns would lose
    with pytest.raises(ValueError, match="must lie in"):
        opts.encode_columns(torch.tensor([[65536]]), dtype)


def test_every_served_architecture_is_registered_and_subclasses_vllms_class(tmp_path, capsys):
    """aot serve accepts each checkpoint architecture of SERVED (config.json alone) and writes aot's name
    into the overrides; the plugin registers that name, and its class subclasses vLLM's own class for the
    checkpoint's architecture (MoE classes included)."""
    import importlib
    import json

    from vllm import ModelRegistry

    from aot.cli import main
    from aot.serving import plugin
    from aot.serving.serve import SERVED

    assert {"Qwen3VLMoeForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"} <= set(SERVED)
    plugin.register()
    for stock, ours in SERVED.items():
        (tmp_path / "config.json").write_text(json.dumps({"architectures": [stock]}))
        assert main(["serve", str(tmp_path), "--retention", "0.3", "--dry-run"]) == 0
        command = capsys.readouterr().out.strip().splitlines()[-1]
        over = json.loads(command.split("--hf-overrides ")[1].split("' ")[0].strip("'"))
        assert over["architectures"] == [ours] and over["aot"]["retention"] == 0.3
        module, name = plugin.ARCHITECTURES[ours].split(":")
        cls = getattr(importlib.import_module(module), name)
        assert cls.__name__ == ours and ours in ModelRegistry.get_supported_archs()
        assert issubclass(cls, ModelRegistry._try_load_model_cls(stock)), (ours, stock)
