"""Bad inputs and faults of ``aot eval`` (issue 20): cut or incomplete cache lines, caches keyed by
content, a --cache that is not an answers cache, the lock, unreadable videos, one-line errors
raised before any model load. A tiny local checkpoint and tiny synthetic videos keep it fast; "checked
before the load" is proved by a loader that fails the test if it is ever called."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
av = pytest.importorskip("av")

import hf_tiny  # noqa: E402
from faults_media import make_video  # noqa: E402
from aot.cli import main  # noqa: E402


def read_lines(path):
    from aot.eval.cache import read_lines as read  # imported late: the module is new (issue 20)

    return read(path)

ROOT = Path(__file__).resolve().parents[1]


def write_questions(path: Path, videos: list, ids=None) -> None:
    ids = ids or [f"q{i}" for i in range(len(videos))]
    rows = [{"id": qid, "video": str(v), "question": "what moves?", "options": ["a cat", "a dog"], "answer": "A"}
            for qid, v in zip(ids, videos)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-eval-faults") / "tiny"
    hf_tiny.model().save_pretrained(path)
    hf_tiny.processor().save_pretrained(path)
    return path


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: what it guards is checked before loading."""
    import aot.run

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(aot.run, "load", refuse)


def run(model, questions, out, *extra, cache=None):
    return main(["eval", "--questions", str(questions), "--model", str(model), "--methods", "visionzip",
                 "--retention", "0.5", "--no-vanilla", "--frames", "4", "--max-new-tokens", "2", "--out", str(out),
                 "--threads", "1", "--no-progress", *(["--cache", str(cache)] if cache else []), *extra])


def computed(stdout: str) -> int:
    line = next(ln for ln in stdout.splitlines() if "to compute" in ln)
    return int(line.rsplit(",", 1)[1].split()[0])


# ------------------------------------------------------------------------------------ 1, 6: cache lines


def test_cut_inside_a_utf8_character_is_skipped_and_recomputed(checkpoint, tmp_path, capsys):
    vids = [make_video(tmp_path / f"v{i}.mp4", seed=i) for i in range(2)]
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, vids, ids=["q0", "вопрос-1"])  # a non-ASCII id: 2-byte characters in the line
    assert run(checkpoint, qs, tmp_path / "out") == 0
    cache = tmp_path / "out" / "answers.jsonl"
    data = cache.read_bytes()
    lines = data.splitlines(keepends=True)
    assert len(lines) == 2 and "вопрос-1".encode() in lines[1]
    cut = lines[1].index("вопрос-1".encode()) + 1  # inside the first character
    cache.write_bytes(b"".join(lines[:1]) + lines[1][:cut])
    capsys.readouterr()
    assert run(checkpoint, qs, tmp_path / "out") == 0
    res = capsys.readouterr()
    assert computed(res.out) == 1
    assert f"{cache}" in res.err and "line 2" in res.err and "not UTF-8" in res.err
    entries, bad = read_lines(cache)
    assert {e["id"] for e in entries.values()} == {"q0", "вопрос-1"} and [n for n, _ in bad] == [2]
    assert cache.read_bytes().startswith(lines[0])  # the complete line kept as it was


def test_a_line_missing_a_field_is_recomputed_not_a_crash(checkpoint, tmp_path, capsys):
    vids = [make_video(tmp_path / f"v{i}.mp4", seed=i) for i in range(2)]
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, vids)
    assert run(checkpoint, qs, tmp_path / "out") == 0
    cache = tmp_path / "out" / "answers.jsonl"
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    del lines[0]["prefill_tflops"]
    cache.write_text("".join(json.dumps(e) + "\n" for e in lines))
    capsys.readouterr()
    assert run(checkpoint, qs, tmp_path / "out") == 0
    res = capsys.readouterr()
    assert computed(res.out) == 1 and "line 1 (missing field prefill_tflops)" in res.err
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["n"] == 2


# ------------------------------------------------------------------------------------ 2: keyed by content


def test_cache_is_keyed_by_the_checkpoint_and_video_content(checkpoint, tmp_path, capsys, monkeypatch):
    vids = [make_video(tmp_path / f"v{i}.mp4", seed=i) for i in range(2)]
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, vids)
    model = tmp_path / "tiny"
    shutil.copytree(checkpoint, model)
    out = tmp_path / "out"
    assert run(model, qs, out) == 0
    assert computed(capsys.readouterr().out) == 2
    monkeypatch.chdir(tmp_path)  # the same checkpoint spelled three ways: one cache
    for spelling in ("tiny", "./tiny", str(model.resolve())):
        assert run(spelling, qs, out) == 0
        assert computed(capsys.readouterr().out) == 0, spelling
    make_video(vids[1], seed=7)  # a video overwritten in place: its question only
    assert run(model, qs, out) == 0
    assert computed(capsys.readouterr().out) == 1
    hf_tiny.model(seed=3).save_pretrained(model)  # new weights saved into the same folder: everything
    assert run(model, qs, out) == 0
    assert computed(capsys.readouterr().out) == 2
    shown = {e["video"] for e in read_lines(out / "answers.jsonl")[0].values()}
    assert shown == {str(v.resolve()) for v in vids}  # the path kept for display


