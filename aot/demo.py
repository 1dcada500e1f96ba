"""The main job: a real video through a real ViT, compressed at several budgets, measured and drawn.

decode (PyAV, lmms-eval's uniform sampling, every frame at most once) -> DINOv2 ViT-S/14 at 378 px
(27x27 patches, pooled 2x2 to 14x14 like LLaVA-OneVision) with attention scores from a deep and a
shallow layer -> the method at each retention -> fidelity table -> one PNG of the kept tokens.

Everything that can be checked without decoding (arguments, output path, the video's header,
the method's budget at the frame count that will be sampled) is checked first by
:func:`plan_demo`, so a mistake costs milliseconds, not an encoding run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from .config import AOTConfig
from .efficiency import visual_tokens_text
from .fidelity import fidelity, full_readout
from .runtime import check_output_path, torch_threads

DEMO_ENCODER = ("DINOv2 ViT-S/14, real weights (the vision tower of the stand-in aot:dinov2-smollm2, whose LLM "
                "the demo does not use)")
DEMO_NOTE = ("no LLM and no answers here: the tables measure how well the compressed tokens keep the encoder's "
             "features; `aot run --model aot:dinov2-smollm2` answers through a random projector, meaningless by design")

__all__ = ["sample_video", "run_demo", "plan_demo", "DemoPlan", "token_grid", "check_layers",
           "VIT_LAYERS", "VIT_PATCH", "VIT_POOL"]

# DINOv2 ViT-S/14 as aot.models.dinov2.load_dinov2 builds it (tests check these against the model)
VIT_LAYERS = 12  # encoder layers: --layers indices lie in [-12, 11]
VIT_PATCH = 14  # patch size in pixels: the image size must be a multiple of it
VIT_POOL = 2  # the patch grid is pooled 2x2 like LLaVA-OneVision's video frames


def sample_video() -> Path:
    """The bundled Big Buck Bunny excerpt (CC-BY 3.0, Blender Foundation; see assets/ATTRIBUTION.txt)."""
    return Path(str(resources.files("aot") / "assets" / "bigbuckbunny.mp4"))


def token_grid(image_size: int) -> tuple[int, int]:
    """The (h, w) token grid the demo's encoder gives at ``image_size`` px: 378 -> 27x27 -> (14, 14)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < VIT_PATCH \
            or image_size % VIT_PATCH:
        raise ValueError(f"image size must be a positive multiple of the ViT's {VIT_PATCH} px patch "
                         f"(e.g. 378: 27x27 patches, pooled to 14x14 tokens), got {image_size!r}")
    side = math.ceil(image_size // VIT_PATCH / VIT_POOL)
    return side, side


def check_layers(layers) -> tuple[int, int]:
    """``layers`` as (deep, shallow) encoder layer indices valid for the demo's 12-layer ViT."""
    ok = (isinstance(layers, (tuple, list)) and len(layers) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in layers))
    if not ok or not all(-VIT_LAYERS <= v < VIT_LAYERS for v in layers):
        raise ValueError(f"layers must be two layer indices DEEP,SHALLOW of the {VIT_LAYERS}-layer ViT, each in "
                         f"{-VIT_LAYERS}..{VIT_LAYERS - 1} (negative counts from the last), got {layers!r}")
    return int(layers[0]), int(layers[1])


