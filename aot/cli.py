"""The ``aot`` command line. Config flags are generated from AOTConfig's fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from .config import AOTConfig

__all__ = ["main", "add_config_flags", "config_from_args"]

_FIELD_HELP = {  # one line per field, taken from the comments in config.py
    "retention": "fraction of visual tokens kept, in (0, 1]",
    "reg": "Sinkhorn entropy (cost 1 - cos lies in [0, 2])",
    "n_iters": "Sinkhorn iterations",
    "tol": "early stop on the marginal error ('none': always run n_iters)",
    "global_share": "fraction of a frame's anchors chosen globally",
    "windows": "local-anchor windows, ROWSxCOLS",
    "lam_intra": "Eq. 11 weight of the context folded into each anchor",
    "lam_inter": "Eq. 16 weight of merged later-frame tokens",
    "mass": "'unit' (each anchor receives one unit of context) or 'literal' (Eq. 10 as written)",
    "clips": "'uniform' or 'dynamic' (FastVID segmentation)",
    "clip_length": "frames per clip ('none': F // 8)",
    "tau_seg": "dynamic clips: also cut where adjacent-frame cosine < tau_seg",
    "anchor_share": "share of the budget spent on clip anchors",
    "anchor_select": "ablation: 'attention' or 'random' anchors",
    "intra_merge": "ablation: fold a frame's other tokens by 'ot', 'cosine' weights, or 'none' (drop)",
    "inter_merge": "ablation: merge later frames by 'ot', 'cosine' weights, or 'none' (drop)",
    "keep_by": "dynamic tokens kept by lowest 'plan' q (paper) or lowest max 'cosine' to the anchors",
    "seed": "seed of the random-anchor ablation",
}


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
    kind = int if name in ("n_iters", "clip_length", "seed") else float if isinstance(default, float) or name == "tol" else str
    try:
        return kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} needs a {kind.__name__}, got {raw!r}") from None


def add_config_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("AOT configuration (defaults: the paper's)")
    for field in dataclasses.fields(AOTConfig):
        if field.name in exclude:
            continue
        default = field.default
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, metavar=field.name.upper(),
                           type=lambda raw, n=field.name: _parse_value(n, raw), default=default,
                           help=f"{_FIELD_HELP.get(field.name, '')} (default: {shown})")


def config_from_args(args: argparse.Namespace, **override) -> AOTConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(AOTConfig) if hasattr(args, f.name)}
    values.update(override)
    return AOTConfig(**values)


def _retentions(raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--retention needs comma-separated numbers, got {raw!r}") from None


def _layers(raw: str) -> tuple[int, int]:
    try:
        deep, shallow = (int(v) for v in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers needs two ints DEEP,SHALLOW, got {raw!r}") from None
    return deep, shallow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aot", description="Training-free visual-token compression for video LLMs (AOT).")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="decode a video, encode it with DINOv2, compress at several budgets, "
                                       "print fidelity tables and draw the anchors",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--video", default=None, help="video file (default: the bundled Big Buck Bunny sample)")
    demo.add_argument("--frames", type=int, default=32, help="frames sampled uniformly (lmms-eval's rule)")
    demo.add_argument("--retention", dest="retentions", type=_retentions, default=(0.1, 0.15, 0.2, 0.25),
                      help="comma-separated retentions")
    demo.add_argument("--png", default="aot_demo.png", help="picture of the anchors at the first retention ('none': skip)")
    demo.add_argument("--json", default=None, help="also write every number measured to this JSON file")
    demo.add_argument("--image-size", type=int, default=378, help="ViT input size (378: a 27x27 patch grid)")
    demo.add_argument("--layers", type=_layers, default=(-2, 5), help="ViT layers for the global,local scores")
    demo.add_argument("--method", default="aot", help="compression method by name (see `aot methods`)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_flags(demo, exclude=("retention",))
    sub.add_parser("methods", help="list the compression methods selectable with --method")
    from .flops import add_flops_parser

    add_flops_parser(sub)
    from .run import add_run_parser

    add_run_parser(sub)
    from .eval.runner import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "flops":
        from .flops import run_flops

        return run_flops(args)
    if args.command == "run":
        from .run import run_cli

        return run_cli(args)
    if args.command == "eval":
        from .eval.runner import eval_cli

        return eval_cli(args)
    if args.command == "methods":
        from . import methods

        for name in methods.names():
            print(f"{name:20s} {methods.get(name).summary}")
        return 0
    if args.command == "demo":
        from .demo import run_demo

        try:
            config = config_from_args(args)
            if args.frames < 1:
                raise ValueError(f"--frames must be >= 1, got {args.frames}")
            result = run_demo(args.video, frames=args.frames, retentions=args.retentions, config=config,
                              png=None if str(args.png).lower() == "none" else args.png,
                              image_size=args.image_size, layers=args.layers, method=args.method,
                              progress=not args.no_progress)
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"aot demo: error: {err}", file=sys.stderr)
            return 2
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=2)
            print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
