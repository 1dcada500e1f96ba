"""``aot report``: tables from lmms-eval output folders, beside the paper's Tables 1 and 2.

    aot report logs/ [more_logs/ ...] [--json report.json] [--plot accuracy.png]

Reads every ``*_results.json`` that lmms-eval (0.7) wrote under the given folders (``--output_path``)
and, for each, the ``*_samples_<task>.jsonl`` files of the same run (same timestamp prefix, written
with ``--log_samples``), where the ``aot_llava_onevision`` / ``aot_qwen2_5_vl`` models log each
sample's ``token_counts[0].aot``: method, config, frames, ``visual_tokens`` (what the LLM's layers
after the last pruning stage see) and ``visual_tokens_in`` (the video placeholders entering the LLM).

Runs are grouped by model (the checkpoint, the frame count and, for LLaVA, the video layout) and,
within a model, by setting (method and its full config). For each setting:

- accuracy per task, in percent: the task's first metric that lmms-eval reports as higher-is-better
  (``mvbench_accuracy``, ``videomme_perception_score``, ``score`` for EgoSchema, ``lvb_acc`` for
  LongVideoBench); MVBench's and VideoMME's are percents, EgoSchema's and LongVideoBench's fractions
  (multiplied by 100); a metric of unknown scale whose value is at most 1 is read as a fraction. A group task
  with no score of its own (``mvbench``: 20 subtasks) gets the mean of its subtasks weighted by
  their sample counts;
- the average over tasks, and the % of the same model's full-token run (``method=vanilla``) over
  the tasks both ran, as the paper's "Score %";
- mean visual tokens per sample, and the mean LLM prefill FLOPs of those visual tokens by the
  paper's Eq. 17 (``aot.flops``; FastV/PDrop by their layer schedule from ``visual_tokens_in``),
  with the LLM's shape from the checkpoint's ``config.json`` (a local folder, the Hugging Face cache,
  or a preset matched by name); "n/a" when none is found;
- beside them, the paper's numbers for the same model, method and retention where Table 1
  (LLaVA-OneVision-7B, 32 frames) or Table 2 (LLaVA-Video-7B, 64 frames) has them.

A run without logged samples still gives its accuracies (no tokens, no FLOPs). Two runs of the same
setting and task: the later one (by lmms-eval's date) counts, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["PAPER", "PAPER_TASKS", "Run", "Row", "ModelReport", "load_runs", "build", "markdown", "to_json",
           "plot", "add_report_parser", "run_report"]

# lmms-eval task -> the paper's column
PAPER_TASKS = {"mvbench": "MVBench", "egoschema_subset": "EgoSchema", "longvideobench_val_v": "LongVideoBench",
               "videomme": "VideoMME"}
_COLS = ("MVBench", "EgoSchema", "LongVideoBench", "VideoMME", "Avg", "Score %", "TFLOPs")


def _row(*values):
    return dict(zip(_COLS, values))


# The paper's Tables 1 and 2 (accuracy %, prefill TFLOPs of the visual tokens), keyed by
# (method, retention before the LLM). Transcribed from the paper's text; where the extraction garbled
# a number (a lost decimal point: "559", "5717", "52"), the appendix copy (Tables 6/7) decides.
# None: the paper prints "-". FastV is K = 2, R = 80% (our retention=0.2); the paper does not state
# PDrop's setting (docs/cost-model.md). Table 2's 15% rows repeat the 25% FLOPs (9.3) and VisionZip's
# 15% row repeats its 25% row, as printed.
PAPER = {
    "LLaVA-OV-7B": {
        "table": "Table 1", "frames": 32,
        "rows": {
            ("vanilla", 1.0): _row(58.3, 60.4, 56.4, 58.6, 58.4, 100.0, 40.8),
            ("fastv", 0.2): _row(55.9, 57.5, 56.7, 56.1, 56.5, 96.7, 9.3),
            ("pdrop", None): _row(56.1, 58.0, 54.1, 56.4, 56.2, 96.2, 10.5),
            ("dycoke", 0.25): _row(53.1, 59.5, 49.5, 54.3, 54.1, 92.6, 8.7),
            ("visionzip", 0.25): _row(57.9, 60.3, 56.5, 58.2, 58.2, 99.7, 8.7),
            ("prunevid", 0.25): _row(57.4, 59.9, 55.7, 57.4, 57.6, 98.6, 8.7),
            ("fastvid", 0.25): _row(56.5, None, 56.3, 58.0, None, None, 8.7),
            ("aot", 0.25): _row(58.5, 61.0, 56.0, 56.9, 58.1, 99.5, 8.7),
            ("visionzip", 0.2): _row(57.7, 59.8, 55.2, 57.9, 57.7, 98.8, 7.0),
            ("prunevid", 0.2): _row(57.2, 59.7, 54.7, 56.9, 57.1, 97.8, 7.0),
            ("fastvid", 0.2): _row(56.3, None, 57.1, 57.9, None, None, 7.0),
            ("aot", 0.2): _row(58.3, 61.4, 56.1, 56.8, 58.2, 99.7, 7.0),
            ("visionzip", 0.15): _row(56.5, 59.8, 54.4, 56.1, 56.7, 97.1, 5.2),
            ("prunevid", 0.15): _row(56.8, 59.7, 55.4, 56.6, 57.1, 97.8, 5.2),
            ("fastvid", 0.15): _row(56.0, None, 56.2, 57.7, None, None, 5.2),
            ("aot", 0.15): _row(57.7, 61.3, 55.1, 56.1, 57.6, 98.6, 5.2),
            ("visionzip", 0.1): _row(53.5, 58.0, 49.3, 53.4, 53.5, 91.6, 3.4),
            ("prunevid", 0.1): _row(56.2, 59.8, 54.5, 56.0, 56.6, 96.9, 3.4),
            ("fastvid", 0.1): _row(55.9, None, 56.3, 57.3, None, None, 3.4),
            ("aot", 0.1): _row(57.2, 60.3, 53.8, 56.6, 57.0, 97.6, 3.4),
        },
    },
    "LLaVA-Video-7B": {
        "table": "Table 2", "frames": 64,
        "rows": {
            ("vanilla", 1.0): _row(60.4, 57.2, 58.9, 64.3, 60.2, 100.0, 80.2),
            ("fastv", 0.2): _row(54.3, 54.1, 55.0, 58.8, 55.6, 92.4, 17.1),
            ("pdrop", None): _row(55.9, 54.3, 54.7, 61.9, 56.7, 94.2, 19.5),
            ("visionzip", 0.25): _row(56.7, 54.7, 54.7, 60.7, 56.7, 94.2, 9.3),
            ("dycoke", 0.25): _row(50.8, None, 53.0, 56.9, None, None, 9.3),
            ("aot", 0.25): _row(59.2, 55.6, 55.9, 62.4, 58.3, 96.8, 9.3),
            ("visionzip", 0.15): _row(56.7, 54.7, 54.7, 60.7, 56.7, 94.2, 9.3),
            ("aot", 0.15): _row(57.7, 54.8, 54.6, 61.9, 57.3, 95.1, 9.3),
        },
    },
}
# our methods whose rows the paper's AOT row stands beside (``aot`` runs our defaults, ``aot-paper``
# the paper's stated knobs)
_PAPER_METHOD = {"aot-paper": "aot"}

# model args that do not change what is measured (where and how fast it runs)
_RUN_ONLY_ARGS = {"pretrained", "device", "dtype", "threads", "device_map", "batch_size"}


@dataclass
class Run:
    """One lmms-eval run: its results file and what its samples logged."""

    path: str
    date: str
    lmms_model: str  # lmms-eval's model name (aot_llava_onevision, ...)
    pretrained: str
    model_args: dict
    method: str
    config: dict  # the method's full config as logged ({} for vanilla or when no sample was logged)
    frames: int | None
    video_layout: str | None
    scores: dict  # task -> accuracy in percent
    metrics: dict  # task -> the metric read
    samples: dict  # task -> samples in the results
    visual_tokens: list = field(default_factory=list)  # per logged sample
    visual_tokens_in: list = field(default_factory=list)

    @property
    def retention(self) -> float | None:
        if self.method == "vanilla":
            return 1.0
        raw = self.config.get("retention", self.model_args.get("retention"))
        return None if raw is None else float(raw)

    @property
    def model_key(self) -> tuple:
        return (self.pretrained, self.frames, self.video_layout)

    @property
    def setting_key(self) -> str:
        if self.config:
            return json.dumps({"method": self.method, **self.config}, sort_keys=True)
        args = {k: v for k, v in self.model_args.items() if k not in _RUN_ONLY_ARGS | {"frames", "max_frames_num"}}
        return json.dumps(args, sort_keys=True)


@dataclass
class Row:
    """One setting of one model: accuracies, tokens, FLOPs, and the paper's row where it has one."""

    method: str
    retention: float | None
    label: str
    scores: dict
    average: float | None
    of_full: float | None  # % of the same model's vanilla run, over the tasks both ran
    visual_tokens: float | None
    visual_tokens_in: float | None
    prefill_tflops: float | None
    paper: dict | None
    runs: list  # results files this row was read from
    notes: list = field(default_factory=list)


