"""``aot report`` on real lmms-eval runs: ``python -m lmms_eval`` (0.7.3, through the entry point, offline)
with a tiny LLaVA-OneVision checkpoint on the shipped local task ``examples/lmms_local_task`` (the
bundled video), as vanilla, AOT at 25% and FastV; the report's accuracy, visual tokens, FLOPs and %
of full are checked against values computed here from the logged samples and the checkpoint's
config.json, the paper's rows against the paper's own text, and the command's JSON and plot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("lmms_eval")

import hf_tiny  # noqa: E402
from aot import report as rep  # noqa: E402
from aot.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER_TEXT = ROOT.parent / "shared" / "paper" / "AOT-paper.txt"
# the checkpoint folder is named like the real one, so the report matches the paper's Table 1
CKPT_NAME = "llava-onevision-qwen2-7b-ov-hf"
RUNS = {"vanilla": "method=vanilla",
        "aot25": "method=aot,retention=0.25,local_layer=1,n_iters=20,windows=2x2",
        "fastv": "method=fastv,retention=0.5,k=2"}


def lmms_env(tmp: Path) -> dict:
    dist = tmp / "ep" / "aot_video_test_ep-0.0.dist-info"  # what installing the package writes
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aot-video-test-ep\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\naot = aot.eval.lmms_entry:manifests\n")
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp / "ep"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("LMMS_EVAL_PLUGINS", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three lmms-eval runs of the shipped example task into one --output_path, as the docs show."""
    tmp = tmp_path_factory.mktemp("report")
    ckpt = tmp / CKPT_NAME
    hf_tiny.model(text_layers=4).save_pretrained(ckpt)
    hf_tiny.processor().save_pretrained(ckpt)
    env = lmms_env(tmp)
    logs = tmp / "logs"
    for name, args in RUNS.items():
        cmd = [sys.executable, "-m", "lmms_eval", "--model", "aot_llava_onevision",
               "--model_args", f"pretrained={ckpt},{args},frames=8", "--tasks", "aot_local_video",
               "--include_path", "examples/lmms_local_task", "--batch_size", "2", "--log_samples",
               "--output_path", str(logs)]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # from the root
        assert res.returncode == 0, name + res.stdout[-3000:] + res.stderr[-3000:]
    return {"ckpt": ckpt, "logs": logs, "tmp": tmp}


def logged(logs: Path) -> dict:
    """method -> (accuracy %, [visual_tokens], [visual_tokens_in], config) read by hand from the samples."""
    out = {}
    for f in logs.rglob("*_samples_aot_local_video.jsonl"):
        samples = [json.loads(line) for line in f.read_text().splitlines()]
        assert len(samples) == 4  # every question of examples/lmms_local_task/questions.jsonl
        info = [s["token_counts"][0]["aot"] for s in samples]
        acc = 100 * sum(s["mvbench_accuracy"]["score"] for s in samples) / len(samples)
        out[info[0]["method"]] = (acc, [i["visual_tokens"] for i in info], [i["visual_tokens_in"] for i in info],
                                  info[0]["config"])
    return out


def eq17(n: int, layers: int, d: int, m: int) -> int:
    return layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)


def test_report_numbers_equal_the_logged_samples(runs):
    (model,) = rep.build(rep.load_runs([runs["logs"]]))
    assert model.pretrained == str(runs["ckpt"]) and model.frames == 8 and model.tasks == ["aot_local_video"]
    text = json.loads((runs["ckpt"] / "config.json").read_text())["text_config"]
    L, d, m = text["num_hidden_layers"], text["hidden_size"], text["intermediate_size"]
    by_hand = logged(runs["logs"])
    rows = {row.method: row for row in model.rows}
    assert set(rows) == {"vanilla", "aot", "fastv"} == set(by_hand)
    for method, (acc, tokens, tokens_in, config) in by_hand.items():
        row = rows[method]
        assert row.scores["aot_local_video"] == pytest.approx(acc)
        assert row.visual_tokens == pytest.approx(sum(tokens) / len(tokens))
        assert row.visual_tokens_in == pytest.approx(sum(tokens_in) / len(tokens_in))
        if method == "fastv":  # layers 0..k-1 see every video token, the rest what FastV kept
            k = config["k"]
            flops = [sum(eq17(n_in if i < k else n, 1, d, m) for i in range(L)) for n, n_in in zip(tokens, tokens_in)]
        else:
            flops = [eq17(n, L, d, m) for n in tokens]
        assert row.prefill_tflops == pytest.approx(sum(flops) / len(flops) / 1e12)
    assert rows["aot"].retention == 0.25 and rows["vanilla"].retention == 1.0
    # visual tokens count the video tokens the LLM received with the newline apart (aot.efficiency);
    # visual_tokens_in the processor's placeholders, LLaVA-OneVision's one newline included
    assert rows["aot"].visual_tokens < rows["vanilla"].visual_tokens == rows["aot"].visual_tokens_in - 1
    full = rows["vanilla"].average
    for row in model.rows:
        assert row.of_full == (None if full == 0 else pytest.approx(100 * row.average / full))


