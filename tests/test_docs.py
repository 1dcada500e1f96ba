"""The documentation site: every page is in mkdocs.yml's navigation and every page in the navigation
exists, every relative link between pages resolves (to a file, and to a heading where it names
one), the API reference names modules that exist, the offline lmms-eval example is where the docs
say, and ``mkdocs build --strict`` passes (run where mkdocs is installed: the ``docs`` extra, as
.ci/run installs it; ``MKDOCS=/path/to/mkdocs`` picks another installation)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def nav_pages() -> list[str]:
    """The .md files the nav of mkdocs.yml names (read as text: no YAML library needed)."""
    text = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n")[1]
    return [m for line in text.splitlines() if not line.lstrip().startswith("#")
            for m in re.findall(r"([\w./-]+\.md)\s*$", line)]


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def slug(heading: str) -> str:
    """Python-Markdown's toc slug (mkdocs' default): lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = nav_pages()
    assert "index.md" in nav and "reference.md" in nav
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert not on_disk - set(nav), f"pages missing from mkdocs.yml's nav: {sorted(on_disk - set(nav))}"
    assert not set(nav) - on_disk, f"nav entries with no page: {sorted(set(nav) - on_disk)}"
    assert len(nav) == len(set(nav))


def test_relative_links_resolve():
    bad = []
    for p in pages():
        text = re.sub(r"```.*?```", "", p.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            file, _, anchor = target.partition("#")
            dest = (p.parent / file).resolve() if file else p
            if not dest.exists():
                bad.append(f"{p.relative_to(DOCS)}: {target} (no file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{p.relative_to(DOCS)}: {target} (no heading #{anchor})")
    assert not bad, bad


def test_slug_matches_mkdocs_for_a_heading_with_code():
    assert slug("Reproducing the paper's tables: `aot report`") == "reproducing-the-papers-tables-aot-report"


def test_reference_names_existing_modules():
    ref = (DOCS / "reference.md").read_text()
    mods = re.findall(r"^::: ([\w.]+)", ref, flags=re.M)
    assert "aot" in mods and "aot.compress" in mods
    missing = [m for m in mods if not ((ROOT / (m.replace(".", "/") + ".py")).is_file()
                                       or (ROOT / m.replace(".", "/") / "__init__.py").is_file())]
    assert not missing, f"docs/reference.md documents modules that do not exist: {missing}"


def test_local_lmms_task_example_is_complete():
    folder = ROOT / "examples" / "lmms_local_task"
    yaml = (folder / "aot_local_video.yaml").read_text()
    assert "task: aot_local_video" in yaml and "examples/lmms_local_task/questions.jsonl" in yaml
    assert (folder / "utils.py").is_file() and (folder / "questions.jsonl").is_file()
    evaluation = (DOCS / "evaluation.md").read_text()
    assert "--include_path examples/lmms_local_task" in evaluation and "--tasks aot_local_video" in evaluation


def mkdocs_command() -> list[str] | None:
    if os.environ.get("MKDOCS"):
        return [os.environ["MKDOCS"]]
    try:
        import mkdocs  # noqa: F401
        import material  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "mkdocs"]


def test_mkdocs_build_strict(tmp_path):
    cmd = mkdocs_command()
    if cmd is None:
        pytest.skip("mkdocs, mkdocs-material and mkdocstrings are not installed (pip install -e '.[docs]')")
    res = subprocess.run([*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ref = (tmp_path / "site" / "reference" / "index.html").read_text()
    # the API reference carries the docstrings (not just the headings)
    assert "round_half_up" in ref or "exactly" in ref
    assert (tmp_path / "site" / "index.html").is_file()
