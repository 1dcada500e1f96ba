"""The ``aot`` command line: one small function per subcommand over a shared argument/check layer.

Adding a subcommand: write ``_add_<name>(sub)`` that builds its parser with the shared flag
helpers (``add_config_flags``, ``add_method_flag``, ``add_threads_flag``) and sets
``handler=_cmd_<name>``; the handler runs the shared checks (``method_config_from_args``,
``output_path``, the method's ``check``) before any expensive work, then computes inside
``torch_threads(args.threads)``. ``main`` turns a user's mistake (ValueError, TypeError, OSError)
into ``aot <command>: error: ...`` and exit code 2, never a traceback (set AOT_DEBUG=1 to see it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from .config import AOTConfig
from .runtime import check_output_path, default_threads, error_message

__all__ = ["main", "build_parser", "add_config_flags", "config_from_args", "explicit_config", "add_method_flag",
           "add_threads_flag", "method_config_from_args", "output_path", "check_output_path", "positive_int"]

_FIELD_HELP = {  # one line per field, taken from the comments in config.py; "paper:" where ours differs
    "retention": "fraction of visual tokens kept, in (0, 1]",
    "reg": "Sinkhorn entropy (cost 1 - cos lies in [0, 2])",
    "n_iters": "Sinkhorn iterations at most",
    "tol": "stop Sinkhorn once the column-marginal L1 error is below this, checked every 10 iterations "
           "(paper's delta 0.01, on the change of v); 'none': always run n_iters",
    "global_share": "fraction of a keyframe's anchors chosen by the global score, the rest in windows (paper: 0.5)",
    "windows": "local-anchor windows, ROWSxCOLS",
    "lam_intra": "Eq. 11 weight of the context folded into each anchor (paper: 1.0)",
    "lam_inter": "Eq. 16 weight of merged later-frame tokens",
    "mass": "'unit' (each anchor receives one unit of context) or 'literal' (Eq. 10 as written; paper)",
    "clips": "'uniform' or 'dynamic' (FastVID segmentation)",
    "clip_length": "frames per clip ('none': from anchor_density, or with anchor_density none F // 8 "
                   "kept within [2, 1 / (anchor_share * retention)])",
    "anchor_density": "share of a keyframe's tokens made anchors; sets the clip length "
                      "round(anchor_density / (anchor_share * retention)) ('none': the clip_length rule)",
    "tau_seg": "dynamic clips: also cut where adjacent-frame cosine < tau_seg",
    "anchor_share": "share of the budget spent on clip anchors, the rest kept changed tokens (paper: not stated)",
    "anchor_select": "ablation: 'attention' or 'random' anchors",
    "intra_merge": "ablation: fold a frame's other tokens by 'ot', 'cosine' weights, or 'none' (drop)",
    "inter_merge": "ablation: merge later frames by 'ot', 'cosine' weights, or 'none' (drop)",
    "keep_by": "dynamic tokens kept by lowest 'plan' q (paper) or lowest max 'cosine' to the anchors",
    "keep_ref": "dynamic tokens judged 'changed' against the clip's 'keyframe' (paper) or the 'previous' frame",
    "unmatched_anchors": "'absorb' (balanced plan, paper) or 'skip': an anchor with no counterpart in a later frame "
                         "receives nothing from it",
    "seed": "seed of the random-anchor ablation",
}
CONFIG_GROUP_TITLE = ("AOT configuration (defaults: ours, measured on the task benchmark; "
                      "the paper's values: --method aot-paper, README)")


# --------------------------------------------------------------------------- shared flags


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(name: str, raw: str):
    default = getattr(AOTConfig(), name)
    hint = typing.get_type_hints(AOTConfig)[name]
    if raw.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    if name == "windows":
        try:
            r, c = raw.lower().split("x")
            return (int(r), int(c))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--windows must look like 3x3, got {raw!r}") from None
    kind = int if name in ("n_iters", "clip_length", "seed") else float if isinstance(default, float) or name in ("tol", "anchor_density") else str
    try:
        return kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_flag(name)} needs a {kind.__name__}, got {raw!r}") from None


def add_config_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per AOTConfig field. A flag not given is absent from the namespace (see explicit_config)."""
    group = parser.add_argument_group(CONFIG_GROUP_TITLE)
    for field in dataclasses.fields(AOTConfig):
        if field.name in exclude:
            continue
        default = field.default
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else "none" if default is None else default
        group.add_argument(_flag(field.name), dest=field.name, metavar=field.name.upper(),
                           type=lambda raw, n=field.name: _parse_value(n, raw), default=argparse.SUPPRESS,
                           help=f"{_FIELD_HELP.get(field.name, '')} (default: {shown})")