def check_picture_path(path, flag: str = "png") -> Path:
    """``path`` writable now, in an image format matplotlib can save (.png, .jpg, .pdf, .svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = check_output_path(path, flag)
    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix and suffix not in kinds:
        raise ValueError(f"{flag} {str(path)!r}: cannot draw a .{suffix} file; use one of "
                         f"{', '.join('.' + k for k in sorted(kinds))}")
    return path


class DemoPlan(NamedTuple):
    """What :func:`plan_demo` checked and decided, before any decoding."""

    video: Path
    total_frames: int  # frames in the video (header)
    frames: int  # frames that will be sampled: min(requested, total_frames)
    grid: tuple[int, int]  # token grid per frame after pooling
    runner: Any  # the aot.methods.Method
    configs: list  # the effective config at each retention (preset applied)


def plan_demo(video=None, *, frames: int = 32, retentions=(0.1, 0.15, 0.2, 0.25), config=None,
              png=None, image_size: int = 378, layers=(-2, 5), method: str = "aot") -> DemoPlan:
    """Check every argument of :func:`run_demo` and the method's budget; reads only the video header.

    Raises ValueError / TypeError / OSError (file not found, unreadable) naming the wrong value.
    """
    from . import methods
    from .video import frame_indices

    runner = methods.get(method)
    if runner.in_llm:
        raise ValueError(f"method {method!r} prunes inside the language model, and the demo shows compression "
                         f"before it; use a pre-LLM method ({', '.join(methods.names(stage='pre-llm'))}) or run "
                         f"{method!r} in a model with aot.patch")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    retentions = tuple(retentions)
    if not retentions:
        raise ValueError("retentions must hold at least one retention in (0, 1]")
    base = runner.config() if config is None else config
    if not isinstance(base, runner.config_cls):
        raise TypeError(f"method {method!r} takes a {runner.config_cls.__name__}, got a {type(base).__name__}")
    configs = [runner.effective_config(dataclasses.replace(base, retention=r)) for r in retentions]
    grid = token_grid(image_size)
    check_layers(layers)
    if png is not None:
        check_picture_path(png)
    video = Path(video) if video is not None else sample_video()
    from .checks import check_video

    total = check_video(video, frames, flag="video").total_frames  # header, frame memory; a folder named
    f = len(frame_indices(total, frames))
    for cfg in configs:
        try:
            runner.check(cfg, f, grid[0] * grid[1])
        except ValueError as err:
            raise ValueError(f"{method} at retention {cfg.retention} on {f} frames x {grid[0] * grid[1]} tokens "
                             f"({grid[0]}x{grid[1]} at image size {image_size}): {err}") from None
    return DemoPlan(video, total, f, grid, runner, configs)


def _threads_label(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def run_demo(
    video: str | Path | None = None,
    *,
    frames: int = 32,
    retentions: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25),
    config=None,
    png: str | Path | None = "aot_demo.png",
    image_size: int = 378,
    layers: tuple[int, int] = (-2, 5),
    method: str = "aot",
    progress: bool = True,
    threads: int | None = None,
    echo=print,
) -> dict:
    """Run the demo, print its tables through ``echo``, return everything measured as a dict.

    method: any name of ``aot.methods.names()``. config: an instance of that method's config class
    (AOTConfig for AOT, its ablations and ``aot-paper``); its retention is replaced by each of
    ``retentions`` and a preset's switches apply over it; None: the method's defaults.
    threads: torch threads for the run (restored afterwards); None: the caller's setting.
    A video shorter than ``frames`` is used whole, each frame once (the output says so).
    """
    plan = plan_demo(video, frames=frames, retentions=retentions, config=config, png=png,
                     image_size=image_size, layers=layers, method=method)
    with torch_threads(threads) as n_threads:
        return _run(plan, frames, png, image_size, layers, method, progress, n_threads, echo)


def _run(plan: DemoPlan, frames, png, image_size, layers, method, progress, n_threads, echo) -> dict:
    from .models.dinov2 import encode_video, load_dinov2
    from .video import read_frames

    video, runner = plan.video, plan.runner
    timings: dict[str, float] = {}
    t = time.perf_counter()
    clip = read_frames(video, frames)
    timings["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    model = load_dinov2()
    timings["load"] = time.perf_counter() - t  # stage names of aot.efficiency
    t = time.perf_counter()
    enc = encode_video(model, clip.frames, layers=layers, image_size=image_size, progress=progress)
    timings["vision tower"] = time.perf_counter() - t  # with the anchor scores it returns
    f, n, d = enc.features.shape
    echo(f"\nvideo: {video.name}, {clip.fps:.2f} fps: {clip.sampling} (indices {clip.indices[0]}..{clip.indices[-1]})")
    if clip.damage:
        echo(f"warning: {video.name}: {clip.damage}; the tables below include those frames")
    echo(f"encoder: {DEMO_ENCODER}")
    echo(f"note: {DEMO_NOTE}")
    echo(f"{visual_tokens_text(f * n)}: {f} frames x {n} ({enc.grid[0]}x{enc.grid[1]} after 2x2 pooling), d = {d} "
         f"(newlines excluded: a LLaVA-OneVision LLM would get +1 newline after them)")
    echo(f"stage times ({_threads_label(n_threads)}): " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))

    reference = full_readout(enc.features)  # the same for every retention: once
    rows = []
    first = None
    for cfg in plan.configs:
        t = time.perf_counter()
        out = runner(enc.features, enc.scores, local_scores=enc.local_scores, grid=enc.grid, config=cfg)
        t_c = time.perf_counter() - t
        fid = fidelity(enc.features, out.tokens, out.sizes, out.assignment, full=reference)
        rows.append({"retention": cfg.retention, "tokens_in": f * n, "tokens_out": int(out.tokens.shape[0]),
                     "anchors": int((~out.dynamic).sum()), "dynamic": int(out.dynamic.sum()),
                     "compress_ms": t_c * 1e3, **fid._asdict()})
        first = first or (cfg, out)

    echo(f"\n| retention | visual tokens in | visual tokens out | anchors | dynamic | compress (ms, {_threads_label(n_threads)}) "
         "| token cos (mean / p5) | readout cos (mean / p5) | size-aware readout cos |")
    echo("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        echo(f"| {row['retention']:.0%} | {row['tokens_in']} | {row['tokens_out']} | {row['anchors']} | "
             f"{row['dynamic']} | {row['compress_ms']:.1f} | {row['token_cos_mean']:.3f} / "
             f"{row['token_cos_p05']:.3f} | {row['readout_cos_mean']:.4f} / {row['readout_cos_p05']:.4f} | "
             f"{row['readout_sized_cos_mean']:.4f} |")
    echo("token cos: cosine of every original token to the output token that absorbed it. readout cos: "
         "attention outputs with the original tokens as queries, over the compressed vs the full set.")

    result = {"encoder": DEMO_ENCODER, "note": DEMO_NOTE, "video": str(video), "method": method, "frames": f, "frames_requested": clip.requested,
              "video_damage": clip.damage,
              "video_frames": clip.total_frames, "sampling": clip.sampling, "tokens_per_frame": n, "dim": d,
              "threads": n_threads, "timings_s": timings, "config": dataclasses.asdict(plan.configs[0]),
              "rows": rows}
    if png is not None and first is not None:
        from .compress import make_clips
        from .viz import draw_tokens

        cfg, out = first
        starts = [s for s, _ in make_clips(enc.features, cfg)] if isinstance(cfg, AOTConfig) else None
        path = draw_tokens(clip.frames, out.frames, out.positions, out.dynamic, enc.grid, png,
                           title=f"{method} at {cfg.retention:.0%} retention: {out.tokens.shape[0]} of {f * n} "
                                 f"tokens ({video.name})", clip_starts=starts)
        echo(f"\nwrote {path}")
        result["png"] = str(path)
    return result
