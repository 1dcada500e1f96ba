"""``aot eval``: multiple-choice video QA (MVBench/VideoMME style) over a grid of methods and
retentions, batched, resumable, with a Markdown table and a plot.

    aot eval --questions qa.jsonl --model llava-hf/llava-onevision-qwen2-7b-ov-hf \\
             --methods aot,visionzip --retention 0.1,0.25 --batch-size 4 --out results/

Every answer is appended to the cache (``--cache``, default ``OUT/answers.jsonl``) as one JSON
line the moment its batch finishes: question id, method, retention, the method's full config,
predicted letter, raw reply, visual tokens the LLM received (FastV/PDrop, which prune inside the LLM: those
left after their last pruning layer; newlines apart in ``newline_tokens``; ``visual_tokens_in``: the
processor's placeholders), time, and the stages, time to first token and peak memory of the
efficiency protocol (``aot.efficiency``, docs/efficiency.md). In-LLM methods need the same number of video tokens in every row of a ``generate`` call: a batch mixing
counts runs as sub-batches of equal count. A rerun with the same settings
computes only what the cache lacks (an interrupted run resumes; a finished one only re-renders
the table). A cache line belongs to a setting (the checkpoint's content, frames, generation length,
layout, positions, layers, prompt, method config) and to the question's content (the video file's
SHA-256, question, options), so changing any of them recomputes just those answers and keeps the
old lines; paths are kept in the lines for display (``aot.eval.cache``, docs/errors.md).

Before any model work: the arguments, the device, ``--model`` (a path-like value that does not
exist; ``--layers`` against the tower's depth from its config), the questions, ``--out``, ``--cache``
(an answers cache, a regular writable file), the cache's lock (a second run on it is refused) and
every video's header (a file that is not a video of >= 2 frames, or whose frames would exceed
``AOT_MAX_FRAME_BYTES``, is recorded as an error line, as is a video that fails to decode later:
the run goes on and ``results.md`` counts and lists them).

Outputs in ``--out``: ``results.md`` (replies, answered: the replies naming an option letter,
accuracy with a 95% Wilson interval, mean visual tokens,
mean LLM prefill FLOPs of the visual tokens (paper Eq. 17, ``aot.flops``), seconds of ``generate``
per sample), ``results.json`` (also mean stage times and TTFT, largest peak memory) and
``accuracy.png`` (accuracy against retention, one line and marker per method, vanilla dashed with
its interval as a band). The stand-in's outputs say its answers are meaningless by design.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["add_eval_parser", "eval_cli", "wilson", "read_cache", "render"]

PROMPT_VERSION = "mvbench-v1"  # bump when the prompt or the parsing changes: cached answers are then stale


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    from ..run import STANDIN

    p = subparsers.add_parser("eval", help="multiple-choice video QA over a grid of methods and retentions "
                                           "(resumable; Markdown table and plot)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", required=True, help="JSONL: id, video, question, options, answer (a letter)")
    p.add_argument("--model", required=True, help=f"hub id or local folder of a LLaVA-OneVision/LLaVA-Video or "
                                                  f"Qwen2.5-VL checkpoint, or {STANDIN}")
    p.add_argument("--methods", default="aot", help="comma-separated methods (see `aot methods`)")
    p.add_argument("--retention", default="0.1,0.25", help="comma-separated retentions for every method")
    p.add_argument("--no-vanilla", action="store_true", help="skip the uncompressed model (retention 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a config field for every method that has it, e.g. --set n_iters=50 (repeatable)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled uniformly (lmms-eval's rule)")
    p.add_argument("--batch-size", type=int, default=1, help="questions per generate call (left padding)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate (MVBench: 16)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--out", default="aot_eval", help="folder for results.md, results.json, accuracy.png")
    p.add_argument("--cache", default=None, help="answers JSONL (default: OUT/answers.jsonl)")
    p.add_argument("--video-layout", default="onevision", choices=("onevision", "llava-video"),
                   help="LLaVA checkpoints only (see aot run)")
    p.add_argument("--positions", default="contiguous", choices=("contiguous", "original"),
                   help="LLaVA checkpoints only (see aot run)")
    p.add_argument("--layers", default=None, help="vision layers LOCAL,GLOBAL that score the anchors (default: "
                                                  "LLaVA 5,-2; Qwen2.5-VL its first and last full-attention block)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights' dtype; auto: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--threads", default=None, help="torch CPU threads (aot.cli sets the default and help)")
    p.add_argument("--retry-errors", action="store_true",
                   help="try again the questions recorded as errors (a video that could not be read; by default "
                        "they are retried only when the video's content changes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@dataclass(frozen=True)
class Setting:
    method: str  # registry name or "vanilla"
    retention: float
    config: dict  # the full config (plain JSON)
    key: str  # hash of everything that changes an answer except the question
    method_obj: object = None
    config_obj: object = None


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n ((0, 1) for n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends (no rounding residue)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _floats(raw: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} needs comma-separated numbers, got {raw!r}") from None
    if not vals:
        raise ValueError(f"{what} is empty")
    return vals


def build_grid(args, layers, model_fingerprint: str | None = None) -> list[Setting]:
    """The settings to answer with; each key hashes everything that changes an answer except the
    question: the checkpoint's content (``model_fingerprint``; None: the ``--model`` string), frames,
    generation length, layout, positions, layers, prompt version and the method's full config."""
    import dataclasses

    from .. import methods
    from .engine import VANILLA, config_dict, method_config, parse_overrides

    overrides = parse_overrides(args.overrides)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    retentions = _floats(args.retention, "--retention")
    used = set()
    base = {"model": args.model if model_fingerprint is None else f"content:{model_fingerprint}", "frames": args.frames, "max_new_tokens": args.max_new_tokens,
            "video_layout": args.video_layout, "positions": args.positions,
            "layers": list(layers) if layers is not None else "model default",
            "prompt": PROMPT_VERSION}

    def key(method: str, cfg: dict) -> str:
        blob = json.dumps({**base, "method": method, "config": cfg}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    grid = [] if args.no_vanilla else [Setting(VANILLA, 1.0, {}, key(VANILLA, {}))]
    for name in names:
        m = methods.get(name)
        fields = {f.name for f in dataclasses.fields(m.config_cls)}
        mine = {k: v for k, v in overrides.items() if k in fields and k != "retention"}
        used |= set(mine)
        for r in retentions:
            _, cfg = method_config(name, r, mine)
            d = config_dict(cfg)
            grid.append(Setting(name, float(r), d, key(name, d), m, cfg))
    unused = set(overrides) - used
    if unused:
        raise ValueError(f"--set {', '.join(sorted(unused))}: no method in --methods has such a config field"
                         + (" (set retention with --retention)" if "retention" in unused else ""))
    if not grid:
        raise ValueError("nothing to run: no --methods and --no-vanilla")
    return grid


# --------------------------------------------------------------------------------------- cache

def read_cache(path: Path) -> tuple[dict[tuple[str, str, str], dict], int]:
    """{(setting key, question id, content hash): entry}, and the number of unusable lines (a line
    cut by a killed run or a full disk, in any byte of any character, or missing a field, is skipped
    and recomputed; ``aot.eval.cache.read_lines`` gives their line numbers)."""
    from .cache import read_lines

    entries, bad = read_lines(path)
    return entries, len(bad)


def _prefill_tflops(flops, spec, setting, res, i: int) -> float:
    """LLM prefill TFLOPs of the visual tokens; in-LLM methods (FastV, PDrop) by their layer schedule."""
    m = setting.method_obj
    if m is not None and m.in_llm:
        tokens = flops.inllm_tokens_per_layer(m, m.effective_config(setting.config_obj), res.last["tokens_in"],
                                              spec.layers)
        return flops.schedule_prefill_flops(spec, tokens) / 1e12
    return flops.prefill_flops(spec, res.visual_tokens[i]) / 1e12


def _append(path: Path, lines: list[dict]) -> None:
    from .cache import append

    append(path, lines)


# --------------------------------------------------------------------------------------- run

def _error_lines(args, grid, pending, q, message: str) -> list[dict]:
    """Error records of question ``q`` for every setting still owing its answer (removed from ``pending``)."""
    lines = []
    for s in grid:
        if q.id in pending[s.key]:
            pending[s.key].discard(q.id)
            lines.append({"id": q.id, "question_hash": q.content_hash, "key": s.key, "method": s.method,
                          "retention": s.retention, "config": s.config, "error": message,
                          "video": str(q.video), "model": args.model, "frames": args.frames})
    return lines


def probe_videos(questions, frames: int) -> dict:
    """{video path: why it cannot be used} for every distinct video of ``questions`` whose header
    does not read as a video of >= 2 frames (``aot.checks.check_video``); header reads only, no
    decoding. Sampled frames over the memory limit (``AOT_MAX_FRAME_BYTES``) are a ValueError: the
    run is refused, since --frames, not the video, is at fault."""
    from ..checks import check_video
    from ..video import FrameMemoryError

    bad, too_big = {}, []
    for video in dict.fromkeys(q.video for q in questions):
        try:
            check_video(video, frames, flag="video")
        except FrameMemoryError as err:  # --frames is the user's setting: refused, not recorded
            too_big.append(str(err))
        except (ValueError, OSError) as err:
            bad[video] = str(err)
    if too_big:
        more = f" (and {len(too_big) - 1} more video(s))" if len(too_big) > 1 else ""
        raise ValueError(f"--frames {frames}: video {too_big[0]}{more}")
    return bad


def _run(args, questions, grid, cache_path: Path, cache: dict, layers, device: str = None,
         unreadable: dict | None = None) -> int:
    import torch
    from tqdm import tqdm

    from .. import flops
    from ..efficiency import STANDIN_NOTE
    from ..run import STANDIN, _dtype, load
    from ..video import read_frames
    from .engine import pad_token_id, sub_batches
    from .questions import mvbench_prompt

    unreadable = unreadable or {}
    if getattr(args, "retry_errors", False):  # error lines count as missing: those questions are tried again
        cache = {k: e for k, e in cache.items() if "error" not in e}
    pending = {s.key: {q.id for q in questions if (s.key, q.id, q.content_hash) not in cache} for s in grid}
    todo = sum(len(v) for v in pending.values())
    total = len(grid) * len(questions)
    errors = []
    for q in questions:
        if q.video in unreadable:
            errors += _error_lines(args, grid, pending, q, unreadable[q.video])
    if errors:
        _append(cache_path, errors)
        for video, why in unreadable.items():
            print(f"aot eval: warning: {why}; its questions are recorded as errors", file=sys.stderr)
    print(f"aot eval: {len(questions)} questions x {len(grid)} settings = {total} answers; "
          f"{total - todo} cached, {len(errors)} unreadable (recorded as errors), {todo - len(errors)} to compute",
          flush=True)
    todo -= len(errors)
    if todo == 0:
        return len(errors)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model, make_inputs, decode = load(args.model, dtype=_dtype(args.dtype, device), device=device)
    load_s = time.perf_counter() - t0
    print(f"aot eval: loaded {args.model} in {load_s:.1f} s (stage 'load' of every line computed now)", flush=True)
    if args.model == STANDIN:
        print(f"aot eval: note: {STANDIN_NOTE}", flush=True)
    pad = pad_token_id(model)
    spec = flops.spec_from_config(model.config.to_dict()["text_config"]).llm
    need = [q for q in questions if any(q.id in pending[s.key] for s in grid)]
    bar = tqdm(total=todo, unit="answer", disable=args.no_progress, dynamic_ncols=True, file=sys.stderr)
    try:
        for start in range(0, len(need), args.batch_size):
            batch = need[start:start + args.batch_size]
            prepared, damage, failed, read = {}, {}, [], {}
            for q in batch:
                try:
                    t0 = time.perf_counter()
                    clip = read_frames(q.video, args.frames)
                    t1 = time.perf_counter()
                    prepared[q.id] = make_inputs(clip.frames, mvbench_prompt(q.question, q.options), clip)
                    read[q.id] = (t1 - t0, time.perf_counter() - t1)  # decode, preprocess
                except (ValueError, OSError) as err:  # a video that fails to decode: an error record, go on
                    print(f"aot eval: warning: question {q.id!r} ({q.video}): {err}; recorded as an error",
                          file=sys.stderr)
                    failed += _error_lines(args, grid, pending, q, f"decoding failed: {err}")
                    continue
                if clip.damage:
                    damage[q.id] = clip.damage
                    print(f"aot eval: warning: {q.video}: {clip.damage} (question {q.id!r})", file=sys.stderr)
            if failed:
                _append(cache_path, failed)
                bar.update(len(failed))
            batch = [q for q in batch if q.id in prepared]
            if not batch:
                continue
            for s in grid:
                rows = [q for q in batch if q.id in pending[s.key]]
                if not rows:
                    continue
                items = [prepared[q.id] for q in rows]
                lines = []
                for group in sub_batches(model, s.method_obj, items):  # in-LLM methods: equal video tokens
                    lines += _answer(args, s, [rows[i] for i in group], [items[i] for i in group], model, decode,
                                     pad, spec, layers, read, device, load_s)
                for line in lines:
                    if line["id"] in damage:
                        line["video_damage"] = damage[line["id"]]
                _append(cache_path, lines)
                bar.update(len(rows))
    finally:
        bar.close()
    return todo + len(errors)


def _answer(args, s, rows, items, model, decode, pad, spec, layers, read, device, load_s=0.0) -> list[dict]:
    """Cache lines of one ``generate`` call over ``rows`` (their processor outputs ``items``; ``read``:
    {question id: (decode s, preprocess s)}). Each line carries the stages of ``aot.efficiency`` (the
    batch's model stages divided by its size, the question's own decode and preprocess, the load of
    this process), its time to first token and the call's peak memory."""
    from .. import flops
    from ..efficiency import PeakMemory, model_stages, newline_tokens, stage_times, ttft
    from ..run import STANDIN, family, module_timer
    from .engine import collate, generate_batch
    from .questions import extract_letter

    inputs = collate(items, pad)
    with PeakMemory(device) as peak, module_timer(model.model.language_model, device) as lm_calls:
        res = generate_batch(model, inputs, decode, method=s.method_obj, config=s.config_obj,
                             gen_kwargs={"max_new_tokens": args.max_new_tokens, "do_sample": False},
                             video_layout=args.video_layout, positions=args.positions, layers=layers)
    shared = {k: v / len(rows) for k, v in model_stages(res.last, lm_calls).items()}
    fam = family(model)
    lines = []
    for i, q in enumerate(rows):
        nl = newline_tokens(fam, res.last, res.visual_tokens[i])
        stages = stage_times(load=load_s, decode=read[q.id][0], preprocess=read[q.id][1],
                             **{k.replace(" ", "_"): v for k, v in shared.items()})
        lines.append({
            "id": q.id, "question_hash": q.content_hash, "key": s.key, "method": s.method,
            "retention": s.retention, "config": s.config,
            "pred": extract_letter(res.texts[i], len(q.options)), "raw": res.texts[i],
            "visual_tokens": res.visual_tokens[i] - nl, "newline_tokens": nl,
            "visual_tokens_in": res.visual_tokens_in[i],
            "prompt_tokens": res.prompt_tokens[i],
            "new_tokens": res.new_tokens[i],
            "prefill_tflops": _prefill_tflops(flops, spec, s, res, i),
            "time_s": res.seconds / len(rows), "read_s": sum(read[q.id]), "batch": len(rows),
            "stages_s": stages, "ttft_s": ttft(stages), "peak_memory_bytes": peak.bytes, "memory_kind": peak.kind,
            "model": args.model, "video": str(q.video), "frames": args.frames, "device": device,
            **({"standin": True} if args.model == STANDIN else {}),
        })
    return lines


# --------------------------------------------------------------------------------------- report

def summarize(questions, grid, cache) -> list[dict]:
    rows = []
    for s in grid:
        got = [(q, cache.get((s.key, q.id, q.content_hash))) for q in questions]
        failed = [(q, e) for q, e in got if e is not None and "error" in e]
        got = [(q, e) for q, e in got if e is not None and "error" not in e]
        n = len(got)
        k = sum(1 for q, e in got if e["pred"] == q.answer)
        lo, hi = wilson(k, n)
        mean = lambda key: (sum(e[key] for _, e in got) / n) if n else float("nan")  # noqa: E731
        answered = sum(1 for _, e in got if e["pred"] is not None)  # replies that name an option letter
        rows.append({"method": s.method, "retention": s.retention, "n": n, "of": len(questions), "correct": k,
                     "answered": answered, "accuracy": k / n if n else float("nan"), "ci95": [lo, hi],
                     "visual_tokens": mean("visual_tokens"), "newline_tokens": mean("newline_tokens"),
                     "prefill_tflops": mean("prefill_tflops"),
                     "time_s": mean("time_s"), **_efficiency(e for _, e in got), "config": s.config, "key": s.key, "errors": len(failed),
                     "failed": [{"id": q.id, "video": str(q.video), "error": e["error"]} for q, e in failed]})
    return rows


def _visual(r: dict) -> str:
    """Mean visual tokens, newlines apart (``aot.efficiency.visual_tokens_text``'s form)."""
    from ..efficiency import visual_tokens_text

    if r["visual_tokens"] != r["visual_tokens"]:  # nan: no reply
        return "-"
    return visual_tokens_text(r["visual_tokens"], r.get("newline_tokens", 0.0)).removeprefix("visual tokens ")


def _efficiency(entries) -> dict:
    """Mean stage times and time to first token, and the largest peak memory, of the cache lines
    that carry them (``aot.efficiency``; absent: None)."""
    from ..efficiency import STAGES

    es = [e for e in entries if "stages_s" in e]
    if not es:
        return {"stages_s": None, "ttft_s": None, "peak_memory_bytes": None}
    peaks = [e["peak_memory_bytes"] for e in es if e.get("peak_memory_bytes") is not None]
    return {"stages_s": {k: sum(e["stages_s"].get(k, 0.0) for e in es) / len(es) for k in STAGES},
            "ttft_s": sum(e["ttft_s"] for e in es) / len(es), "peak_memory_bytes": max(peaks) if peaks else None,
            "memory_kind": es[0].get("memory_kind")}


def markdown(rows: list[dict], title: str = "", standin: bool = False) -> str:
    from ..efficiency import STANDIN_NOTE

    head = ("| method | retention | replies | answered (a letter) | errors | accuracy % (95% CI) | visual tokens | "
            "prefill TFLOPs | s / sample |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n")
    body = ""
    for r in rows:
        acc = (f"{100 * r['accuracy']:.1f} ({100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f})"
               if r["n"] else "-")
        fl = r["prefill_tflops"]
        body += (f"| {r['method']} | {r['retention']:g} | {r['n']}/{r['of']} | {r.get('answered', 0)}/{r['n']} | "
                 f"{r.get('errors', 0)} | {acc} | {_visual(r)} | {fl:.4g} | {r['time_s']:.3g} |\n")
    notes = ("\nReplies: questions the model replied to; answered: replies that name an option letter (lmms-eval "
             "MVBench rule; a reply without one counts as wrong). "
             "Accuracy: predicted letter equals the answer, over the replies; interval: Wilson, 95%. "
             "Visual tokens: video tokens the LLM received per sample, newlines counted apart (in-LLM methods: "
             "those left after their last pruning layer, the newline among them; the whole video enters the LLM). "
             "Prefill TFLOPs: "
             "paper Eq. 17 over the visual tokens, LLM only (in-LLM methods: summed over the layers by their "
             "schedule). s / sample: `generate` wall time of a batch "
             "divided by its size (video decoding excluded).\n")
    configs = "\nFull method configs:\n\n" + "".join(
        f"- {r['method']} @ {r['retention']:g}: `{json.dumps(r['config'], sort_keys=True)}`\n"
        for r in rows if r["config"])
    failed = {(f["id"], f["video"], f["error"]) for r in rows for f in r.get("failed", [])}
    errors = ("\nQuestions not answered (their video could not be read; counted under errors, not in the accuracy; "
              "fix or replace the video and rerun: its content changes, so they are recomputed):\n\n" + "".join(
                  f"- {qid} ({video}): {err}\n" for qid, video, err in sorted(failed))) if failed else ""
    note = f"**Note: {STANDIN_NOTE}.**\n\n" if standin else ""
    return (f"# {title}\n\n" if title else "") + note + head + body + notes + errors + configs


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def figure(rows: list[dict], title: str = ""):
    """The accuracy-against-retention Figure: one line per method with its 95% interval, each method
    with its own marker and, where several share a retention, shifted sideways by a small step so no
    point hides another; the x-axis spans 0 to past the largest retention (readable with a single
    one, ticks at the retentions run); vanilla as a dashed line and its interval as a band, both in
    the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "vanilla"]
    xs = sorted({r["retention"] for r in rows if r["method"] != "vanilla" and r["n"]})
    hi = max(xs) * 1.2 if xs else 1.0
    hi = max(hi, 0.3) if xs and max(xs) < 0.9 else 1.05
    step = 0.03 * hi  # sideways shift between methods at one retention (about two marker widths)
    drawn = [m for m in methods if any(r["method"] == m and r["n"] for r in rows)]
    for i, m in enumerate(drawn):
        rs = sorted((r for r in rows if r["method"] == m and r["n"]), key=lambda r: r["retention"])
        shift = (i - (len(drawn) - 1) / 2) * step
        x = [r["retention"] + shift for r in rs]
        y = [100 * r["accuracy"] for r in rs]
        err = [[max(0.0, 100 * (r["accuracy"] - r["ci95"][0])) for r in rs],
               [max(0.0, 100 * (r["ci95"][1] - r["accuracy"])) for r in rs]]  # >= 0 despite rounding
        ax.errorbar(x, y, yerr=err, marker=MARKERS[i % len(MARKERS)], markersize=6, capsize=3, alpha=0.85,
                    label=m)
    for r in rows:
        if r["method"] == "vanilla" and r["n"]:
            ax.axhline(100 * r["accuracy"], color="k", ls="--", lw=1, label="vanilla (retention 1)")
            ax.axhspan(100 * r["ci95"][0], 100 * r["ci95"][1], color="k", alpha=0.08, label="vanilla 95% CI")
    ax.set_xlim(0, hi)
    if xs:
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.set_ylim(-3, 103)
    ax.set_xlabel("retention (fraction of visual tokens kept)")
    ax.set_ylabel("accuracy %")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Save :func:`figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(rows, title)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def render(questions, grid, cache, out: Path, title: str, standin: bool = False) -> list[dict]:
    """results.md, results.json, accuracy.png in ``out``; ``standin``: every output says the model's
    answers are meaningless by design (``aot.efficiency.STANDIN_NOTE``)."""
    from ..efficiency import STANDIN_NOTE

    rows = summarize(questions, grid, cache)
    if standin:
        rows = [{**r, "standin": True, "note": STANDIN_NOTE} for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(rows, title, standin))
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out / "accuracy.png", title + (" (stand-in: random projector, accuracy meaningless)"
                                              if standin else ""))
    return rows


def _layers(raw):
    from ..run import _layers as parse

    return parse(raw)


def _video_digest(digests, video) -> str:
    """The video's SHA-256; "unreadable" when it cannot be read (the probe then records the error)."""
    try:
        return digests(video)
    except OSError:
        return "unreadable"


def eval_cli(args: argparse.Namespace) -> int:
    """Every check that reads no video frames and loads no weights runs first (arguments, device,
    --model path and tower depth, questions, --out, --cache, the lock, every video's header); then
    the answers the cache lacks are computed (a video that fails to decode is an error record), and
    the report is written."""
    import dataclasses

    import torch

    from .. import checks
    from ..run import STANDIN
    from . import cache as answers_cache
    from .questions import load_questions

    try:
        if args.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {args.frames}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        threads = checks.check_threads_arg(args.threads)
        device = checks.check_device(args.device)
        layers = _layers(args.layers)
        build_grid(args, layers)  # its errors before any file is read
        questions = load_questions(args.questions)[: args.limit]
        checks.check_model_path(args.model, STANDIN)
        checks.check_layer_range(layers, checks.tower_depth(args.model, STANDIN))
        out = checks.check_out_folder(args.out)
        cache_path = answers_cache.check_cache_path(Path(args.cache) if args.cache else out / "answers.jsonl",
                                                    questions=Path(args.questions))
        with answers_cache.lock(cache_path):
            cache, bad = answers_cache.read_lines(cache_path)
            if bad:
                shown = ", ".join(f"line {n} ({why})" for n, why in bad[:5]) + (" ..." if len(bad) > 5 else "")
                print(f"aot eval: warning: {len(bad)} unusable line(s) in {cache_path} skipped: {shown}; "
                      f"those answers are recomputed", file=sys.stderr)
            digests = answers_cache.Digests(cache_path.with_name(cache_path.name + ".digests.json"))
            t0 = time.perf_counter()
            grid = build_grid(args, layers, answers_cache.model_fingerprint(args.model, digests, STANDIN))
            questions = [dataclasses.replace(q, video_sha=_video_digest(digests, q.video)) for q in questions]
            digests.save()
            if time.perf_counter() - t0 > 5:
                print(f"aot eval: hashed the checkpoint and videos in {time.perf_counter() - t0:.0f} s (once: "
                      f"remembered in {digests.memo.name} until a file changes)", file=sys.stderr)
            unreadable = probe_videos(questions, args.frames)
            old = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                computed = _run(args, questions, grid, cache_path, cache, layers, device, unreadable)
            finally:
                torch.set_num_threads(old)
            if computed:
                cache, _ = answers_cache.read_lines(cache_path)
            rows = render(questions, grid, cache, out, f"{Path(args.questions).name} - {args.model}",
                          standin=args.model == STANDIN)
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        from ..runtime import error_message

        print(f"aot eval: error: {error_message(err)}", file=sys.stderr)
        return 2
    if args.model == STANDIN:
        from ..efficiency import STANDIN_NOTE

        print(f"aot eval: note: {STANDIN_NOTE}")
    print(markdown(rows).split("\nReplies:")[0])
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'accuracy.png'}; answers in {cache_path}")
    return 0
