"""Tiny random Qwen3-VL / Qwen3-VL-MoE / Qwen3.5 / Qwen3.5-MoE checkpoints for the vLLM tests, with their
transformers references (the adapter, aot.patch, on the same weights and processor output).

tests/hf_tiny_qwen3.py's tokenizer, processor and tower (DeepStack taps at blocks 1 and 2 for Qwen3-VL),
with a text model vLLM's CPU kernels accept: head size 64 for the paged attention; Qwen3.5's Gated
DeltaNet key/value head dims 128 (vLLM 0.32's CPU kernels refuse 16 and 32).
"""

from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: hf_tiny_qwen3

import hf_tiny_qwen3 as h3  # noqa: E402

import aot  # noqa: E402
from aot.serving import options as opts  # noqa: E402

FPS = 2.0
PROMPT = "<s><|vision_start|><|video_pad|><|vision_end|> what is in the video ?</s><s>"
PROMPT2 = ("<s><|vision_start|><|video_pad|><|vision_end|> and <|vision_start|><|video_pad|><|vision_end|> "
           "what is in the video ?</s><s>")
VIDEOS = {"a": h3.frames(8, seed=0), "b": h3.frames(6, seed=1, height=48, width=32),
          "c": h3.frames(8, seed=2)}  # "c": the size and length of "a", other pixels
ARCHS = {"qwen3_vl": "AotQwen3VLForConditionalGeneration", "qwen3_vl_moe": "AotQwen3VLMoeForConditionalGeneration",
         "qwen3_5": "AotQwen3_5ForConditionalGeneration", "qwen3_5_moe": "AotQwen3_5MoeForConditionalGeneration"}


def config(family: str = "qwen3_vl", all_experts: bool = False):
    """all_experts: every token uses every expert (top-k = k), so routing has no discrete choice that a
    bfloat16 rounding could flip."""
    cfg = h3.config(family, hidden=128)
    text = cfg.text_config
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 2, 64
    text.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                            "mrope_interleaved": True}
    if family == "qwen3_vl_moe":  # vLLM 0.32 reads it (transformers 5.19's config has no such field and always
        text.norm_topk_prob = True  # renormalises the top-k router weights); the released config.json set it
    if family.endswith("moe"):  # transformers transposes a fused expert matrix on load only if its shape differs
        text.moe_intermediate_size = 32  # gate_up (E, 64, 128), down (E, 128, 32): no square matrix
        if all_experts:
            text.num_experts_per_tok = text.num_experts
    if family.startswith("qwen3_5"):
        text.rope_parameters["partial_rotary_factor"] = 1.0
        text.linear_key_head_dim = text.linear_value_head_dim = 128  # vLLM 0.32 CPU kernels: 32 and 16 refused
    return cfg


def hf_class(family: str):
    import transformers

    return getattr(transformers, h3.MODEL_CLASSES[family])


def save(folder, family: str = "qwen3_vl", dtype=torch.float32, seed: int = 0, all_experts: bool = False) -> pathlib.Path:
    """The tiny checkpoint of ``family`` in ``dtype`` (bfloat16: the weights vLLM's bfloat16 engine uses,
    exactly). MoE experts are written in the released checkpoints' layout (``hub_expert_layout``), and the
    file is checked to load back into the same weights in transformers."""
    folder = pathlib.Path(folder)
    torch.manual_seed(seed)
    model = hf_class(family)(config(family, all_experts)).eval().to(dtype)
    model.generation_config.pad_token_id = h3.tokenizer().pad_token_id
    model.save_pretrained(folder)
    save_processor(folder)
    if family.endswith("moe"):
        hub_expert_layout(folder / "model.safetensors", family)
        back = hf_class(family).from_pretrained(folder, dtype=dtype).state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(back[key], value), key
    return folder


