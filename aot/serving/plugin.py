"""The ``vllm.general_plugins`` entry point (pyproject: ``aot = "aot.serving.plugin:register"``).

vLLM calls ``register()`` in every process it starts. It only adds *new* architecture names, given as
"module:Class" strings (vLLM imports the module when a model asks for that name), so a stock model is
never changed by installing aot. Idempotent: a second call does nothing. It imports vLLM's ModelRegistry (as vLLM's
plugin guide does; every engine process imports it anyway) and nothing of aot's model code. The CPU-runner fix
(``aot.serving.cpu_fix``) is installed only on vLLM's CPU platform for the versions that need it.
"""

from __future__ import annotations

__all__ = ["register", "ARCHITECTURES"]

# new architecture name -> "module:Class" (imported lazily by vLLM's ModelRegistry)
ARCHITECTURES = {
    "AotQwen2_5_VLForConditionalGeneration": "aot.serving.qwen2_5_vl:AotQwen2_5_VLForConditionalGeneration",
    "AotQwen3VLForConditionalGeneration": "aot.serving.qwen3_vl:AotQwen3VLForConditionalGeneration",
    "AotQwen3VLMoeForConditionalGeneration": "aot.serving.qwen3_vl:AotQwen3VLMoeForConditionalGeneration",
    "AotQwen3_5ForConditionalGeneration": "aot.serving.qwen3_vl:AotQwen3_5ForConditionalGeneration",
    "AotQwen3_5MoeForConditionalGeneration": "aot.serving.qwen3_vl:AotQwen3_5MoeForConditionalGeneration",
    "AotLlavaOnevisionForConditionalGeneration":
        "aot.serving.llava_onevision:AotLlavaOnevisionForConditionalGeneration",
}

_DONE = False


def register() -> None:
    global _DONE
    if _DONE:
        return
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in known:
            ModelRegistry.register_model(name, target)
    from .cpu_fix import install_if_needed

    install_if_needed()
    _DONE = True