# ------------------------------------------------------------------------------------ 3: --cache checks


def test_cache_that_is_not_an_answers_cache_is_refused(checkpoint, tmp_path, capsys, no_load):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4")])
    before = qs.read_bytes()
    assert run(checkpoint, qs, tmp_path / "out", cache=qs) == 2
    err = capsys.readouterr().err
    assert "is the questions file" in err and len(err.strip().splitlines()) == 1
    assert qs.read_bytes() == before
    other = tmp_path / "notes.jsonl"
    other.write_text('{"a": 1}\n{"b": 2}\n')
    assert run(checkpoint, qs, tmp_path / "out", cache=other) == 2
    assert "not an answers cache" in capsys.readouterr().err and other.read_text() == '{"a": 1}\n{"b": 2}\n'
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n")
    assert run(checkpoint, qs, tmp_path / "out", cache=text) == 2
    assert "not an answers cache" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["folder", "proc", "parent is a file"])
def test_cache_that_cannot_be_written_is_refused_before_the_load(checkpoint, tmp_path, capsys, no_load, kind):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4")])
    (tmp_path / "afile").write_text("x")
    cache = {"folder": tmp_path, "proc": Path("/proc/version"), "parent is a file": tmp_path / "afile" / "a.jsonl"}[kind]
    assert run(checkpoint, qs, tmp_path / "out", cache=cache) == 2
    err = capsys.readouterr().err
    assert err.startswith("aot eval: error: --cache") and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_cache_fifo_is_refused_at_once(checkpoint, tmp_path):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4")])
    fifo = tmp_path / "answers.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "aot", "eval", "--questions", str(qs), "--model", str(checkpoint),
                          "--methods", "visionzip", "--retention", "0.5", "--no-vanilla", "--frames", "4",
                          "--out", str(tmp_path / "out"), "--cache", str(fifo), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "is a FIFO" in res.stderr, res.stderr


# ------------------------------------------------------------------------------------ 4: the lock


def test_second_run_on_a_locked_cache_is_refused(checkpoint, tmp_path, capsys, no_load):
    from filelock import FileLock

    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4")])
    cache = tmp_path / "out" / "answers.jsonl"
    cache.parent.mkdir()
    with FileLock(str(cache) + ".lock"):  # what a first run holds while it computes
        assert run(checkpoint, qs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "another aot eval is writing" in err and "answers.jsonl.lock" in err
    assert len(err.strip().splitlines()) == 1 and not cache.exists()


# ------------------------------------------------------------------------------------ 5: unreadable videos


def test_unreadable_videos_are_errors_and_the_run_goes_on(checkpoint, tmp_path, capsys, monkeypatch):
    good = [make_video(tmp_path / f"v{i}.mp4", seed=i) for i in range(2)]
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n")
    one = make_video(tmp_path / "one.mp4", frames=1)
    broken = make_video(tmp_path / "broken.mp4", seed=5)  # its header reads; decoding fails (stubbed below)
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [good[0], text, one, broken, good[1]])
    import aot.video

    real = aot.video.read_frames
    decoded = []

    def read_frames(path, n=32):
        decoded.append(Path(path).name)
        if Path(path).name == "broken.mp4":
            raise ValueError(f"{str(path)!r} is not a readable video: Invalid data found when processing input")
        return real(path, n)

    monkeypatch.setattr(aot.video, "read_frames", read_frames)
    assert run(checkpoint, qs, tmp_path / "out") == 0
    res = capsys.readouterr()
    assert "text.mp4" not in decoded and "one.mp4" not in decoded  # refused from the header, never decoded
    assert "2 unreadable (recorded as errors), 3 to compute" in res.out
    row = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    assert row["n"] == 2 and row["errors"] == 3 and row["of"] == 5
    assert {f["id"] for f in row["failed"]} == {"q1", "q2", "q3"}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Questions not answered" in md and "still image" in md and "decoding failed" in md
    capsys.readouterr()
    assert run(checkpoint, qs, tmp_path / "out") == 0  # errors are cached too: nothing to compute
    assert computed(capsys.readouterr().out) == 0


