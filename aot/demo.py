"""The main job: a real video through a real ViT, compressed at several budgets, measured and drawn.

decode (PyAV, lmms-eval's uniform sampling) -> DINOv2 ViT-S/14 at 378 px (27x27 patches, pooled
2x2 to 14x14 like LLaVA-OneVision) with attention scores from a deep and a shallow layer ->
aot.compress at each retention -> fidelity table -> one PNG of the anchors and dynamic tokens.
"""

from __future__ import annotations

import dataclasses
import time
from importlib import resources
from pathlib import Path

from .config import AOTConfig
from .fidelity import fidelity

__all__ = ["sample_video", "run_demo"]


def sample_video() -> Path:
    """The bundled Big Buck Bunny excerpt (CC-BY 3.0, Blender Foundation; see assets/ATTRIBUTION.txt)."""
    return Path(str(resources.files("aot") / "assets" / "bigbuckbunny.mp4"))


def run_demo(
    video: str | Path | None = None,
    *,
    frames: int = 32,
    retentions: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25),
    config: AOTConfig = AOTConfig(),
    png: str | Path | None = "aot_demo.png",
    image_size: int = 378,
    layers: tuple[int, int] = (-2, 5),
    method: str = "aot",
    progress: bool = True,
    echo=print,
) -> dict:
    """Run the demo, print its tables through ``echo``, return everything measured as a dict.

    method: any name of ``aot.methods.names()``; ``config`` applies when the method takes an
    AOTConfig (AOT and its ablations), other methods run with their published defaults.
    """
    from . import methods
    from .models.dinov2 import encode_video, load_dinov2
    from .video import read_frames

    runner = methods.get(method)

    def method_config(r: float):
        if isinstance(config, runner.config_cls):
            return runner.config(**{**config.to_dict(), "retention": r})
        return runner.config(retention=r)

    for r in retentions:  # fail before the slow steps, with the config's own message
        method_config(r)
    video = Path(video) if video is not None else sample_video()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    clip = read_frames(video, frames)
    timings["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    model = load_dinov2()
    timings["load ViT"] = time.perf_counter() - t
    t = time.perf_counter()
    enc = encode_video(model, clip.frames, layers=layers, image_size=image_size, progress=progress)
    timings["encode"] = time.perf_counter() - t
    f, n, d = enc.features.shape
    echo(f"\nvideo: {video.name}, {clip.total_frames} frames at {clip.fps:.2f} fps, {f} sampled "
         f"(indices {clip.indices[0]}..{clip.indices[-1]})")
    echo(f"tokens: {f} frames x {n} ({enc.grid[0]}x{enc.grid[1]} after 2x2 pooling) = {f * n}, d = {d}")
    echo("stage times: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))

    rows = []
    first = None
    for r in retentions:
        cfg = method_config(r)
        t = time.perf_counter()
        out = runner(enc.features, enc.scores, local_scores=enc.local_scores, grid=enc.grid, config=cfg)
        t_c = time.perf_counter() - t
        fid = fidelity(enc.features, out.tokens, out.sizes, out.assignment)
        rows.append({"retention": r, "tokens_in": f * n, "tokens_out": int(out.tokens.shape[0]),
                     "anchors": int((~out.dynamic).sum()), "dynamic": int(out.dynamic.sum()),
                     "compress_ms": t_c * 1e3, **fid._asdict()})
        first = first or (cfg, out)

    echo("\n| retention | tokens in | tokens out | anchors | dynamic | compress (ms) | token cos (mean / p5) "
         "| readout cos (mean / p5) | size-aware readout cos |")
    echo("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        echo(f"| {row['retention']:.0%} | {row['tokens_in']} | {row['tokens_out']} | {row['anchors']} | "
             f"{row['dynamic']} | {row['compress_ms']:.1f} | {row['token_cos_mean']:.3f} / "
             f"{row['token_cos_p05']:.3f} | {row['readout_cos_mean']:.4f} / {row['readout_cos_p05']:.4f} | "
             f"{row['readout_sized_cos_mean']:.4f} |")
    echo("token cos: cosine of every original token to the output token that absorbed it. readout cos: "
         "attention outputs with the original tokens as queries, over the compressed vs the full set.")

    result = {"video": str(video), "method": method, "frames": f, "tokens_per_frame": n, "dim": d,
              "timings_s": timings, "config": dataclasses.asdict(method_config(retentions[0])), "rows": rows}
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

