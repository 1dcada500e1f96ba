"""The one table of model families (aot.families) against what reads it and what it names.

Independent answers: transformers itself (each class exists, its config class has the model_type the
table says), the adapter modules (patch/unpatch exist), the lmms-eval plugin module (every class is
there with its name and family), the source of the runners (no import of aot.run from the eval
engine: the circle is gone) and a fresh interpreter (importing one does not import the other)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import aot.families as families
from aot.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_class_exists_with_its_model_type(name):
    import transformers

    fam = FAMILIES[name]
    assert len(fam.classes) == len(fam.model_types)
    for cls_name, model_type in zip(fam.classes, fam.model_types):
        cls = getattr(transformers, cls_name)
        assert cls.config_class.model_type == model_type
        assert fam.class_for(model_type) == cls_name
        assert fam.class_for("other", [cls_name]) == cls_name
        assert families.of_config(model_type).name == name
        assert families.of_class(cls_name) is fam
    adapter = importlib.import_module(f"aot.models.{fam.adapter}")
    assert callable(adapter.patch) and callable(adapter.unpatch)


def test_patch_dispatch_and_lmms_models_come_from_the_table():
    from aot.models import AVAILABLE_MODELS
    from aot.models.patch import SUPPORTED

    assert SUPPORTED == {c: f"aot.models.{f.adapter}" for f in FAMILIES.values() for c in f.classes}
    assert len(SUPPORTED) == 6
    pytest.importorskip("lmms_eval")
    from aot.eval import lmms_entry, lmms_plugin

    assert lmms_entry.MODELS == {f.lmms_model: f"aot.eval.lmms_plugin.{f.lmms_class}" for f in FAMILIES.values()}
    for fam in FAMILIES.values():
        cls = getattr(lmms_plugin, fam.lmms_class)
        assert (cls.NAME, cls.FAMILY, cls.CONV_TEMPLATES) == (fam.lmms_model, fam.name, fam.conv_templates)
        assert AVAILABLE_MODELS[fam.lmms_model] == fam.lmms_class
        shim = importlib.import_module(f"aot.models.{fam.lmms_model}")  # LMMS_EVAL_PLUGINS=aot imports these
        assert getattr(shim, fam.lmms_class) is cls


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_run_engine_import_circle_is_gone():
    assert not any(m in ("..run", "aot.run") for m in _imports(ROOT / "aot" / "eval" / "engine.py"))
    for first, other in (("aot.eval.engine", "aot.run"), ("aot.run", "aot.eval.engine")):
        code = f"import sys, {first}; assert {other!r} not in sys.modules, 'importing {first} imported {other}'"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0, res.stderr


def test_the_table_module_is_pure():
    assert {m.split(".")[0] for m in _imports(ROOT / "aot" / "families.py")} <= {"__future__", "dataclasses"}


def test_family_options_and_refusals():
    assert families.family_options("llava_onevision") == {"video_layout": "onevision", "positions": "contiguous",
                                                          "local_layer": 5, "global_layer": -2}
    for name in ("qwen2_5_vl", "qwen3_vl", "qwen3_5"):
        assert families.family_options(name) == {}
        assert families.family_options(name, layers=(1, -1)) == {"local_layer": 1, "global_layer": -1}
        with pytest.raises(ValueError, match="'llava-video' is for LLaVA-Video checkpoints"):
            families.family_options(name, video_layout="llava-video")
        with pytest.raises(ValueError, match="'original' is for LLaVA checkpoints"):
            families.family_options(name, positions="original")
    assert families.refusal(FAMILIES["qwen3_5"], "llm").startswith("its text model is hybrid")
    assert families.refusal(FAMILIES["qwen3_5"], "pre-llm") is None
    assert all(families.refusal(f, "llm") is None for n, f in FAMILIES.items() if n != "qwen3_5")
    with pytest.raises(ValueError, match="unknown model family 'qwen9'"):
        families.get("qwen9")
    with pytest.raises(ValueError, match="aot supports LlavaOnevisionForConditionalGeneration"):
        families.of_config("bert", ["BertModel"])
    with pytest.raises(TypeError, match="Linear is not a model aot runs"):
        import torch

        families.of_model(torch.nn.Linear(1, 1))