def test_percent_of_full_from_real_result_files(runs, tmp_path):
    """The same real results files with their scores set to known values: % of full by hand."""
    logs = tmp_path / "logs"
    shutil.copytree(runs["logs"], logs)
    for f in logs.rglob("*_results.json"):
        r = json.loads(f.read_text())
        method = r["config"]["model_args"].split("method=")[1].split(",")[0]
        r["results"]["aot_local_video"]["mvbench_accuracy,none"] = {"vanilla": 50.0, "aot": 40.0, "fastv": 55.0}[method]
        f.write_text(json.dumps(r))
    (model,) = rep.build(rep.load_runs([logs]))
    got = {row.method: (row.average, row.of_full) for row in model.rows}
    assert got == {"vanilla": (50.0, 100.0), "aot": (40.0, 80.0), "fastv": (55.0, pytest.approx(110.0))}


def test_group_score_is_the_sample_weighted_mean_of_its_subtasks(runs, tmp_path):
    """A real results file turned into a group without a score of its own (as lmms-eval writes
    ``mvbench``) over the real task and a second subtask; fraction metrics become percents."""
    src = sorted(runs["logs"].rglob("*_results.json"))[0]
    r = json.loads(src.read_text())
    real = r["results"]["aot_local_video"]["mvbench_accuracy,none"]
    r["results"]["grp"] = {"alias": "grp"}
    r["results"]["other"] = {"alias": "other", "lvb_acc,none": 0.5, "lvb_acc_stderr,none": 0.1}
    r["results"]["alone"] = {"alias": "alone", "score,none": 0.25}
    r["group_subtasks"] = {"grp": ["aot_local_video", "other"], "alone": []}
    r["n-samples"]["other"] = {"original": 12, "effective": 12}
    r["n-samples"]["alone"] = {"original": 2, "effective": 2}
    path = tmp_path / "x_results.json"
    path.write_text(json.dumps(r))
    run = rep.read_run(path)
    assert set(run.scores) == {"grp", "alone"}
    assert run.scores["grp"] == pytest.approx((real * 4 + 50.0 * 12) / 16)
    assert run.scores["alone"] == 25.0 and run.samples["grp"] == 16
    assert run.visual_tokens == []  # no samples file carries this prefix: no tokens, no FLOPs


def test_paper_rows_beside_ours(runs):
    (model,) = rep.build(rep.load_runs([runs["logs"]]))
    assert model.paper_model == "LLaVA-OV-7B"
    rows = {row.method: row for row in model.rows}
    assert rows["aot"].paper["MVBench"] == 58.5 and rows["aot"].paper["TFLOPs"] == 8.7  # Table 1, AOT, 25%
    assert rows["vanilla"].paper["Avg"] == 58.4
    assert rows["fastv"].paper is None  # the paper's FastV is R = 80% (retention 0.2), not 0.5
    md = rep.markdown([model])
    assert "The paper's Table 1 (LLaVA-OV-7B, 32 frames)" in md
    assert "| aot | 25% | 58.5 | 61.0 | 56.0 | 56.9 | 58.1 | 99.5 | 8.7 |" in md
    assert "Table 1 ran LLaVA-OV-7B at 32 frames; these runs used 8" in md


def paper_lines(table: str, end: str) -> list[list[str]]:
    text = PAPER_TEXT.read_text()
    start = text.index(f"\n{table}. Comparison")
    block = text[start:text.index(end, start)]
    return [re.sub(r"\[\d+\]", "", line).split() for line in block.splitlines()]


