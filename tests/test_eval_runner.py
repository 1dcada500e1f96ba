"""`aot eval` end to end on a tiny local checkpoint and real videos: tables, a resume after a run
killed mid-way (nothing cached recomputed, results equal to an uninterrupted run), a re-render
without any model work, malformed question files, the letter rule and the Wilson interval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

import aot  # noqa: E402
import hf_tiny  # noqa: E402
from aot.cli import main  # noqa: E402
from aot.demo import sample_video  # noqa: E402
from aot.eval.questions import extract_letter, mvbench_prompt  # noqa: E402
from aot.eval.runner import read_cache, wilson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "videos"


def videos() -> list[Path]:
    """Short real videos: ../shared/data/videos when present, else the bundled sample."""
    names = ["bikes.mp4", "carphone_pristine.mp4", "Megamind.avi", "bigbuckbunny.mp4"]
    found = [SHARED / n for n in names if (SHARED / n).is_file()]
    return found or [sample_video()]


def write_questions(path: Path, n: int) -> list[dict]:
    vids = videos()
    opts = ["a cat", "a dog", "red", "blue"]
    rows = [{"id": f"q{i}", "video": str(vids[i % len(vids)]), "question": "what moves ?", "options": opts,
             "answer": "ABCD"[i % 4]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava-ov-eval")
    hf_tiny.model().save_pretrained(path)
    hf_tiny.processor().save_pretrained(path)
    return path


def argv(checkpoint, questions, out, cache=None, extra=()):
    return ["eval", "--questions", str(questions), "--model", str(checkpoint), "--methods", "aot,visionzip",
            "--retention", "0.25", "--frames", "8", "--batch-size", "2", "--max-new-tokens", "3",
            "--layers", "1,-2", "--set", "n_iters=20", "--out", str(out), "--threads", "1", "--no-progress",
            *(["--cache", str(cache)] if cache else []), *extra]


def answers(cache: Path) -> dict:
    entries, _ = read_cache(cache)
    return {(e["id"], e["method"], e["retention"]): (e["pred"], e["raw"], e["visual_tokens"]) for e in entries.values()}


def test_eval_kill_resume_equals_uninterrupted(checkpoint, tmp_path):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, 8)
    n_total = 8 * 3  # vanilla, aot@0.25, visionzip@0.25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "aot.cli", *argv(checkpoint, qs, tmp_path / "out")]
    cache = tmp_path / "out" / "answers.jsonl"

    # 1. a run killed once a few answers are cached
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if cache.is_file() and len(cache.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed:\n" + proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_text = cache.read_text()
    done_before = answers(cache)
    assert 3 <= len(done_before) < n_total

    # 2. the rerun computes only what is missing, and keeps every line already written
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{n_total - len(done_before)} to compute" in res.stdout
    resumed_text = cache.read_text()
    assert resumed_text.startswith(killed_text.rstrip("\n").rsplit("\n", 1)[0])  # complete lines untouched
    resumed = answers(cache)
    assert len(resumed) == n_total
    assert {k: resumed[k] for k in done_before} == done_before

    # 3. an uninterrupted run in its own cache gives the same answers and the same table
    ref_cache = tmp_path / "ref.jsonl"
    assert main(argv(checkpoint, qs, tmp_path / "ref", cache=ref_cache)) == 0
    assert answers(ref_cache) == resumed
    table = lambda p: (p / "results.md").read_text()  # noqa: E731
    strip_time = lambda t: [line.rsplit("|", 2)[0] for line in t.splitlines()]  # noqa: E731 (time column varies)
    assert strip_time(table(tmp_path / "out")) == strip_time(table(tmp_path / "ref"))

    # 4. a finished run re-renders without computing (no model is loaded)
    before = cache.read_text()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "0 to compute" in res.stdout and "Loading weights" not in res.stderr
    assert cache.read_text() == before

    # the numbers in the table
    rows = {(r["method"], r["retention"]): r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    assert set(rows) == {("vanilla", 1.0), ("aot", 0.25), ("visionzip", 0.25)}
    # visual tokens exclude the video's newline, counted apart (aot.efficiency): the LLM got budget + 1
    assert rows[("vanilla", 1.0)]["visual_tokens"] == 8 * 16 and rows[("vanilla", 1.0)]["newline_tokens"] == 1
    assert rows[("aot", 0.25)]["visual_tokens"] == aot.budget(0.25, 8, 16)
    assert rows[("aot", 0.25)]["newline_tokens"] == 1
    assert rows[("aot", 0.25)]["config"]["n_iters"] == 20 and rows[("aot", 0.25)]["config"]["retention"] == 0.25
    d, m, layers = 64, 128, 2  # Eq. 17 by hand for the tiny LLM
    eq17 = lambda n: layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) / 1e12  # noqa: E731
    assert rows[("aot", 0.25)]["prefill_tflops"] == pytest.approx(eq17(aot.budget(0.25, 8, 16) + 1))
    entries, _ = read_cache(cache)
    qs_rows = {r["id"]: r for r in map(json.loads, qs.read_text().splitlines())}
    for key in rows:
        got = [e for e in entries.values() if (e["method"], e["retention"]) == key]
        k = sum(e["pred"] == qs_rows[e["id"]]["answer"] for e in got)
        assert rows[key]["correct"] == k and rows[key]["n"] == 8
        assert rows[key]["ci95"] == pytest.approx(list(wilson(k, 8)))
    assert (tmp_path / "out" / "accuracy.png").stat().st_size > 1000


BAD = {
    "missing field": ({"id": "x", "video": "V", "question": "q?", "options": ["a", "b"]}, "missing field answer"),
    "missing video": ({"id": "x", "video": "nope.mp4", "question": "q?", "options": ["a", "b"], "answer": "A"},
                      "not found"),
    "bad letter": ({"id": "x", "video": "V", "question": "q?", "options": ["a", "b"], "answer": "C"},
                   "not one of the 2 options"),
    "not a letter": ({"id": "x", "video": "V", "question": "q?", "options": ["a", "b"], "answer": "yes"},
                     "must be one letter"),
    "duplicated id": ({"id": "q0", "video": "V", "question": "q?", "options": ["a", "b"], "answer": "A"},
                      "duplicated id 'q0' (first on line 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_eval_rejects_malformed_files_naming_the_line(case, tmp_path, capsys):
    qs = tmp_path / "qa.jsonl"
    rows = write_questions(qs, 2)
    bad, msg = BAD[case]
    bad = {k: (str(videos()[0]) if v == "V" else v) for k, v in bad.items()}
    qs.write_text(qs.read_text() + json.dumps(bad) + "\n")
    cache = tmp_path / "answers.jsonl"
    cache.write_text('{"id": "q0", "key": "k", "question_hash": "h", "pred": "A"}\n')
    before = cache.read_bytes()
    # a model that does not exist: the file is rejected before any model work
    rc = main(["eval", "--questions", str(qs), "--model", str(tmp_path / "no-model"), "--cache", str(cache),
               "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"qa.jsonl:{len(rows) + 1}:" in err and msg in err, err
    assert cache.read_bytes() == before
    assert not (tmp_path / "out" / "results.md").exists()


def test_eval_reports_every_bad_line_and_bad_json(tmp_path, capsys):
    qs = tmp_path / "qa.jsonl"
    qs.write_text('{"id": 1}\n\nnot json\n')
    assert main(["eval", "--questions", str(qs), "--model", "x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "qa.jsonl:1: missing fields video, question, options, answer" in err
    assert "qa.jsonl:3: not valid JSON" in err


def test_eval_grid_errors(tmp_path, capsys):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, 1)
    base = ["eval", "--questions", str(qs), "--model", "x", "--out", str(tmp_path)]
    for extra, msg in [(["--methods", "aotx"], "unknown method"), (["--set", "nope=1"], "--set nope"),
                       (["--set", "n_iters=abc"], "n_iters must be an int"), (["--retention", "0"], "retention"),
                       (["--batch-size", "0"], "--batch-size")]:
        assert main(base + extra) == 2, extra
        assert msg in capsys.readouterr().err, extra


def test_prompt_and_letter_rule():
    assert mvbench_prompt("What?", ["x", "y"]) == "Question:What?\nOption:\n(A) x\n(B) y\nOnly give the best option.\n"
    cases = {"B": "B", "(C) red": "C", "D. blue": "D", "The answer is (B).": "B", "b": "B",
             "a cat": "A",  # lmms-eval's rule reads the article as A too
             "none of them": None, "E": "E", "": None, "Answer: C\n": "C"}
    for reply, want in cases.items():
        assert extract_letter(reply, 4) == want, reply
    assert extract_letter("G", 7) == "G" and extract_letter("G", 4) is None


def test_wilson_by_hand():
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 6)
    assert lo == 0.0 and hi == pytest.approx(0.3903, abs=1e-4)


def test_eval_runs_an_in_llm_method_with_its_layer_schedule(tmp_path, capsys):
    """aot eval --methods fastv: answers in a batch of two; prefill FLOPs counted per layer."""
    ckpt = tmp_path / "tiny4"
    hf_tiny.model(text_layers=4).save_pretrained(ckpt)
    hf_tiny.processor().save_pretrained(ckpt)
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, 2)
    rc = main(["eval", "--questions", str(qs), "--model", str(ckpt), "--methods", "fastv", "--retention", "0.25",
               "--frames", "8", "--batch-size", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "out"),
               "--threads", "1", "--no-progress", "--no-vanilla"])
    assert rc == 0, capsys.readouterr()
    entries, _ = read_cache(tmp_path / "out" / "answers.jsonl")
    n, kept = 8 * 16 + 1, aot.budget(0.25, 1, 8 * 16 + 1)
    d, m = 64, 128
    layer = lambda t: (4 * t * d * d + 2 * t * t * d + 2 * t * d * m) / 1e12  # noqa: E731
    assert len(entries) == 2
    for e in entries.values():
        assert e["method"] == "fastv" and e["visual_tokens"] == kept and e["batch"] == 2
        assert e["newline_tokens"] == 0  # in-LLM: the newline is ranked with the video tokens
        assert e["prefill_tflops"] == pytest.approx(2 * layer(n) + 2 * layer(kept))
