"""The efficiency protocol (aot.efficiency) and the output defects of issue 21 (item 5).

`aot run` / `aot eval` run the tiny LLaVA-OneVision checkpoint of tests/hf_tiny.py; the stand-in's
labelling is checked with ``aot.run.load`` monkeypatched to load that checkpoint under the stand-in's
name (the real stand-in takes about a minute to assemble).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torchvision")

import aot  # noqa: E402
import aot.run  # noqa: E402
import hf_tiny  # noqa: E402
from aot import efficiency  # noqa: E402
from aot.cli import build_parser, main  # noqa: E402
from aot.demo import sample_video  # noqa: E402
from aot.efficiency import STAGES, STANDIN_NOTE  # noqa: E402

STANDIN = aot.run.STANDIN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava-ov-eff")
    hf_tiny.model().save_pretrained(path)
    hf_tiny.processor().save_pretrained(path)
    return path


@pytest.fixture
def fake_standin(checkpoint, monkeypatch):
    """``--model aot:dinov2-smollm2`` loads the tiny checkpoint (same code path after the load)."""
    real = aot.run.load
    seen = []

    def load(model_id, **kw):
        seen.append(model_id)
        return real(str(checkpoint), **kw)

    monkeypatch.setattr(aot.run, "load", load)
    return seen


# ------------------------------------------------------------------------------ the protocol itself

def test_stage_names_order_and_ttft():
    t = efficiency.stage_times(decode=1, vision_tower=2, prefill=3, decoding=10, load=100)
    assert list(t) == list(STAGES)
    assert t["scores"] == 0.0 and t["vision tower"] == 2.0
    assert efficiency.ttft(t) == 1 + 2 + 3  # neither load nor decoding
    with pytest.raises(ValueError, match="unknown stage.*warmup"):
        efficiency.stage_times(warmup=1.0)


def test_model_stages_count_no_second_twice():
    lm = [0.5, 0.1, 0.2]
    pre = efficiency.model_stages({"times": {"vision": 0.3, "scores": 0.05, "compress": 0.02}}, lm)
    assert pre == pytest.approx({"vision tower": 0.3, "scores": 0.05, "compression": 0.02, "prefill": 0.5,
                                 "decoding": 0.3})
    # an in-LLM method prunes inside the prefill: the prefill call's time holds its compression
    inllm = efficiency.model_stages({"stage": "llm", "times": {"vision": 0.3, "compress": 0.02}}, lm)
    assert inllm["prefill"] == pytest.approx(0.48) and inllm["compression"] == pytest.approx(0.02)
    assert efficiency.model_stages(None, lm) == pytest.approx(
        {"vision tower": 0.0, "scores": 0.0, "compression": 0.0, "prefill": 0.5, "decoding": 0.3})


def test_newlines_and_the_one_printed_form():
    nl = efficiency.newline_tokens
    assert nl("llava_onevision", None, 129) == 1  # unpatched: transformers' layout, one newline
    assert nl("llava_onevision", {"tokens_out": 32}, 33) == 1
    assert nl("llava_onevision", {"tokens_out": 32}, 32 + 8 * 2) == 16  # LLaVA-Video grid newlines
    assert nl("llava_onevision", {"stage": "llm", "tokens_out": 40}, 40) == 0
    assert nl("qwen2_5_vl", None, 64) == 0 and nl("llava_onevision", None, 0) == 0
    assert efficiency.visual_tokens_text(627, 1) == "visual tokens 627 (+1 newline)"
    assert efficiency.visual_tokens_text(627, 1, 6272) == "visual tokens 6272 -> 627 (+1 newline)"
    assert efficiency.visual_tokens_text(32.0, 1.0) == "visual tokens 32 (+1 newline)"
    assert efficiency.visual_tokens_text(31.5, 0) == "visual tokens 31.5"
    assert efficiency.visual_tokens_text(40, 16) == "visual tokens 40 (+16 newlines)"


def test_peak_memory_on_cpu_sees_a_block_that_is_freed():
    """In a fresh process: in a long-lived one (the whole suite) malloc may serve the block from heap
    pages that are already resident, which raises no RSS at all, so nothing could see it there."""
    code = """