def hub_expert_layout(path, family: str) -> None:
    """transformers 5.19 saves fused experts as it holds them, gate_up_proj (E, 2I, H) and down_proj (E, H, I);
    the released checkpoints (and vLLM 0.32's loaders) have Qwen3-VL-MoE's transposed, (E, H, 2I) and
    (E, I, H), and Qwen3.5-MoE's per expert (``experts.{e}.gate_proj.weight``, ...), which transformers
    converts back on load (conversion_mapping: qwen3_vl_moe, qwen2_moe)."""
    from safetensors.torch import load_file, save_file

    weights, out = load_file(path), {}
    for key, value in weights.items():
        if not key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            out[key] = value
        elif family == "qwen3_vl_moe":
            out[key] = value.transpose(1, 2).contiguous()
        else:
            stem = key.rsplit(".", 1)[0]
            for e, w in enumerate(value):
                if key.endswith("gate_up_proj"):
                    gate, up = w.chunk(2, dim=0)
                    out[f"{stem}.{e}.gate_proj.weight"], out[f"{stem}.{e}.up_proj.weight"] = gate.clone(), up.clone()
                else:
                    out[f"{stem}.{e}.down_proj.weight"] = w.clone()
    save_file(out, path, metadata={"format": "pt"})


def save_processor(folder):
    """tests/hf_tiny_qwen3.py's processor with the image processor's mean/std set to the video processor's
    (0.5, as in the released Qwen3-VL checkpoints). With the two sets different (CLIP's for images, 0.5 for
    videos) vLLM 0.32's tower output differed from transformers' on the same video (log-probabilities 3.2
    apart, stock text path equal); with them equal, 8e-6: vLLM's Qwen3-VL path evidently normalises videos
    with the image processor's statistics (not traced further)."""
    proc = h3.processor()
    proc.image_processor.image_mean = list(proc.video_processor.image_mean)
    proc.image_processor.image_std = list(proc.video_processor.image_std)
    proc.save_pretrained(folder)


def meta(frames):
    n, h, w, _ = frames.shape
    return dict(total_num_frames=n, fps=FPS, width=w, height=h, duration=n / FPS, video_backend="opencv",
                frames_indices=list(range(n)))


def grid(name):
    n, h, w, _ = VIDEOS[name].shape
    return n // 2, h // 8, w // 8


def budget(name, retention):
    """aot.budget summed over the videos of ``name`` ("b+a": two videos in one prompt)."""
    return sum(aot.budget(retention, t, h * w) for t, h, w in map(grid, name.split("+")))


def reference(ckpt, family: str = "qwen3_vl"):
    """run(name, retention, greedy=0) -> (first-token log-probabilities (V,) of transformers in float32, the
    adapter's ``_aot.last`` plus ``"positions"``: each video's kept flat grid indices, and with greedy=n the
    n greedy tokens of ``generate``); retention None: the unpatched model."""
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    model = hf_class(family).from_pretrained(ckpt, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(ckpt)

    def run(name, retention, greedy: int = 0):
        frames = [VIDEOS[n] for n in name.split("+")]
        inputs = proc(text=PROMPT if len(frames) == 1 else PROMPT2, videos=frames,
                      video_metadata=[VideoMetadata(**meta(f)) for f in frames], return_tensors="pt")
        kept = []
        if retention is not None:
            aot.patch(model, aot.AOTConfig(retention=retention))
            model._aot.method = _Recording(model._aot.method, kept)
        try:
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1].float()
                last = dict(model._aot.last, positions=kept) if retention is not None else None
                if greedy:
                    gen = model.generate(**inputs, max_new_tokens=greedy, do_sample=False, output_scores=True,
                                         return_dict_in_generate=True)
                    # each step's decision margin: top-1 minus top-2 log-probability (a bfloat16 engine
                    # can only be asked to make the same choice where this exceeds its measured error)
                    margins = [float(torch.log_softmax(sc[0].float(), -1).topk(2).values.diff().abs()[0])
                               for sc in gen.scores]
                    last = dict(last or {}, greedy=gen.sequences[0, inputs["input_ids"].shape[1]:].tolist(),
                                margins=margins)
        finally:
            if retention is not None:
                aot.unpatch(model)
        return torch.log_softmax(logits, -1), last

    return run


class _Recording:
    """The adapter's method, recording each call's kept flat grid indices (R,)."""

    def __init__(self, method, kept: list):
        self._method, self._kept = method, kept

    def __getattr__(self, key):
        return getattr(self._method, key)

    def __call__(self, *args, **kw):
        c = self._method(*args, **kw)
        self._kept.append(c.positions[0].cpu())
        return c