def test_all_videos_unreadable_loads_no_model(checkpoint, tmp_path, capsys, no_load):
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n")
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [text])
    assert run(checkpoint, qs, tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["errors"] == 1


def test_frames_over_the_memory_limit_are_refused_with_the_numbers(checkpoint, tmp_path, capsys, monkeypatch,
                                                                   no_load):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4", frames=6, size=32)])
    monkeypatch.setenv("AOT_MAX_FRAME_BYTES", str(32 * 32 * 3 * 3))  # 3 frames of 32x32
    assert run(checkpoint, qs, tmp_path / "out") == 2  # --frames 4: a setting, refused (not an error line)
    err = capsys.readouterr().err
    assert "--frames 4: video" in err and "4 frames of 32x32 need 12.29 kB" in err and "at most 3 frames" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out" / "answers.jsonl").exists()


def test_retry_errors_tries_the_error_lines_again(checkpoint, tmp_path, capsys, monkeypatch):
    video = tmp_path / "v.mp4"
    video.write_text("not yet a video\n")
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [video])
    assert run(checkpoint, qs, tmp_path / "out") == 0
    capsys.readouterr()
    import aot.checks

    monkeypatch.setattr(aot.checks, "check_video", lambda *a, **k: None)  # e.g. a codec installed since
    monkeypatch.setattr("aot.video.read_frames", lambda p, n=32: (_ for _ in ()).throw(ValueError("still bad")))
    assert run(checkpoint, qs, tmp_path / "out") == 0
    assert computed(capsys.readouterr().out) == 0  # an error line is a result
    assert run(checkpoint, qs, tmp_path / "out", "--retry-errors") == 0
    res = capsys.readouterr()
    assert computed(res.out) == 1 and "still bad" in res.err
    errors = [e["error"] for e in read_lines(tmp_path / "out" / "answers.jsonl")[0].values()]
    assert errors == ["decoding failed: still bad"]


# ------------------------------------------------------------------------------------ 7, 8, 10: one-line errors


@pytest.mark.parametrize("extra, msg", [
    (["--threads", "-1"], "--threads must be an int >= 1, got '-1'"),
    (["--threads", "0"], "--threads must be an int >= 1, got '0'"),
    (["--device", "tpu9"], "--device 'tpu9' is not a device"),
    (["--layers", "1,9"], "vision layer 9 is out of range: the tower has 6 layers"),
])
def test_bad_flags_are_one_line_before_the_load(checkpoint, tmp_path, capsys, no_load, extra, msg):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4")])
    assert run(checkpoint, qs, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err


def test_cuda_without_a_gpu_is_one_line(checkpoint, tmp_path, capsys, no_load):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4")])
    assert run(checkpoint, qs, tmp_path / "out", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "--device 'cuda': no CUDA GPU is available here" in err and len(err.strip().splitlines()) == 1


def test_bad_paths_are_named_for_what_they_are(checkpoint, tmp_path, capsys, no_load):
    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [make_video(tmp_path / "v.mp4")])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(qs.read_bytes().replace(b"what moves?", "qué se mueve?".encode("latin-1")))
    (tmp_path / "afile").write_text("x")
    cases = [(dict(questions=latin), "latin.jsonl:1: not UTF-8 (byte 0xe9"),
             (dict(questions=tmp_path), "is a folder"),
             (dict(out=tmp_path / "afile"), "--out"),
             (dict(model="./no-such-ckpt"), "--model './no-such-ckpt': no such folder")]
    for case, msg in cases:
        args = {"model": checkpoint, "questions": qs, "out": tmp_path / "out", **case}
        assert run(args["model"], args["questions"], args["out"]) == 2, case
        err = capsys.readouterr().err
        one_line = "latin" not in msg  # a questions file's problems are listed one per line
        assert msg in err and "Traceback" not in err and (len(err.strip().splitlines()) == 1 or not one_line), err
    (tmp_path / "vdir.mp4").mkdir()
    write_questions(qs, [tmp_path / "vdir.mp4"])
    assert run(checkpoint, qs, tmp_path / "out") == 2
    assert "is a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ 13: damaged frames


def test_damaged_frames_are_reported_and_kept_in_the_cache(checkpoint, tmp_path, capsys):
    from faults_media import damaged_video

    qs = tmp_path / "qa.jsonl"
    write_questions(qs, [damaged_video(tmp_path / "bugy.mp4")])
    assert run(checkpoint, qs, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "bugy.mp4" in err and "decoder error(s)" in err and "frame(s) decoded damaged" in err
    (entry,) = read_lines(tmp_path / "out" / "answers.jsonl")[0].values()
    assert "decoder error(s)" in entry["video_damage"] and "pred" in entry


def test_digests_are_remembered_until_the_file_changes(tmp_path):
    import hashlib

    from aot.eval.cache import Digests

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    memo = tmp_path / "memo.json"
    d = Digests(memo)
    assert d(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    d.save()
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size; mtime put back: the memo answers without reading
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Digests(memo)(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a write moves mtime: read again
    assert Digests(memo)(f) == hashlib.sha256(b"b" * 1000).hexdigest()
