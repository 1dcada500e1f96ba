"""The efficiency protocol: one stage split, one peak-memory rule, one way to count visual tokens.

Used by ``aot run --json``, ``aot eval``'s cache lines and ``benchmarks/ttft.py`` (docs/efficiency.md).

Stages (seconds, wall clock, CUDA synchronised around the timed model calls on a GPU), in order:

* ``load``: reading the weights and the processor (once per process; not part of the time to first token),
* ``decode``: decoding the sampled video frames (PyAV),
* ``preprocess``: the processor (resize, normalise, prompt and placeholders),
* ``vision tower``: the ViT and projector,
* ``scores``: the anchor scores (attention read-outs; 0 for methods that need none),
* ``compression``: the method itself (in-LLM methods: their pruning inside the prefill),
* ``prefill``: the language model's first forward over the whole prompt,
* ``decoding``: every later forward (one generated token each).

The time to first token is the sum of every stage but ``load`` and ``decoding``.

Peak memory: on a GPU the CUDA peak allocated bytes of the measured block
(``torch.cuda.reset_peak_memory_stats`` before, ``max_memory_allocated`` after); on the CPU the peak
resident set size of the process (Linux ``VmHWM``, reset before the block through
``/proc/self/clear_refs`` where allowed; where not, the process's lifetime peak and ``kind`` says so).

Visual tokens: the video tokens the language model receives, newlines **excluded**; the separator
tokens of LLaVA layouts are counted apart (``newline_tokens``) and printed as
``visual tokens 627 (+1 newline)``. In-LLM methods (FastV, PDrop) rank the newline with the video
tokens, so their count (tokens left after the last pruning layer) includes it when kept and
``newline_tokens`` is 0.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["STAGES", "TTFT_STAGES", "STANDIN_NOTE", "Efficiency", "stage_times", "ttft", "PeakMemory",
           "newline_tokens", "visual_tokens_text", "timed", "model_stages"]

STAGES = ("load", "decode", "preprocess", "vision tower", "scores", "compression", "prefill", "decoding")
TTFT_STAGES = STAGES[1:-1]  # every stage but load and decoding

STANDIN_NOTE = ("aot:dinov2-smollm2 is a stand-in: a real DINOv2 ViT and a real SmolLM2 LLM joined by a RANDOM, "
                "untrained projector; its answers are meaningless by design (it exercises the pipeline and "
                "measures costs, not accuracy)")


def stage_times(**seconds: float) -> dict[str, float]:
    """{stage: seconds} for every name in ``STAGES``, in that order (0.0 where not given).
    Keyword names use underscores for spaces (``vision_tower=...``); an unknown name is a ValueError."""
    given = {k.replace("_", " "): float(v) for k, v in seconds.items()}
    unknown = sorted(set(given) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    return {s: given.get(s, 0.0) for s in STAGES}


def ttft(stages: dict[str, float]) -> float:
    """Time to first token (s): the sum of ``TTFT_STAGES``."""
    return sum(float(stages.get(s, 0.0)) for s in TTFT_STAGES)


@dataclass
class Efficiency:
    """What one answer cost. ``stages_s``: ``STAGES`` -> seconds; ``peak_memory_bytes`` with its
    ``memory_kind`` ("cuda peak allocated", "peak RSS", "peak RSS (process lifetime)"); prefill TFLOPs
    (paper Eq. 17, LLM only) over the visual tokens and over the whole prompt, vanilla and compressed."""

    stages_s: dict[str, float]
    peak_memory_bytes: int | None = None
    memory_kind: str = ""
    prefill_tflops_visual: dict[str, float] = field(default_factory=dict)
    prefill_tflops_prompt: dict[str, float] = field(default_factory=dict)

    @property
    def ttft_s(self) -> float:
        return ttft(self.stages_s)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ttft_s": self.ttft_s, "stages": list(STAGES)}


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.bytes`` and ``pm.kind`` (module docstring)."""

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.bytes: int | None = None
        self.kind = ""

    def __enter__(self):
        self._cuda = self.device.startswith("cuda")
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda peak allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.kind = "peak RSS"
        except OSError:
            self.kind = "peak RSS (process lifetime)"
        return self

    def __exit__(self, *exc):
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
            return False
        kb = _status_kb("VmHWM")
        if kb is None:  # no /proc: ru_maxrss (kB on Linux) is the lifetime peak
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.kind = "peak RSS (process lifetime)"
        self.bytes = int(kb) * 1024
        return False


def model_stages(last: dict | None, lm_calls: list[float]) -> dict[str, float]:
    """The model's stages of one ``generate`` call: vision tower, scores, compression from the
    adapter's ``last["times"]`` (None or {}: unpatched, all 0: the tower runs inside the prefill),
    prefill (the language model's first call) and decoding (its later calls), ``lm_calls`` from
    ``aot.run.module_timer``. In-LLM methods prune inside the prefill: their compression time is
    taken out of it, so no second is counted twice."""
    t = (last or {}).get("times", {})
    prefill = lm_calls[0] if lm_calls else 0.0
    compression = float(t.get("compress", 0.0))
    if (last or {}).get("stage") == "llm":
        prefill = max(0.0, prefill - compression)
    return {"vision tower": float(t.get("vision", 0.0)), "scores": float(t.get("scores", 0.0)),
            "compression": compression, "prefill": prefill, "decoding": float(sum(lm_calls[1:]))}


@contextmanager
def timed(times: dict, stage: str):
    """Add the block's wall time (s) to ``times[stage]``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - t0


def newline_tokens(family: str, last: dict | None, llm_tokens: int) -> int:
    """Newline (separator) tokens among the ``llm_tokens`` video tokens one row's LLM received.

    ``family``: "llava_onevision" or "qwen2_5_vl" (no newlines); ``last``: the adapter's
    ``model._aot.last`` (None or {}: an unpatched model, transformers' layout of one newline after the
    video); in-LLM methods (``last["stage"] == "llm"``): 0 (module docstring)."""
    if family != "llava_onevision" or int(llm_tokens) <= 0:
        return 0
    if not last:
        return 1
    if last.get("stage") == "llm":
        return 0
    return max(0, int(llm_tokens) - int(last["tokens_out"]))


def _count(x) -> str:
    """An int as is; a mean to one decimal unless whole."""
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:.1f}"


def visual_tokens_text(visual, newlines=0, before=None) -> str:
    """The one printed form: ``visual tokens 627 (+1 newline)``; with ``before``:
    ``visual tokens 6272 -> 627 (+1 newline)``. Counts exclude the newlines; means (floats) are
    printed to one decimal unless whole."""
    arrow = f"{_count(before)} -> " if before is not None else ""
    extra = f" (+{_count(newlines)} newline{'s' if newlines > 1 else ''})" if newlines else ""
    return f"visual tokens {arrow}{_count(visual)}{extra}"