def request(name, retention=None, prompt: str | None = None):
    videos = [(VIDEOS[n], meta(VIDEOS[n])) for n in name.split("+")]
    r = {"prompt": prompt or (PROMPT if len(videos) == 1 else PROMPT2),
         "multi_modal_data": {"video": videos[0] if len(videos) == 1 else videos}}
    if retention is not None:
        r["mm_processor_kwargs"] = {opts.REQUEST_KWARG: retention}
    return r


def engine(ckpt, arch: str, dtype: str = "float32", retention: float = 0.25, **kw):
    from vllm import LLM

    args = dict(model=str(ckpt), hf_overrides={"architectures": [arch], "aot": {"method": "aot", "retention": retention}},
                video_pruning_rate=0.5, dtype=dtype, max_model_len=1024, enforce_eager=True, max_num_seqs=4,
                limit_mm_per_prompt={"video": 2}, max_logprobs=-1, seed=0, gpu_memory_utilization=0.1,
                enable_prefix_caching=False, enable_chunked_prefill=False, max_num_batched_tokens=1024)
    return LLM(**{**args, **kw})


def model_of(llm):
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner.model


def logprobs(out, vocab: int) -> torch.Tensor:
    lp = out.outputs[0].logprobs[0]
    return torch.tensor([lp[i].logprob for i in range(vocab)])


def check_bf16_engine(ckpt, family: str, reference, atol: float, greedy: int = 0) -> dict:
    """A bfloat16 engine of ``family``'s aot class on ``ckpt`` (saved in bfloat16) against the transformers
    adapter in float32 on the same weights, video "a", retention 1.0 and 0.25: placeholders = kept rows =
    aot.budget, the kept grid cells and per-slice counts equal, first-token log-probabilities within ``atol``,
    and the first of ``greedy`` greedy tokens equal as long as the float32 reference decided each by a
    margin above 2 x atol (a random tiny model's later steps are often near-ties that bfloat16 flips:
    with issue 22's defaults Qwen3.5-MoE's step 2 at retention 0.25 is 0.077 apart). Returns the model's ``aot_last`` video record per retention."""
    import gc

    from vllm import SamplingParams

    arch, records = ARCHS[family], {}
    llm = engine(ckpt, arch, dtype="bfloat16", limit_mm_per_prompt={"video": 1}, max_num_seqs=2)
    try:
        model = model_of(llm)
        cfg = llm.llm_engine.model_config.hf_config
        assert type(model).__name__ == arch and not model.use_deepstack
        for retention in (1.0, 0.25):
            out = llm.generate([request("a", retention)], SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1))[0]
            want = budget("a", retention)
            assert sum(1 for i in out.prompt_token_ids if i == cfg.video_token_id) == want
            ref, last = reference("a", retention, greedy)
            mine = records[retention] = model.aot_last["videos"][0]
            assert last["tokens_out"] == mine["kept"] == want
            assert mine["slice_tokens"] == last["slice_tokens"][0]
            assert torch.equal(mine["positions"], last["positions"][0])
            gap = float((logprobs(out, cfg.text_config.vocab_size) - ref).abs().max())
            print(f"{family} retention {retention}: first-token log-prob gap {gap:.4f} (atol {atol:.4f})")
            assert gap <= atol, (family, retention, gap)
            if greedy:
                tokens = llm.generate([request("a", retention)], SamplingParams(max_tokens=greedy, temperature=0.0))[0]
                got = list(tokens.outputs[0].token_ids)
                # equal greedy tokens up to the first step whose float32 decision margin is within twice
                # the measured bfloat16 error (there a tie-near choice may flip; after it the texts differ)
                sure = next((i for i, m in enumerate(last["margins"]) if m <= 2 * atol), len(last["margins"]))
                print(f"{family} retention {retention}: greedy margins {[round(m, 3) for m in last['margins']]}, "
                      f"{sure} of {greedy} steps decided beyond 2 x atol")
                assert got[:sure] == last["greedy"][:sure], (retention, got, last["greedy"], last["margins"])
    finally:
        del llm
        gc.collect()
    return records