def explicit_config(args: argparse.Namespace) -> dict:
    """The AOTConfig fields given on the command line, {name: value}."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(AOTConfig) if hasattr(args, f.name)}


def config_from_args(args: argparse.Namespace, **override) -> AOTConfig:
    """AOTConfig from the flags given (defaults for the others), then ``override``."""
    return AOTConfig(**{**explicit_config(args), **override})


def add_method_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="aot",
                        help="compression method by name, see `aot methods`; 'aot-paper' runs the paper's "
                             "stated settings (default: aot)")


def method_config_from_args(args: argparse.Namespace):
    """(method, base config) for ``--method`` and the config flags given; the retention is a placeholder.

    Refuses flags the method cannot honour: a flag that contradicts a preset the method fixes
    (e.g. --lam-intra 0.1 with aot-paper) and, for methods that do not take an AOTConfig, AOT
    flags that are not fields of their config (their published defaults apply).
    """
    from . import methods

    runner = methods.get(args.method)
    given = explicit_config(args)
    if runner.config_cls is AOTConfig:
        fixed = [f"{_flag(k)} (fixed at {runner.preset[k]!r})" for k, v in given.items()
                 if k in runner.preset and runner.preset[k] != v]
        if fixed:
            raise ValueError(f"method {runner.name!r} fixes {', '.join(fixed)}; drop the flag, or use "
                             f"--method aot to choose every knob")
        return runner, AOTConfig(**given)
    own = {f.name for f in dataclasses.fields(runner.config_cls)}
    foreign = [_flag(k) for k in given if k not in own]
    if foreign:
        fields = ", ".join(sorted(own - {"retention"})) or "only retention"
        verb = "applies" if len(foreign) == 1 else "apply"
        raise ValueError(f"{', '.join(foreign)} {verb} to AOT methods only; method {runner.name!r} takes a "
                         f"{runner.config_cls.__name__} (fields: {fields})")
    return runner, runner.config(**given)


def positive_int(flag: str):
    """An argparse type: int >= 1 (argparse names ``flag`` in front of the message)."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"needs an int >= 1, got {raw!r}")
        return value

    return parse


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` for every subcommand that computes (README "Threads")."""
    n = default_threads()
    parser.add_argument("--threads", type=positive_int("--threads"), default=n,
                        help=f"torch CPU threads for the run, restored afterwards (default: {n} here: "
                             f"min(cores, 4), 1 when other work loads the machine)")


def output_path(raw, flag: str):
    """None for no output (None or 'none'), else the path, checked writable now (before the work)."""
    if raw is None or str(raw).lower() == "none":
        return None
    return check_output_path(raw, flag)


def _retentions(raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--retention needs comma-separated numbers, got {raw!r}") from None


def _layers(raw: str) -> tuple[int, int]:
    from .demo import check_layers

    try:
        deep, shallow = (int(v) for v in raw.split(","))
        return check_layers((deep, shallow))
    except ValueError as err:
        detail = str(err) if "layer indices" in str(err) else f"--layers needs two ints DEEP,SHALLOW, got {raw!r}"
        raise argparse.ArgumentTypeError(detail) from None


def _image_size(raw: str) -> int:
    from .demo import token_grid

    try:
        value = int(raw)
        token_grid(value)
        return value
    except ValueError as err:
        detail = str(err) if "multiple" in str(err) else f"--image-size needs an int, got {raw!r}"
        raise argparse.ArgumentTypeError(detail) from None


# --------------------------------------------------------------------------- subcommands


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="decode a video, encode it with DINOv2, compress at several budgets, "
                                       "print fidelity tables and draw the anchors")
    demo.add_argument("--video", default=None, help="video file (default: the bundled Big Buck Bunny sample)")
    demo.add_argument("--frames", type=positive_int("--frames"), default=32,
                      help="frames sampled uniformly (lmms-eval's rule); a shorter video is used whole, "
                           "each frame once (default: 32)")
    demo.add_argument("--retention", dest="retentions", type=_retentions, default=(0.1, 0.15, 0.2, 0.25),
                      help="comma-separated retentions (default: 0.1,0.15,0.2,0.25)")
    demo.add_argument("--png", default="aot_demo.png",
                      help="picture of the kept tokens at the first retention, 'none' to skip (default: aot_demo.png)")
    demo.add_argument("--json", default=None, help="also write every number measured to this JSON file")
    demo.add_argument("--image-size", type=_image_size, default=378,
                      help="ViT input size, a multiple of 14 (default: 378: 27x27 patches, 14x14 tokens)")
    demo.add_argument("--layers", type=_layers, default=(-2, 5),
                      help="ViT layers DEEP,SHALLOW for the global and local scores, each in -12..11 (default: -2,5)")
    add_method_flag(demo)
    add_threads_flag(demo)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_flags(demo, exclude=("retention",))
    demo.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import check_picture_path, run_demo

    _, base = method_config_from_args(args)
    json_path = output_path(args.json, "--json")
    png = None if str(args.png).lower() == "none" else check_picture_path(args.png, "--png")
    result = run_demo(args.video, frames=args.frames, retentions=args.retentions, config=base, png=png,
                      image_size=args.image_size, layers=args.layers, method=args.method,
                      progress=not args.no_progress, threads=args.threads)
    if json_path is not None:
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {json_path}")
    return 0


def _add_methods(sub) -> None:
    sub.add_parser("methods", help="list the compression methods selectable with --method").set_defaults(
        handler=_cmd_methods)


def _cmd_methods(args: argparse.Namespace) -> int:
    from . import methods

    for name in methods.names():
        print(f"{name:20s} {methods.get(name).summary}")
    return 0


def _add_flops(sub) -> None:
    from .flops import add_flops_parser

    add_flops_parser(sub).set_defaults(handler=_cmd_flops)


def _cmd_flops(args: argparse.Namespace) -> int:
    from .flops import run_flops

    output_path(args.json, "--json")
    return run_flops(args)


def _with_threads_default(parser: argparse.ArgumentParser, handler) -> None:
    """A subcommand whose parser has its own --threads gets the shared default (README "Threads")."""
    n = default_threads()
    parser.set_defaults(handler=handler, threads=n)
    for action in parser._actions:
        if "--threads" in action.option_strings:
            action.help = (f"torch CPU threads for this run, restored afterwards (default: {n} here: "
                           f"min(cores, 4), 1 when other work loads the machine)")


def _add_run(sub) -> None:
    from .run import add_run_parser

    _with_threads_default(add_run_parser(sub), _cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import run_cli

    output_path(args.json, "--json")
    return run_cli(args)


def _add_eval(sub) -> None:
    from .eval.runner import add_eval_parser

    _with_threads_default(add_eval_parser(sub), _cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval.runner import eval_cli

    return eval_cli(args)


def _add_report(sub) -> None:
    from .report import add_report_parser

    add_report_parser(sub).set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import run_report

    return run_report(args)


def _add_serve(sub) -> None:  # aot serve: vLLM (aot.serving.serve); its own flags are parsed there
    from .serving.serve import add_serve_parser, serve_cli

    add_serve_parser(sub).set_defaults(handler=serve_cli)


SUBCOMMANDS = (_add_demo, _add_methods, _add_flops, _add_run, _add_eval, _add_report, _add_serve)  # each adds one subparser with its handler


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help (unless the help already states it, or the default is
    None / False / []: nothing), and docstring markup (RST double backticks) dropped from the texts."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text and "%(default)" not in text
                and action.default not in (None, False, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text.replace("``", "")

    def _format_text(self, text):
        return super()._format_text(text.replace("``", ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aot", description="Training-free visual-token compression for video LLMs (AOT).",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    return parser


NEGATIVE_VALUE_FLAGS = ("--layers",)  # their values may start with '-' (e.g. -2,5), which argparse takes for a flag


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--layers -2,5`` -> ``--layers=-2,5`` so argparse reads the value instead of failing."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in NEGATIVE_VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1][:1] == "-" \
                and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError) as err:
        if os.environ.get("AOT_DEBUG"):
            raise
        print(f"aot {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
