"""The README names what the code has: every registered method, every module, every CLI flag."""

import argparse
from pathlib import Path

import aot.methods
from aot import AOTConfig
from aot.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_methods_table_lists_every_registered_method():
    table = section("Methods and ablations")
    missing = [n for n in aot.methods.names() if f"`{n}`" not in table]
    assert not missing, f"README 'Methods and ablations' lacks {missing}"


def test_layout_lists_every_module_and_only_existing_files():
    layout = section("Layout")
    files = [p for p in (ROOT / "aot").rglob("*.py") if p.name != "__init__.py" or p.parent.name == "aot"]
    files += list((ROOT / "benchmarks").rglob("*.py"))
    missing = [str(p.relative_to(ROOT)) for p in files if p.name != "__init__.py" and p.name not in layout]
    assert not missing, f"README 'Layout' lacks {missing}"
    named = {w.strip("(),:;+/") for w in layout.split() if w.strip("(),:;+/").endswith(".py")}
    exist = {p.name for d in ("aot", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py")}
    absent = sorted(w for w in named if not ((ROOT / w).is_file() if "/" in w else w in exist))
    assert not absent, f"README 'Layout' names files that do not exist: {absent}"


def test_cli_section_names_every_subcommand_and_flag():
    cli = section("CLI")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    config_flags = {"--" + f.replace("_", "-") for f in AOTConfig.field_names()}  # "one flag per AOTConfig field"
    assert "one flag per AOTConfig field" in cli
    missing = []
    for name, parser in sub.choices.items():
        if f"aot {name}" not in cli:
            missing.append(f"aot {name}")
        for action in parser._actions:
            flags = [f for f in action.option_strings if f.startswith("--") and f != "--help"]
            if flags and action.help != argparse.SUPPRESS and not set(flags) & config_flags \
                    and not any(f in README for f in flags):
                missing.append(f"aot {name} {flags[0]}")
    assert not missing, f"README lacks {missing}"
