"""Memory and time of our attention scores on a SigLIP-so400m-shaped tower, against eager attention maps.

The tower is transformers' ``SiglipVisionModel`` shaped like LLaVA-OneVision's SigLIP-so400m
(27 layers, 1152 wide, 4304 MLP, 16 heads, 14 px patches, 384 px -> 729 tokens a frame, no
pooling head) with random weights, run on ``--frames`` frames (default 8) at once.  Variants:

* ``sdpa``: the tower's own forward (SDPA attention), nothing recorded.  The baseline.
* ``ours``: the same SDPA forward with ``aot.models.scores.record_scores`` on two layers (5, the
  local one, and -2, the global one): attention received, recomputed from q and k in query
  chunks inside forward pre-hooks; no attention map is stored.
* ``eager-all``: eager attention with ``output_attentions=True`` (what transformers offers):
  every layer's (frames, heads, 729, 729) map is returned, then the two are reduced.
* ``eager-two``: eager attention, forward hooks reduce the two layers' maps on the spot (the
  least memory eager attention can do; each layer still builds its full map).

Peak extra memory: on CPU every variant runs in a fresh child process; after a one-frame warm-up
the kernel's peak-RSS counter is reset (VmHWM through /proc/self/clear_refs) and read after the
forward, with glibc serving large blocks by mmap so freed memory leaves RSS at once.  "extra" is
the peak over the RSS before the forward (weights and input excluded); "over sdpa" subtracts the
sdpa variant's extra.  With ``--device cuda``: torch.cuda.max_memory_allocated in-process.

Time: medians of ``--reps`` forwards, variants interleaved in one process (in the given order,
reversed every other round), so a busy machine slows them alike.  Both wall time and the
process's CPU time are recorded: with one thread the CPU time hardly depends on what else runs
on the machine, the wall time does.  ``ours`` also reports the time spent inside its hooks,
(wall and CPU), measured in the same forwards: less sensitive to noise than a difference of two
medians.

    python benchmarks/score_memory.py [--threads 1] [--frames 8] [--reps 3] [--chunk 256]
        [--device cpu] [--variants sdpa,ours,eager-all,eager-two] [--num-layers 27] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from aot.models.scores import hf_qk, record_scores

VARIANTS = ("sdpa", "ours", "eager-all", "eager-two")
LAYERS = (5, -2)  # local, global: the authors' defaults
SO400M = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    patch_size=14,
    image_size=384,
    vision_use_head=False,  # LLaVA-OneVision uses the token sequence, not SigLIP's pooling head
)


# --------------------------------------------------------------------------- the tower


def build_tower(num_layers: int = 27, *, seed: int = 0, device: str = "cpu", **overrides) -> nn.Module:
    """SiglipVisionModel shaped like SigLIP-so400m with random weights, eval mode, float32, SDPA.

    ``overrides`` replace SiglipVisionConfig fields of :data:`SO400M` (the tests build a tiny
    tower).  Built on the meta device and filled with seeded normal(0, 0.02) matrices
    (LayerNorms at 1/0): transformers' own initialisation of 413M parameters takes ~25 s.
    """
    from transformers import SiglipVisionConfig, SiglipVisionModel

    fields = {**SO400M, "num_hidden_layers": num_layers, **overrides}
    config = SiglipVisionConfig(**fields, attn_implementation="sdpa")
    with torch.device("meta"):
        model = SiglipVisionModel(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()
        # the one buffer: token index -> position-table row (to_empty left it uninitialised)
        ids = model.embeddings.position_ids
        ids.copy_(torch.arange(ids.shape[-1]).expand_as(ids))
    return model.to(device).eval()


def attention_layers(model: nn.Module, layers=LAYERS) -> dict[str, nn.Module]:
    """{"layer5": ..., "layer-2": ...}: the SiglipAttention modules of the chosen encoder layers."""
    blocks = model.encoder.layers
    return {f"layer{i}": blocks[i].self_attn for i in layers}


def pixels(frames: int, *, size: int = 384, seed: int = 1, device: str = "cpu") -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 3, size, size, generator=generator).to(device)  # (F, 3, size, size)


def _set_attention(model: nn.Module, implementation: str) -> None:
    model.set_attn_implementation(implementation)
    if model.config._attn_implementation != implementation:
        raise RuntimeError(f"could not switch the tower to {implementation} attention")


# --------------------------------------------------------------------------- variants
# Each runs one forward and returns {layer name: (F, T) scores} (empty for sdpa) and the (wall,
# CPU) seconds spent computing scores inside hooks ((0, 0) where not separable).


def run_sdpa(model, x, chunk):
    _set_attention(model, "sdpa")
    model(pixel_values=x)
    return {}, (0.0, 0.0)


def run_ours(model, x, chunk):
    _set_attention(model, "sdpa")
    spent = [0.0, 0.0]  # wall, CPU seconds inside record_scores' hooks
    layers = attention_layers(model)
    with ExitStack() as stack:
        recorded = stack.enter_context(record_scores(layers, hf_qk, chunk=chunk))
        # one pre-hook in front of record_scores' and one behind it bracket its work
        stamps = {}
        for name, module in layers.items():
            stack.callback(module.register_forward_pre_hook(_stamp(stamps, name, spent), prepend=True).remove)
            stack.callback(module.register_forward_pre_hook(_stamp(stamps, name, spent)).remove)
        model(pixel_values=x)
    return {name: torch.cat(v) for name, v in recorded.items()}, tuple(spent)


def _stamp(stamps: dict, name: str, spent: list) -> Callable:
    """Pre-hook of a bracketing pair: the first call starts both clocks, the second adds what elapsed."""

    def hook(module, args):
        _sync(next(module.parameters()).device)
        now = (time.perf_counter(), time.process_time())
        if name in stamps:
            start = stamps.pop(name)
            spent[0] += now[0] - start[0]
            spent[1] += now[1] - start[1]
        else:
            stamps[name] = now

    return hook


def run_eager_all(model, x, chunk):
    _set_attention(model, "eager")
    out = model(pixel_values=x, output_attentions=True)
    maps = out.attentions  # num_layers x (F, heads, T, T)
    return {f"layer{i}": maps[i].mean(dim=1).mean(dim=1) for i in LAYERS}, (0.0, 0.0)


def run_eager_two(model, x, chunk):
    _set_attention(model, "eager")
    scores = {}

    def make(name):
        def hook(module, args, output):
            scores[name] = output[1].mean(dim=1).mean(dim=1)  # (F, heads, T, T) -> (F, T)

        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in attention_layers(model).items()]
    try:
        model(pixel_values=x)
    finally:
        for h in handles:
            h.remove()
    return scores, (0.0, 0.0)


RUNNERS = {"sdpa": run_sdpa, "ours": run_ours, "eager-all": run_eager_all, "eager-two": run_eager_two}


# --------------------------------------------------------------------------- measuring


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(variant: str, model, x, chunk: int) -> int:
    """Peak memory of one forward of ``variant`` beyond what was allocated before it (same process)."""
    run = RUNNERS[variant]
    run(model, x[:1], chunk)  # warm-up: thread pools, oneDNN primitives, lazy inits
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(model, x, chunk)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS counter to the current RSS
    before = _status_kb("VmRSS")
    run(model, x, chunk)
    return (_status_kb("VmHWM") - before) * 1024


def memory_child(args) -> None:
    """Runs in a fresh process: prints one JSON line with the peak extra bytes of one forward."""
    torch.set_num_threads(args.threads)
    model = build_tower(args.num_layers)
    with torch.inference_mode():
        extra = peak_extra_bytes(args.memory_child, model, pixels(args.frames), args.chunk)
    print(json.dumps({"variant": args.memory_child, "extra": extra}))


def measure_memory_cpu(variant: str, args) -> int | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [
        sys.executable, __file__, "--memory-child", variant, "--threads", str(args.threads),
        "--frames", str(args.frames), "--chunk", str(args.chunk), "--num-layers", str(args.num_layers),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"memory child for {variant} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["extra"]


def eager_maps_bytes(frames: int, num_layers: int) -> int:
    """Size of the attention maps output_attentions returns: layers x (F, heads, T, T) float32."""
    tokens = (SO400M["image_size"] // SO400M["patch_size"]) ** 2
    return num_layers * frames * SO400M["num_attention_heads"] * tokens * tokens * 4


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (torch.set_num_threads); default 1")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="timed forwards per variant (median)")
    ap.add_argument("--chunk", type=int, default=256, help="query chunk of our scores")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--num-layers", type=int, default=27, help="tower depth (27 = so400m; fewer for a smoke run)")
    ap.add_argument("--no-memory", action="store_true", help="time only")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "sdpa" not in variants:
        ap.error(f"--variants must include sdpa and come from {','.join(VARIANTS)}; got {args.variants!r}")
    torch.set_num_threads(args.threads)
    dev = args.device
    tokens = (SO400M["image_size"] // SO400M["patch_size"]) ** 2
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {dev}"
        + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else "")
    )
    print(
        f"tower: SigLIP-so400m shape, {args.num_layers} layers, 1152 wide, 16 heads, {tokens} tokens/frame, "
        f"{args.frames} frames, float32; scores: layers {LAYERS}, attention received, chunk {args.chunk}"
    )

    # memory: fresh processes on CPU, in-process on CUDA
    memory: dict[str, int | None] = {}
    model = None
    for variant in [] if args.no_memory else variants:
        if dev == "cpu":
            need = eager_maps_bytes(args.frames, args.num_layers) if variant == "eager-all" else 0
            avail = _available_bytes()
            if need and avail is not None and avail < need + (3 << 30):
                print(f"skipping the memory run of {variant}: needs ~{need / 2**30:.1f} GiB, "
                      f"{avail / 2**30:.1f} GiB available")  # fmt: skip
                memory[variant] = None
                continue
            memory[variant] = measure_memory_cpu(variant, args)
        else:
            model = model or build_tower(args.num_layers, device=dev)
            with torch.inference_mode():
                memory[variant] = peak_extra_bytes(variant, model, pixels(args.frames, device=dev), args.chunk)
        print(f"  memory {variant}: {memory[variant] / 2**20 if memory[variant] is not None else float('nan'):.0f} MiB")

    # time: interleaved medians in this process
    model = model or build_tower(args.num_layers, device=dev)
    x = pixels(args.frames, device=dev)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v: [] for v in variants}
    hook_times: list[float] = []
    scores: dict[str, dict[str, Tensor]] = {}
    with torch.inference_mode():
        for variant in variants:
            RUNNERS[variant](model, x[:1], args.chunk)  # warm-up
        for rep in range(args.reps):
            for variant in variants if rep % 2 == 0 else variants[::-1]:
                if variant == "eager-all" and variant in memory and memory[variant] is None and dev == "cpu":
                    continue  # skipped above: not enough memory for every map
                _sync(dev)
                start, start_cpu = time.perf_counter(), time.process_time()
                got, in_hooks = RUNNERS[variant](model, x, args.chunk)
                _sync(dev)
                times[variant].append(time.perf_counter() - start)
                cpu_times[variant].append(time.process_time() - start_cpu)
                if variant == "ours":
                    hook_times.append(in_hooks)
                if rep == 0 and got:
                    scores[variant] = {k: v.float().cpu() for k, v in got.items()}
                del got
            print(f"  rep {rep + 1}/{args.reps}: " + ", ".join(f"{v} {t[-1]:.1f} s" for v, t in times.items() if t))

    med = {v: statistics.median(t) for v, t in times.items() if t}
    med_cpu = {v: statistics.median(t) for v, t in cpu_times.items() if t}
    base_t, base_c, base_m = med["sdpa"], med_cpu["sdpa"], memory.get("sdpa")

    def mib(b):
        return "n/a" if b is None else f"{b / 2**20:.0f}"

    def over(b):
        return None if b is None or base_m is None else b - base_m

    print()
    print("| variant | peak extra memory (MiB) | over sdpa (MiB) | wall time (s) | / sdpa | CPU time (s) | / sdpa |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        t = "n/a | n/a | n/a | n/a"
        if v in med:
            t = f"{med[v]:.1f} | {med[v] / base_t:.3f} | {med_cpu[v]:.1f} | {med_cpu[v] / base_c:.3f}"
        print(f"| {v} | {mib(memory.get(v))} | {mib(over(memory.get(v))) if v != 'sdpa' else '-'} | {t} |")

    summary = {"threads": torch.get_num_threads(), "device": dev, "frames": args.frames, "chunk": args.chunk,
               "torch": torch.__version__, "memory": memory, "time_median": med, "cpu_time_median": med_cpu,
               "times": times, "cpu_times": cpu_times, "hook_times": hook_times}  # fmt: skip
    if "ours" in med:
        hook_wall = statistics.median(h[0] for h in hook_times) / base_t
        hook_cpu = statistics.median(h[1] for h in hook_times) / base_c
        summary["ours_hook_time_over_sdpa"] = {"wall": hook_wall, "cpu": hook_cpu}
        print(f"\nours: extra time {med['ours'] / base_t - 1:+.1%} wall, {med_cpu['ours'] / base_c - 1:+.1%} CPU "
              f"(medians of the forwards); time inside the score hooks {hook_wall:.1%} wall, {hook_cpu:.1%} CPU "
              "of the sdpa forward (target <= 10%)")  # fmt: skip
    for ref in ("eager-all", "eager-two"):
        ours_m, ref_m = over(memory.get("ours")), over(memory.get(ref))
        if ours_m is not None and ref_m:
            summary[f"memory_ours_over_{ref}"] = ours_m / ref_m
            print(f"ours / {ref} extra memory (over sdpa): {ours_m / ref_m:.3f} (target <= 0.1 against eager-all)")
    if "ours" in scores:
        for ref in ("eager-all", "eager-two"):
            if ref in scores:
                diff = max((scores["ours"][k] - scores[ref][k]).abs().max().item() for k in scores["ours"])
                summary[f"max_abs_diff_vs_{ref}"] = diff
                print(f"max |ours - {ref}| over the two layers' scores: {diff:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