def same(token: str, value) -> bool:
    """A number of the paper's text equals a transcribed value; the text lost some decimal points
    ("559" for 55.9, "52" for 5.2), so digits alone also count."""
    if token == "-" or value is None:
        return token == "-" and value is None
    return float(token) == value or token.replace(".", "") == f"{value:.1f}".replace(".", "").removesuffix("0") \
        or token.replace(".", "") == f"{value:.1f}".replace(".", "")


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="the paper's text (../shared/paper) is not here")
def test_paper_table_transcription_matches_the_paper_text():
    """Every transcribed row against its lines in the paper's text, Table 1/2 and their appendix
    copies (Tables 6/7): each number must be the one printed in at least one of the two copies
    (the text extraction garbled some, differently in each copy)."""
    names = {"vanilla": None, "fastv": "FastV", "pdrop": "PDrop", "dycoke": "DyCoke", "visionzip": "VisionZip",
             "prunevid": "PruneVid", "fastvid": "FastVID", "aot": "AOT"}
    copies = {"LLaVA-OV-7B": (("Table 1", "Table 2."), ("Table 6", "Table 7.")),
              "LLaVA-Video-7B": (("Table 2", "Superior"), ("Table 7", "Table 8."))}
    checked = 0
    for model, spans in copies.items():
        tables = [paper_lines(*span) for span in spans]
        for (method, retention), row in rep.PAPER[model]["rows"].items():
            label = names[method] or model
            retained = "100%" if method in ("vanilla", "fastv", "pdrop") else f"{round(100 * retention)}%"
            want = [row["TFLOPs"], *(row[c] for c in ("MVBench", "EgoSchema", "LongVideoBench", "VideoMME", "Avg",
                                                       "Score %"))]
            found = []
            for lines in tables:
                cands = [t for t in lines if len(t) == 10 and t[0] == label and t[3] == retained]
                assert len(cands) == 1, (model, method, retention, cands)
                found.append([cands[0][1], *cands[0][4:10]])
            for i, w in enumerate(want):
                assert any(same(f[i], w) for f in found), (model, method, retention, i, w, found)
            checked += 1
    assert checked == len(rep.PAPER["LLaVA-OV-7B"]["rows"]) + len(rep.PAPER["LLaVA-Video-7B"]["rows"]) == 28


def test_cli_markdown_json_and_plot(runs, tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "acc.png"
    assert main(["report", str(runs["logs"]), "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert f"## {runs['ckpt']}" in printed and "| aot | 25% |" in printed and "| vanilla | 100% |" in printed
    data = json.loads(out_json.read_text())
    (model,) = data["models"]
    assert {r["method"] for r in model["rows"]} == {"vanilla", "aot", "fastv"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stand_in_is_labelled_and_costed_by_its_preset(runs, tmp_path):
    """A real results file relabelled as a run of the stand-in: the report says its accuracy means
    nothing, and takes SmolLM2-135M's shape (30 layers, 576 wide, FFN 1536) for the FLOPs."""
    logs = tmp_path / "logs"
    shutil.copytree(runs["logs"], logs)
    for f in logs.rglob("*_results.json"):
        r = json.loads(f.read_text())
        r["config"]["model_args"] = r["config"]["model_args"].replace(f"pretrained={runs['ckpt']}",
                                                                      "pretrained=aot:dinov2-smollm2")
        f.write_text(json.dumps(r))
    (model,) = rep.build(rep.load_runs([logs]))
    assert model.flops_from == "preset dinov2-s+smollm2-135m"
    assert any("answers, so its accuracies, are meaningless" in n for n in model.notes)
    rows = {row.method: row for row in model.rows}
    tokens = logged(logs)["aot"][1]
    assert rows["aot"].prefill_tflops == pytest.approx(sum(eq17(n, 30, 576, 1536) for n in tokens) / len(tokens) / 1e12)
    assert "meaningless" in rep.markdown([model])


def test_cli_errors_name_the_input(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no lmms-eval results" in capsys.readouterr().err
    bad = tmp_path / "x_results.json"
    bad.write_text(json.dumps({"results": {}}))
    assert main(["report", str(bad)]) == 2
    assert "not an lmms-eval results file" in capsys.readouterr().err