import json, numpy as np
from pathlib import Path
from aot import efficiency
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = rss()
with efficiency.PeakMemory("cpu") as pm:
    big = np.ones(300 * 2**20 // 8)  # 300 MiB touched, then freed inside the block
    big.sum()
    del big
print(json.dumps({"before": before, "peak": pm.bytes, "kind": pm.kind, "after": rss()}))
"""
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc/self/status")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kind"].startswith("peak RSS")
    assert got["peak"] >= got["before"] + 250 * 2**20
    assert got["after"] < got["peak"]  # freed: the peak is not the current size


# ------------------------------------------------------------------------------ aot run

def test_run_json_has_question_ttft_load_memory_and_split_newline(checkpoint, tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = main(["run", "--model", str(checkpoint), "--video", str(sample_video()), "--question", "what moves ?",
               "--frames", "8", "--retention", "0.25", "--layers", "1,-2", "--max-new-tokens", "3",
               "--json", str(out), "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out.read_text())
    assert res["question"] == "what moves ?" and "question: 'what moves ?'" in text
    assert list(res["times_s"]) == list(STAGES) and res["times_s"]["load"] > 0
    assert re.search(r"^\s+load\s+[\d.]+ ms", text, re.M)
    assert res["ttft_s"] == pytest.approx(sum(v for k, v in res["times_s"].items() if k not in ("load", "decoding")))
    assert res["efficiency"]["stages_s"] == res["times_s"] and res["efficiency"]["ttft_s"] == res["ttft_s"]
    assert res["peak_memory_bytes"] > 0 and res["memory_kind"].startswith("peak RSS")
    kept = aot.budget(0.25, 8, 16)
    assert (res["visual_tokens"], res["newline_tokens"]) == (kept, 1)
    assert res["visual_tokens"] + res["newline_tokens"] == res["llm_video_tokens"]
    assert f"visual tokens {8 * 16} -> {kept} (+1 newline)" in text
    assert res["standin"] is False and "stand-in" not in text and "note" not in res


def test_standin_labelled_in_run_and_eval(fake_standin, tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = main(["run", "--model", STANDIN, "--video", str(sample_video()), "--question", "what moves ?",
               "--frames", "8", "--retention", "0.25", "--layers", "1,-2", "--max-new-tokens", "2",
               "--json", str(out), "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert fake_standin == [STANDIN]
    res = json.loads(out.read_text())
    assert res["standin"] is True and res["note"] == STANDIN_NOTE
    assert STANDIN_NOTE in text and "meaningless by design" in text.split("answer:")[1].splitlines()[0]

    qs = tmp_path / "qa.jsonl"
    qs.write_text("".join(json.dumps({"id": f"q{i}", "video": str(sample_video()), "question": "what moves ?",
                                      "options": ["a cat", "a dog", "red"], "answer": "A"}) + "\n"
                          for i in range(2)))
    rc = main(["eval", "--questions", str(qs), "--model", STANDIN, "--methods", "aot", "--retention", "0.25",
               "--frames", "8", "--max-new-tokens", "2", "--layers", "1,-2", "--out", str(tmp_path / "out"),
               "--threads", "1", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert STANDIN_NOTE in text
    assert STANDIN_NOTE in (tmp_path / "out" / "results.md").read_text()
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(r["standin"] and r["note"] == STANDIN_NOTE for r in rows)
    # the cache lines carry the protocol's stages, time to first token and peak memory
    lines = [json.loads(x) for x in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for e in lines:
        assert e["standin"] is True
        assert list(e["stages_s"]) == list(STAGES) and e["stages_s"]["load"] > 0
        assert e["stages_s"]["prefill"] > 0 and e["stages_s"]["decode"] > 0 and e["stages_s"]["preprocess"] > 0
        assert e["ttft_s"] == pytest.approx(efficiency.ttft(e["stages_s"]))
        assert e["peak_memory_bytes"] > 0 and e["memory_kind"].startswith("peak RSS")
        assert e["read_s"] == pytest.approx(e["stages_s"]["decode"] + e["stages_s"]["preprocess"])
        want = (8 * 16, 1) if e["method"] == "vanilla" else (aot.budget(0.25, 8, 16), 1)
        assert (e["visual_tokens"], e["newline_tokens"]) == want
        if e["method"] == "aot":
            assert e["stages_s"]["vision tower"] > 0 and e["stages_s"]["compression"] > 0
    for r in rows:  # results.json: the lines' mean stages and TTFT, their largest peak
        mine = [e for e in lines if e["method"] == r["method"]]
        assert r["ttft_s"] == pytest.approx(sum(e["ttft_s"] for e in mine) / len(mine))
        assert r["stages_s"]["prefill"] == pytest.approx(sum(e["stages_s"]["prefill"] for e in mine) / len(mine))
        assert r["peak_memory_bytes"] == max(e["peak_memory_bytes"] for e in mine)


# ------------------------------------------------------------------------------ aot eval's report

def _question(qid: str, answer: str):
    return SimpleNamespace(id=qid, answer=answer, video=Path("v.mp4"), content_hash=f"h{qid}")


def test_answered_counts_only_replies_with_a_letter():
    from aot.eval.runner import Setting, markdown, summarize

    qs = [_question(f"q{i}", "A") for i in range(4)]
    s = Setting("vanilla", 1.0, {}, "k")
    preds = [None, None, "A", "B"]  # two replies named no option
    cache = {("k", q.id, q.content_hash): {"pred": p, "raw": "blah" if p is None else p, "visual_tokens": 10,
                                           "newline_tokens": 1, "prefill_tflops": 1.0, "time_s": 0.1}
             for q, p in zip(qs, preds)}
    row, = summarize(qs, [s], cache)
    assert (row["n"], row["answered"], row["correct"]) == (4, 2, 1)
    line = [x for x in markdown([row]).splitlines() if x.startswith("| vanilla")][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:4] == ["4/4", "2/4"]
    assert cells[6] == "10 (+1 newline)"


def test_old_cache_lines_without_newline_count_are_recomputed(tmp_path):
    from aot.eval.cache import read_lines

    path = tmp_path / "answers.jsonl"
    old = {"key": "k", "id": "q0", "question_hash": "h", "method": "aot", "retention": 0.1, "pred": "A",
           "visual_tokens": 628, "prefill_tflops": 1.0, "time_s": 0.1}
    path.write_text(json.dumps(old) + "\n" + json.dumps({**old, "id": "q1", "visual_tokens": 627,
                                                          "newline_tokens": 1}) + "\n")
    entries, bad = read_lines(path)
    assert [k[1] for k in entries] == ["q1"] and bad == [(1, "missing field newline_tokens")]


def _row(method, retention, acc, n=20):
    from aot.eval.runner import wilson

    k = round(acc * n)
    return {"method": method, "retention": retention, "n": n, "accuracy": k / n, "ci95": list(wilson(k, n))}


def test_accuracy_plot_with_one_retention_is_readable():
    import matplotlib.pyplot as plt

    from aot.eval.runner import figure

    rows = [_row("vanilla", 1.0, 0.5), _row("aot", 0.1, 0.4), _row("visionzip", 0.1, 0.4), _row("fastv", 0.1, 0.4)]
    fig = figure(rows, "t")
    try:
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        assert lo == 0 and hi >= 0.3  # not 0.095-0.105
        lines = [c for c in ax.containers]  # one errorbar container per method
        xs = [float(c.lines[0].get_xdata()[0]) for c in lines]
        markers = [c.lines[0].get_marker() for c in lines]
        assert len(xs) == 3 and len(set(xs)) == 3 and all(abs(x - 0.1) < 0.03 for x in xs)  # side by side
        assert len(set(markers)) == 3
        labels = ax.get_legend().get_texts()
        assert {"aot", "visionzip", "fastv", "vanilla (retention 1)", "vanilla 95% CI"} == {t.get_text() for t in labels}
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1"]
    finally:
        plt.close(fig)


def test_accuracy_plot_keeps_several_retentions_in_order():
    import matplotlib.pyplot as plt

    from aot.eval.runner import figure

    fig = figure([_row("aot", r, 0.3) for r in (0.1, 0.25, 0.5)])
    try:
        ax = fig.axes[0]
        x = list(ax.containers[0].lines[0].get_xdata())
        assert x == pytest.approx([0.1, 0.25, 0.5]) and ax.get_xlim()[1] >= 0.5
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------ --help

def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise AssertionError("no subcommands")


def test_every_help_shows_defaults_and_no_markup():
    parser = build_parser()
    subs = _subparsers(parser)
    assert {"run", "eval", "demo", "flops", "methods"} <= set(subs)
    for name, sub in subs.items():
        text = sub.format_help()
        assert "``" not in text, name
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            assert action.help, f"aot {name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, [], argparse.SUPPRESS):  # [] (repeatable flags): nothing
                shown = sub._get_formatter()._expand_help(action)  # what the help prints for the option
                assert "default" in shown, f"aot {name} {action.option_strings[-1]}: default not shown"
    run = subs["run"].format_help()
    flat = " ".join(run.split("options:", 1)[1].split())  # the option list, after the usage lines
    for flag, default in (("--retention", "0.1"), ("--frames", "32"), ("--method", "aot"),
                          ("--max-new-tokens", "64"), ("--dtype", "auto")):
        seg = flat[flat.index(flag + " "):]
        assert f"(default: {default})" in seg[:400], flag


# ------------------------------------------------------------------------------ benchmarks/ttft.py

def test_ttft_benchmark_rows_use_the_protocol():
    """benchmarks/ttft.py's row: the protocol's model stages (in-LLM pruning out of the prefill) and peak memory."""
    import sys

    import hf_tiny_qwen as hq

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ttft

    model = hq.model(text_layers=4)
    inputs = hq.processor()(text="<|vision_start|><|video_pad|><|vision_end|> what moves ?",
                            videos=[hq.frames(4, height=48)], return_tensors="pt")
    for method, cfg in ((None, None), ("aot", None), ("fastv", ttft.llm_config("fastv", 0.5))):
        peak = {}
        times, _ = ttft.one_row(model, inputs, "cpu", method, 0.25, config=cfg, peak=peak)
        assert list(times) == ["vision tower", "scores", "compression", "prefill"]
        assert set(times) < set(STAGES) and all(v >= 0 for v in times.values())
        assert peak["bytes"] > 0 and peak["kind"].startswith("peak RSS")


def test_flops_says_its_visual_tokens_exclude_the_newline(capsys):
    from aot.flops import VISUAL_TOKENS_NOTE

    assert main(["flops", "--model", "llava-onevision-7b", "--retention", "0.1"]) == 0
    out = capsys.readouterr().out
    assert VISUAL_TOKENS_NOTE in out and "newlines excluded" in VISUAL_TOKENS_NOTE
    assert "| 10% | 627 |" in out  # 32 x 196 at 10%: the count aot run prints as 627 (+1 newline)