@dataclass
class ModelReport:
    pretrained: str
    frames: int | None
    video_layout: str | None
    lmms_model: str
    tasks: list
    rows: list
    paper_model: str | None
    flops_from: str | None  # where the LLM's shape came from
    notes: list = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def parse_model_args(raw: str) -> dict:
    """lmms-eval's ``key=value,key=value`` model args as a dict of strings."""
    out = {}
    for part in filter(None, (raw or "").split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out


def _metric(task_results: dict, higher: dict) -> tuple[str, float] | None:
    """The task's first higher-is-better numeric metric (filter ``none`` first), as (name, value)."""
    found = []
    for key, value in task_results.items():
        if key == "alias" or "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name, _, filt = key.partition(",")
        if name.endswith("_stderr") or "_stderr_" in name:
            continue
        found.append((0 if filt == "none" else 1, 0 if higher.get(name) is True else 1, name, float(value)))
    if not found:
        return None
    _, _, name, value = min(found, key=lambda t: t[:2])
    return name, value


# metrics whose scale is known (lmms-eval 0.7.3's task files): percents, and fractions of 1
PERCENT_METRICS = {"mvbench_accuracy", "videomme_perception_score"}
FRACTION_METRICS = {"lvb_acc", "score", "accuracy", "acc", "exact_match"}


def _as_percent(metric: str, value: float) -> float:
    """A task's score in percent: known metrics by their scale, others read as a fraction when at most 1."""
    if metric in PERCENT_METRICS:
        return value
    if metric in FRACTION_METRICS:
        return 100.0 * value
    return 100.0 * value if abs(value) <= 1.0 else value


def task_scores(results: dict) -> tuple[dict, dict, dict]:
    """(task -> percent, task -> metric, task -> samples) for the top-level tasks of a results file."""
    res = results.get("results", {})
    groups = results.get("group_subtasks", {}) or {t: [] for t in res}
    higher = results.get("higher_is_better", {})
    n_samples = results.get("n-samples", {})
    subtasks = {s for subs in groups.values() for s in subs}

    def score(task: str):
        got = _metric(res.get(task, {}), higher.get(task, {}))
        if got is not None:
            n = n_samples.get(task, {}).get("effective")
            return _as_percent(got[0], got[1]), got[0], n
        parts = [score(s) for s in groups.get(task, [])]
        parts = [p for p in parts if p is not None and p[2]]
        if not parts:
            return None
        total = sum(p[2] for p in parts)
        return sum(p[0] * p[2] for p in parts) / total, f"mean of {len(parts)} subtasks", total

    scores, metrics, counts = {}, {}, {}
    for task in groups:
        if task in subtasks:
            continue
        got = score(task)
        if got is not None:
            scores[task], metrics[task], counts[task] = got
    return scores, metrics, counts


def _samples_files(results_path: Path) -> list[Path]:
    prefix = results_path.name[: -len("_results.json")]
    return sorted(results_path.parent.glob(f"{prefix}_samples_*.jsonl"))


def read_run(path: Path) -> Run:
    """One lmms-eval results file and its logged samples."""
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON file ({err})") from None
    cfg = results.get("config") or {}
    if "results" not in results or "model_args" not in cfg:
        raise ValueError(f"{path}: not an lmms-eval results file (no 'results' or 'config.model_args')")
    args = parse_model_args(cfg.get("model_args") if isinstance(cfg.get("model_args"), str) else "")
    if isinstance(cfg.get("model_args"), dict):
        args = {k: str(v) for k, v in cfg["model_args"].items()}
    scores, metrics, counts = task_scores(results)
    aot_info, tokens, tokens_in = None, [], []
    for f in _samples_files(path):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            sample = json.loads(line)
            for tc in sample.get("token_counts") or []:
                info = tc.get("aot") if isinstance(tc, dict) else None
                if info:
                    aot_info = aot_info or info
                    tokens.append(info["visual_tokens"])
                    if info.get("visual_tokens_in") is not None:
                        tokens_in.append(info["visual_tokens_in"])
    method = (aot_info or {}).get("method") or args.get("method", "aot")
    frames = (aot_info or {}).get("frames") or args.get("frames") or args.get("max_frames_num")
    return Run(path=str(path), date=str(results.get("date", path.name)), lmms_model=str(cfg.get("model", "?")),
               pretrained=args.get("pretrained", "?"), model_args=args, method=method,
               config=dict((aot_info or {}).get("config") or {}), frames=int(frames) if frames else None,
               video_layout=(aot_info or {}).get("video_layout") or args.get("video_layout"),
               scores=scores, metrics=metrics, samples=counts, visual_tokens=tokens, visual_tokens_in=tokens_in)


def load_runs(paths) -> list[Run]:
    """Every lmms-eval run under ``paths`` (folders, searched recursively, or results files)."""
    files = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(p.rglob("*_results.json"))
            if not found:
                raise ValueError(f"{p}: no lmms-eval results (*_results.json) under this folder; "
                                 "pass the folder given to lmms-eval's --output_path")
            files += found
        else:
            raise ValueError(f"{p}: no such file or folder")
    return [read_run(f) for f in dict.fromkeys(files)]


# --------------------------------------------------------------------------- FLOPs


def _preset_for(name: str) -> str | None:
    n = name.lower()
    if n == "aot:dinov2-smollm2":
        return "dinov2-s+smollm2-135m"
    size = next((s for s in ("0.5b", "3b", "7b") if s in n), None)
    if "qwen2.5-vl" in n or "qwen2_5_vl" in n:
        return {"3b": "qwen2.5-vl-3b", "7b": "qwen2.5-vl-7b"}.get(size)
    if "llava-video" in n or "llava_video" in n:
        return "llava-video-7b" if size == "7b" else None
    if "onevision" in n:
        return {"0.5b": "llava-onevision-0.5b", "7b": "llava-onevision-7b"}.get(size)
    return None


def llm_spec(pretrained: str):
    """(LLMSpec, where it came from) for a checkpoint, or (None, None)."""
    from .flops import get_spec, spec_from_config

    local = Path(pretrained) / "config.json"
    if local.is_file():
        return spec_from_config(local).llm, str(local)
    if not pretrained.startswith("aot:"):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(pretrained, "config.json")
            if isinstance(cached, str):
                return spec_from_config(cached).llm, cached
        except Exception:  # noqa: BLE001  no hub library or not a repo id: fall back to a preset
            pass
    preset = _preset_for(pretrained)
    if preset is not None:
        return get_spec(preset).llm, f"preset {preset}"
    return None, None


def _sample_flops(spec, run: Run) -> list[float]:
    from . import methods
    from .flops import inllm_tokens_per_layer, prefill_flops, schedule_prefill_flops

    m = methods.get(run.method) if run.method != "vanilla" and run.method in methods.names() else None
    if m is not None and m.in_llm:
        cfg = m.config(**{k: tuple(v) if isinstance(v, list) else v for k, v in run.config.items()})
        return [schedule_prefill_flops(spec, inllm_tokens_per_layer(m, cfg, n, spec.layers))
                for n in run.visual_tokens_in]
    return [prefill_flops(spec, n) for n in run.visual_tokens]


# --------------------------------------------------------------------------- the report


def paper_model(pretrained: str, video_layout: str | None) -> str | None:
    n = pretrained.lower()
    if "7b" not in n:
        return None
    if video_layout == "llava-video" or "llava-video" in n or "llava_video" in n:
        return "LLaVA-Video-7B"
    if "onevision" in n:
        return "LLaVA-OV-7B"
    return None


def paper_row(model: str | None, method: str, retention: float | None) -> dict | None:
    if model is None:
        return None
    rows = PAPER[model]["rows"]
    method = _PAPER_METHOD.get(method, method)
    for (m, r), row in rows.items():
        if m == method and (r is None or (retention is not None and math.isclose(r, retention))):
            return {"table": PAPER[model]["table"], "model": model, "frames": PAPER[model]["frames"],
                    "method": m, "retention": r, **row}
    return None


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _label(method: str, config: dict, args: dict) -> str:
    ret = config.get("retention", args.get("retention"))
    label = method if method == "vanilla" or ret is None else f"{method} {float(ret):.0%}"
    return label


def build(runs: list[Run]) -> list[ModelReport]:
    """Group runs by model and setting; one Row per setting (tasks merged, the latest run per task)."""
    by_model: dict[tuple, list[Run]] = {}
    for r in runs:
        by_model.setdefault(r.model_key, []).append(r)
    reports = []
    for (pretrained, frames, layout), model_runs in by_model.items():
        notes = []
        spec, spec_from = llm_spec(pretrained)
        if spec is None:
            notes.append(f"no config.json found for {pretrained!r} (not a folder, not in the Hugging Face cache, "
                         "no preset matched): prefill FLOPs are n/a")
        if pretrained.startswith("aot:"):
            notes.append(f"{pretrained} is the real-weights stand-in (DINOv2 + SmolLM2 joined by a random "
                         "projector): its answers, so its accuracies, are meaningless; its tokens and FLOPs are real")
        pm = paper_model(pretrained, layout)
        if pm is not None and frames is not None and frames != PAPER[pm]["frames"]:
            notes.append(f"the paper's {PAPER[pm]['table']} ran {pm} at {PAPER[pm]['frames']} frames; "
                         f"these runs used {frames}")
        settings: dict[str, list[Run]] = {}
        for r in sorted(model_runs, key=lambda r: r.date):
            settings.setdefault(r.setting_key, []).append(r)
        rows = []
        for group in settings.values():
            scores, metrics, row_notes = {}, {}, []
            for r in group:  # later runs override earlier ones task by task
                for t, v in r.scores.items():
                    if t in scores:
                        row_notes.append(f"{t}: {Path(r.path).name} replaces an earlier run")
                    scores[t] = v
            first = group[-1]
            tokens = [n for r in group for n in r.visual_tokens]
            tokens_in = [n for r in group for n in r.visual_tokens_in]
            flops = [f for r in group for f in (_sample_flops(spec, r) if spec is not None else [])]
            rows.append(Row(method=first.method, retention=first.retention,
                            label=_label(first.method, first.config, first.model_args), scores=scores,
                            average=_mean(list(scores.values())), of_full=None, visual_tokens=_mean(tokens),
                            visual_tokens_in=_mean(tokens_in),
                            prefill_tflops=None if not flops else _mean(flops) / 1e12,
                            paper=paper_row(pm, first.method, first.retention), runs=[r.path for r in group],
                            notes=row_notes))
        full = [row for row in rows if row.method == "vanilla"]
        if len(full) > 1:
            notes.append(f"{len(full)} vanilla settings; % of full uses the first")
        if full:
            for row in rows:
                common = [t for t in row.scores if t in full[0].scores]
                ref = sum(full[0].scores[t] for t in common)
                if common and ref > 0:
                    row.of_full = 100.0 * sum(row.scores[t] for t in common) / ref
        else:
            notes.append("no full-token run (method=vanilla) of this model: % of full is n/a")
        rows.sort(key=lambda row: (row.method != "vanilla", row.method, -(row.retention or 0)))
        tasks = sorted({t for row in rows for t in row.scores}, key=lambda t: (t not in PAPER_TASKS, t))
        reports.append(ModelReport(pretrained=pretrained, frames=frames, video_layout=layout,
                                   lmms_model=model_runs[0].lmms_model, tasks=tasks, rows=rows, paper_model=pm,
                                   flops_from=spec_from, notes=notes))
    return reports


def _fmt(v, digits=1, suffix="") -> str:
    return "n/a" if v is None else f"{v:.{digits}f}{suffix}"


def _fmt_flops(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if v >= 0.01 else f"{v:.3g}"


def markdown(reports: list[ModelReport]) -> str:
    """The report as Markdown: one table per model, then the paper's rows for the same settings."""
    out = []
    for rep in reports:
        head = f"## {rep.pretrained}"
        bits = [f"lmms-eval model `{rep.lmms_model}`"]
        if rep.frames:
            bits.append(f"{rep.frames} frames")
        if rep.video_layout:
            bits.append(f"layout {rep.video_layout}")
        out += [head, "", ", ".join(bits) + (f"; LLM shape for FLOPs: {rep.flops_from}" if rep.flops_from else ""), ""]
        cols = [PAPER_TASKS.get(t, t) + (" (ours / paper)" if t in PAPER_TASKS and rep.paper_model else "")
                for t in rep.tasks]
        out.append("| method | retention | " + " | ".join(cols) + " | average | % of full | visual tokens "
                   "| prefill TFLOPs (Eq. 17) |")
        out.append("|---|---:|" + "---:|" * len(cols) + "---:|---:|---:|---:|")
        for row in rep.rows:
            cells = []
            for t in rep.tasks:
                cell = _fmt(row.scores.get(t))
                if t in PAPER_TASKS and rep.paper_model:
                    cell += " / " + _fmt((row.paper or {}).get(PAPER_TASKS[t]))
                cells.append(cell)
            tokens = _fmt(row.visual_tokens)
            if row.visual_tokens_in is not None and row.visual_tokens is not None \
                    and abs(row.visual_tokens_in - row.visual_tokens) > 1e-9:
                tokens += f" of {_fmt(row.visual_tokens_in)}"
            out.append(f"| {row.method} | {_fmt(row.retention and 100 * row.retention, 0, '%')} | "
                       + " | ".join(cells) + f" | {_fmt(row.average)} | {_fmt(row.of_full, 1, '%')} | {tokens} | "
                       f"{_fmt_flops(row.prefill_tflops)} |")
        matched = [row for row in rep.rows if row.paper]
        if rep.paper_model:
            table = PAPER[rep.paper_model]
            out += ["", f"The paper's {table['table']} ({rep.paper_model}, {table['frames']} frames) for the same "
                        "settings (accuracy %, prefill TFLOPs of the visual tokens):", ""]
            if matched:
                out.append("| method | retention | " + " | ".join(_COLS) + " |")
                out.append("|---|---:|" + "---:|" * len(_COLS))
                for row in matched:
                    p = row.paper
                    ret = "100% (in the LLM)" if p["method"] in ("fastv", "pdrop") else _fmt(100 * p["retention"], 0, "%")
                    out.append(f"| {row.method} | {ret} | " + " | ".join(_fmt(p[c]) for c in _COLS) + " |")
            else:
                out.append("(no setting here matches one of the paper's rows)")
        notes = rep.notes + [n for row in rep.rows for n in row.notes]
        if notes:
            out += [""] + [f"- {n}" for n in notes]
        out.append("")
    out.append("Accuracy: each task's main metric in percent (a group without its own score: the mean of its "
               "subtasks weighted by samples); % of full: the setting's summed accuracy over the vanilla run's, "
               "on the tasks both ran; visual tokens: mean per logged sample that the LLM's "
               "layers see (FastV/PDrop: after their last pruning layer), 'of' the video's placeholder tokens where they differ; prefill TFLOPs: mean per sample of the paper's "
               "Eq. 17 on the visual tokens (FastV/PDrop: per layer by their schedule).")
    return "\n".join(out) + "\n"


def to_json(reports: list[ModelReport]) -> dict:
    return {"models": [asdict(r) for r in reports]}


def plot(reports: list[ModelReport], path) -> None:
    """Average accuracy against retention, one panel per model, one line per method; the full-token
    run as a dashed line in the legend. The x axis always spans 0-100%, so one retention is readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports):
        methods = {}
        for row in rep.rows:
            if row.method != "vanilla" and row.retention is not None and row.average is not None:
                methods.setdefault(row.method, []).append((100 * row.retention, row.average))
        markers = "osD^v<>ph*"
        for i, (name, pts) in enumerate(sorted(methods.items())):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], label=name,
                    alpha=0.85)
        for row in rep.rows:
            if row.method == "vanilla" and row.average is not None:
                ax.axhline(row.average, color="k", linestyle="--", label=f"vanilla (100%): {row.average:.1f}")
                break
        if rep.paper_model:
            pts = sorted((100 * r, row["Avg"]) for (m, r), row in PAPER[rep.paper_model]["rows"].items()
                         if m == "aot" and row["Avg"] is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="grey", linestyle=":", marker="x",
                    label=f"paper: AOT ({PAPER[rep.paper_model]['table']}, its tasks)")
        ax.set_xlim(0, 105)
        ax.set_xlabel("retention (% of visual tokens kept before the LLM)")
        ax.set_ylabel(f"average accuracy over {len(rep.tasks)} task(s), %")
        ax.set_title(Path(rep.pretrained).name or rep.pretrained, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="accuracy, %% of full, visual tokens and prefill FLOPs per model and "
                                             "method from lmms-eval output folders, beside the paper's Tables 1/2")
    p.add_argument("logdirs", nargs="+", metavar="LOGDIR",
                   help="lmms-eval --output_path folders (searched recursively) or *_results.json files")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON (default: none)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw average accuracy against retention per method (default: none)")
    return p


def run_report(args: argparse.Namespace) -> int:
    from .runtime import check_output_path

    for flag, value in (("--json", args.json), ("--plot", args.plot)):
        if value is not None:
            check_output_path(value, flag)
    reports = build(load_runs(args.logdirs))
    print(markdown(reports), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(reports), indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(reports, args.plot)
        print(f"wrote {args.plot}")
    return 0
