"""Cost model: FLOPs of a video LLM before and after visual-token compression (paper Eq. 17, 18).

Every count follows the paper's convention (Sec. 4.1, after FastV/PDrop/DyCoke): one Transformer
layer with hidden size d and FFN width m processing n tokens costs ``4 n d^2 + 2 n^2 d + 2 n d m``
FLOPs -- the q/k/v/o projections as four d x d matmuls, attention scores and values as 2 n^2 d, and
the FFN as two d x m matmuls. It ignores grouped-query K/V (narrower k/v projections), the third
(gate) matrix of SwiGLU FFNs, norms, softmax and the LM head, which is why it is a convention and
not a measurement. With n = visual tokens only it reproduces the paper's FLOPs columns.

Newer LLMs in the same convention: a mixture-of-experts layer counts the FFN width a token actually
runs through (``num_experts_per_tok`` x ``moe_intermediate_size``, plus a shared expert's width:
Qwen3-VL-MoE, Qwen3.5-MoE); a linear-attention layer (Qwen3.5's Gated DeltaNet, 3 of every 4 layers)
has no 2 n^2 d term and instead ``6 h dk dv`` per token for its recurrent state (read with k, write,
read with q: three (dk x dv) products per value head), its projections still counted as 4 n d^2.

The paper counts only the LLM. ``report`` also counts the vision tower and the projector in the
same convention, because at 10% retention they are most of what is left.

    rows = report("llava-onevision-7b")            # 32 frames x 196 tokens, retentions 1 .. 0.1
    print(markdown(rows))
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from .config import budget

__all__ = ["LLMSpec", "VisionSpec", "ModelSpec", "CostRow", "PRESETS", "layer_flops", "prefill_flops",
           "decode_flops", "vision_flops", "spec_from_config", "get_spec", "report", "markdown",
           "schedule_prefill_flops", "inllm_tokens_per_layer", "InLLMRow", "IN_LLM_DEFAULTS", "inllm_report",
           "inllm_markdown", "add_flops_parser", "run_flops"]


@dataclass(frozen=True)
class LLMSpec:
    """The LLM backbone, as Eq. 17 sees it."""

    layers: int  # T: decoder layers
    hidden: int  # d: hidden size
    ffn: int  # m: FFN (intermediate) width; MoE: the width a token runs through
    name: str = "llm"
    linear: tuple[int, ...] = ()  # indices of linear-attention layers (no n^2 term; Qwen3.5)
    state: int = 0  # FLOPs a token costs a linear-attention layer's recurrent state (6 h dk dv)
    ffns: tuple[int, ...] = ()  # per-layer FFN widths when layers differ (MoE beside dense layers); () = ffn

    def ffn_of(self, i: int) -> int:
        return self.ffns[i] if self.ffns else self.ffn


@dataclass(frozen=True)
class VisionSpec:
    """The vision tower and projector, counted per ViT forward (one frame; Qwen2.5-VL: two frames).

    The ViT attention is counted dense over ``tokens_per_frame`` tokens. That is exact for SigLIP
    and DINOv2; Qwen2.5-VL's ViT uses 112-px window attention in 28 of its 32 layers, so the dense
    count overstates its 2 n^2 d term (by up to ~14% of the tower at 448 px).
    """

    layers: int
    hidden: int
    ffn: int
    tokens_per_frame: int  # ViT tokens of one forward, before any pooling (SigLIP 384 px: 27x27 = 729)
    projector: tuple[tuple[int, int], ...]  # (in, out) of each projector linear
    merge: int = 1  # ViT tokens concatenated into one projector input (Qwen2.5-VL merger: 2x2 = 4)
    temporal_patch: int = 1  # input frames per ViT forward (Qwen2.5-VL: 2 frames per temporal patch)
    name: str = "vision"


@dataclass(frozen=True)
class ModelSpec:
    """A whole video LLM plus the paper's sampling defaults (frames, LLM tokens per frame)."""

    name: str
    llm: LLMSpec
    vision: VisionSpec | None = None  # None: count the LLM only (a plain LLM config)
    frames: int | None = None
    tokens_per_frame: int | None = None  # visual tokens per frame entering the LLM (after pooling)


# SigLIP so400m-patch14-384 (google/siglip-so400m-patch14-384 config.json: 27 layers, 1152, 4304,
# 384 px / 14 = 27x27 patches). LLaVA-OneVision/-Video select layer -2 and drop the last layer, so
# 26 layers run (llava-hf/llava-onevision-qwen2-7b-ov-hf config.json: vision num_hidden_layers 26).
def _siglip(llm_hidden: int) -> VisionSpec:
    # LLaVA projector: mlp2x_gelu, vision_hidden -> llm_hidden -> llm_hidden, applied to all 729
    # tokens of a frame before the video pooling (LlavaOnevision get_video_features order).
    return VisionSpec(26, 1152, 4304, 729, ((1152, llm_hidden), (llm_hidden, llm_hidden)), name="siglip-so400m")


# Qwen2.5-VL ViT (Qwen/Qwen2.5-VL-{3,7}B-Instruct config.json vision_config: depth 32, hidden 1280,
# intermediate 3420, patch 14, spatial_merge 2, temporal_patch 2). Preset resolution: 448x448
# frames, i.e. 32x32 = 1024 ViT tokens per 2-frame temporal patch, 256 LLM tokens = 128 per frame.
# Merger: RMSNorm, Linear(4*1280 -> 4*1280), GELU, Linear(4*1280 -> out_hidden) on merged tokens.
def _qwen_vit(llm_hidden: int) -> VisionSpec:
    return VisionSpec(32, 1280, 3420, 1024, ((5120, 5120), (5120, llm_hidden)), merge=4, temporal_patch=2,
                      name="qwen2.5-vit")


_QWEN2_7B = LLMSpec(28, 3584, 18944, "qwen2-7b")  # Qwen/Qwen2-7B config.json (also Qwen2.5-VL-7B's LLM)
_QWEN2_05B = LLMSpec(24, 896, 4864, "qwen2-0.5b")  # Qwen/Qwen2-0.5B config.json
PRESETS: dict[str, ModelSpec] = {
    # Paper Sec. 4.1: LLaVA-OneVision 32 frames x 196, LLaVA-Video 64 frames x 169.
    "llava-onevision-7b": ModelSpec("llava-onevision-7b", _QWEN2_7B, _siglip(3584), 32, 196),
    "llava-video-7b": ModelSpec("llava-video-7b", _QWEN2_7B, _siglip(3584), 64, 169),
    "llava-onevision-0.5b": ModelSpec("llava-onevision-0.5b", _QWEN2_05B, _siglip(896), 32, 196),
    # No 0.5B LLaVA-Video was released (lmms-lab ships LLaVA-Video-7B/72B-Qwen2), so no preset.
    "qwen2.5-vl-7b": ModelSpec("qwen2.5-vl-7b", LLMSpec(28, 3584, 18944, "qwen2.5-vl-7b"), _qwen_vit(3584), 32, 128),
    "qwen2.5-vl-3b": ModelSpec("qwen2.5-vl-3b", LLMSpec(36, 2048, 11008, "qwen2.5-vl-3b"), _qwen_vit(2048), 32, 128),
    # This repo's local test pair (DESIGN 5): DINOv2 ViT-S/14 at 378 px (729 patches + CLS) and
    # SmolLM2-135M (30 layers, 576, 1536); the projector between them is an assumed LLaVA-style MLP.
    "dinov2-s+smollm2-135m": ModelSpec("dinov2-s+smollm2-135m", LLMSpec(30, 576, 1536, "smollm2-135m"),
                                       VisionSpec(12, 384, 1536, 730, ((384, 576), (576, 576)), name="dinov2-s"),
                                       32, 196),
}


def layer_flops(n: int, d: int, m: int) -> int:
    """FLOPs of one Transformer layer over n tokens (the paper's per-layer term): 4nd^2 + 2n^2d + 2ndm."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def _layer(spec: LLMSpec, i: int, n: int) -> int:
    """Layer i of ``spec`` over n tokens: Eq. 17's term, or a linear-attention layer's (module doc)."""
    if i in spec.linear:
        d = spec.hidden
        return 4 * n * d * d + 2 * n * d * spec.ffn_of(i) + n * spec.state
    return layer_flops(n, spec.hidden, spec.ffn_of(i))


def prefill_flops(spec: LLMSpec, n_tokens: int) -> int:
    """Prefill FLOPs of the LLM over ``n_tokens`` tokens, paper Eq. 17 (T identical layers; a hybrid or
    partly-MoE spec sums its layers)."""
    _check_count("n_tokens", n_tokens)
    if not spec.linear and not spec.ffns:
        return spec.layers * layer_flops(n_tokens, spec.hidden, spec.ffn)
    return sum(_layer(spec, i, n_tokens) for i in range(spec.layers))


def schedule_prefill_flops(spec: LLMSpec, tokens_per_layer) -> int:
    """Prefill FLOPs when layer i processes ``tokens_per_layer[i]`` tokens (in-LLM pruning: FastV, PDrop).

    Eq. 17 with n_i per layer: sum_i 4 n_i d^2 + 2 n_i^2 d + 2 n_i d m. One entry per layer."""
    tokens = list(tokens_per_layer)
    if len(tokens) != spec.layers:
        raise ValueError(f"tokens_per_layer has {len(tokens)} entries; {spec.name} has {spec.layers} layers")
    for n in tokens:
        _check_count("tokens per layer", n)
    return sum(_layer(spec, i, n) for i, n in enumerate(tokens))


def inllm_tokens_per_layer(method, config, n_visual: int, n_layers: int, text_tokens: int = 0) -> list[int]:
    """Tokens each layer processes under an in-LLM method's schedule (``aot.methods`` name or Method)."""
    from . import methods

    m = methods.get(method) if isinstance(method, str) else method
    if not m.in_llm:
        raise ValueError(f"method {m.name!r} compresses before the LLM; use report() for it")
    _check_count("n_visual", n_visual)
    _check_count("text_tokens", text_tokens)
    stages = m.schedule(config, n_visual, n_layers)
    tokens, visual = [], n_visual
    for i in range(n_layers):
        for st in stages:
            if st.prune_before == i:
                visual = min(visual, st.keep)
        tokens.append(visual + text_tokens)
    return tokens


@dataclass(frozen=True)
class InLLMRow:
    """One in-LLM setting's prefill cost (visual tokens + text tokens per layer)."""

    method: str
    config: dict
    schedule: list  # [(first layer of a stage, visual tokens from it on)], layer 0 first
    llm_tflops: float
    vs_vanilla: float  # LLM prefill / LLM prefill with every visual token in every layer


# (method, config fields): FastV's published default (K=2, R=50%), FastV at the AOT paper's Table 1
# cost (K=2, R=80%: 9.3 TFLOPs on LLaVA-OV-7B), PDrop's published default (layers 8/16/24, lambda 0.5)
IN_LLM_DEFAULTS = (("fastv", {"retention": 0.5}), ("fastv", {"retention": 0.2}), ("pdrop", {}))


def inllm_report(model: str | ModelSpec | LLMSpec, frames: int | None = None, tokens_per_frame: int | None = None,
                 settings=IN_LLM_DEFAULTS, text_tokens: int = 0) -> list[InLLMRow]:
    """LLM prefill FLOPs of in-LLM methods (per-layer token counts), as the paper's FastV/PDrop rows."""
    from . import methods

    spec, frames, tokens_per_frame = _video(model, frames, tokens_per_frame)
    n_visual = frames * tokens_per_frame
    vanilla = prefill_flops(spec.llm, n_visual + text_tokens)
    rows = []
    for name, fields in settings:
        m = methods.get(name)
        cfg = m.config(**fields)
        tokens = inllm_tokens_per_layer(m, cfg, n_visual, spec.llm.layers, text_tokens)
        sched = [(i, t - text_tokens) for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]
        f = schedule_prefill_flops(spec.llm, tokens)
        rows.append(InLLMRow(name, dict(cfg.__dict__), sched, f / 1e12, f / vanilla if vanilla else 0.0))
    return rows


def inllm_markdown(rows: list[InLLMRow]) -> str:
    head = ["method", "config", "visual tokens from layer", "LLM prefill TFLOPs", "vs vanilla"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---:|---:|"]
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r.config.items())
        sched = ", ".join(f"{n} from {i}" for i, n in r.schedule)
        lines.append(f"| {r.method} | {cfg} | {sched} | {r.llm_tflops:.2f} | {r.vs_vanilla:.1%} |")
    return "\n".join(lines)


def decode_flops(spec: LLMSpec, n_context: int, n_new: int) -> int:
    """FLOPs of generating ``n_new`` tokens (R) after a prefill of ``n_context`` (n), paper Eq. 18.

    Per layer: ``R (4d^2 + 2dm) + 2 R (d n + d (R + 1) / 2)``: each new token pays the linear layers
    and attends over the KV cache, whose length averages n + (R + 1) / 2 over the R steps.
    """
    _check_count("n_context", n_context)
    _check_count("n_new", n_new)
    d, r = spec.hidden, n_new
    total = 0
    for i in range(spec.layers):
        m = spec.ffn_of(i)
        attend = r * spec.state if i in spec.linear else 2 * r * d * n_context + d * r * (r + 1)
        total += r * (4 * d * d + 2 * d * m) + attend
    return total


def vision_flops(vision: VisionSpec, frames: int) -> int:
    """FLOPs of the vision tower plus projector for ``frames`` input frames (Eq. 17's convention).

    Each ViT forward (``temporal_patch`` frames) costs ``layers * layer_flops(tokens_per_frame)``;
    each projector linear costs ``2 * tokens * in * out`` on the ``tokens_per_frame / merge`` tokens
    it sees. Visual-token compression happens after the projector, so this does not depend on it.
    """
    _check_count("frames", frames, low=1)
    n = vision.tokens_per_frame
    tower = vision.layers * layer_flops(n, vision.hidden, vision.ffn)
    projector = sum(2 * (n // vision.merge) * fan_in * fan_out for fan_in, fan_out in vision.projector)
    return math.ceil(frames / vision.temporal_patch) * (tower + projector)


@dataclass(frozen=True)
class CostRow:
    """One retention's cost. TFLOPs are 1e12 FLOPs; shares are of ``total_tflops``."""

    retention: float
    visual_tokens: int  # budget(retention, F, N): exactly what the compressor outputs
    llm_tflops: float  # LLM prefill over visual_tokens + text tokens (Eq. 17; the paper's column)
    vision_tflops: float  # vision tower + projector; unchanged by compression
    decode_tflops: float  # Eq. 18 for the requested new tokens (0 when none)
    total_tflops: float
    llm_share: float
    vision_share: float
    decode_share: float
    vs_vanilla: float  # total / total at retention 1.0


def get_spec(model: str | ModelSpec | LLMSpec) -> ModelSpec:
    """A ModelSpec from a preset name, a ModelSpec, or a bare LLMSpec (LLM only)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, LLMSpec):
        return ModelSpec(model.name, model)
    if model not in PRESETS:
        raise ValueError(f"unknown model preset {model!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[model]


def report(model: str | ModelSpec | LLMSpec, frames: int | None = None, tokens_per_frame: int | None = None,
           retentions=(1.0, 0.25, 0.2, 0.15, 0.1), text_tokens: int = 0, decode_tokens: int = 0) -> list[CostRow]:
    """Cost of one video at each retention. ``frames`` / ``tokens_per_frame`` default to the preset's."""
    spec, frames, tokens_per_frame = _video(model, frames, tokens_per_frame)
    _check_count("text_tokens", text_tokens)
    _check_count("decode_tokens", decode_tokens)
    vision = vision_flops(spec.vision, frames) if spec.vision is not None else 0

    def cost(visual: int) -> tuple[int, int]:
        n = visual + text_tokens
        return prefill_flops(spec.llm, n), decode_flops(spec.llm, n, decode_tokens)

    vanilla = vision + sum(cost(frames * tokens_per_frame))
    rows = []
    for r in retentions:
        kept = budget(r, frames, tokens_per_frame)
        llm, dec = cost(kept)
        total = llm + vision + dec
        share = (lambda x: x / total) if total else (lambda x: 0.0)  # a budget of 0 tokens and no tower
        rows.append(CostRow(r, kept, llm / 1e12, vision / 1e12, dec / 1e12, total / 1e12,
                            share(llm), share(vision), share(dec), total / vanilla if vanilla else 0.0))
    return rows


VISUAL_TOKENS_NOTE = ("visual tokens: the compressor's output, newlines excluded (aot.efficiency); LLaVA-OneVision "
                      "adds one newline after the video, which aot run and aot eval print apart, e.g. "
                      "'visual tokens 627 (+1 newline)', and which these FLOPs leave out")


def markdown(rows: list[CostRow]) -> str:
    """A Markdown table of ``rows``; the decode columns appear only when decoding is counted."""
    dec = any(row.decode_tflops for row in rows)
    head = ["retention", "visual tokens", "LLM prefill TFLOPs", "vision+proj TFLOPs", *["decode TFLOPs"] * dec,
            "total TFLOPs", "LLM share", "vision share", *["decode share"] * dec, "vs vanilla"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        cells = [f"{row.retention * 100:g}%", str(row.visual_tokens), f"{row.llm_tflops:.2f}",
                 f"{row.vision_tflops:.2f}", *[f"{row.decode_tflops:.2f}"] * dec, f"{row.total_tflops:.2f}",
                 f"{row.llm_share:.1%}", f"{row.vision_share:.1%}", *[f"{row.decode_share:.1%}"] * dec,
                 f"{row.vs_vanilla:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# config.json


def _get(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise KeyError(f"config.json: missing key {where}{key!r}")
    return cfg[key]


def _llm_from(cfg: dict, where: str, name: str) -> LLMSpec:
    """Dense, MoE (``num_experts`` / ``num_local_experts`` with ``num_experts_per_tok`` x
    ``moe_intermediate_size`` + ``shared_expert_intermediate_size``; dense layers where
    ``mlp_only_layers`` / ``decoder_sparse_step`` say) and hybrid (``layer_types``: linear_attention)."""
    layers, hidden = int(_get(cfg, "num_hidden_layers", where)), int(_get(cfg, "hidden_size", where))
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    ffns: tuple[int, ...] = ()
    if experts:
        moe = int(_get(cfg, "num_experts_per_tok", where)) * int(_get(cfg, "moe_intermediate_size", where))
        moe += int(cfg.get("shared_expert_intermediate_size") or 0)
        dense_only = set(cfg.get("mlp_only_layers") or [])
        step = int(cfg.get("decoder_sparse_step") or 1)
        sparse = [i not in dense_only and (i + 1) % step == 0 for i in range(layers)]
        ffn = moe
        if not all(sparse):
            dense = int(_get(cfg, "intermediate_size", where))
            ffns = tuple(moe if s else dense for s in sparse)
    else:
        ffn = int(_get(cfg, "intermediate_size", where))
    kinds = cfg.get("layer_types") or []
    linear = tuple(i for i, k in enumerate(kinds) if k == "linear_attention")
    state = 0
    if linear:
        state = 6 * int(_get(cfg, "linear_num_value_heads", where)) * int(_get(cfg, "linear_key_head_dim", where)) \
            * int(_get(cfg, "linear_value_head_dim", where))
    return LLMSpec(layers, hidden, ffn, name, linear, state, ffns)


def spec_from_config(path_or_dict) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (path or parsed dict).

    Layouts: LLaVA-OneVision (``text_config`` + SigLIP ``vision_config``; 2x2 bilinear video pooling,
    so N = ceil(grid / 2)^2), Qwen2.5-VL, Qwen3-VL and Qwen3.5, dense or MoE (LLM keys at the top
    level or in ``text_config``, ViT keys ``depth``/``out_hidden_size``/... in ``vision_config``;
    preset resolution 448 px; Qwen3-VL's DeepStack mergers counted beside the main one), and a plain
    LLM config (LLM only: frames and tokens per frame must then be given). A missing key raises
    KeyError naming it.
    """
    if isinstance(path_or_dict, dict):
        cfg = path_or_dict
    else:
        with open(path_or_dict) as fh:
            cfg = json.load(fh)
    name = str(cfg.get("_name_or_path") or cfg.get("model_type") or "config")
    text = cfg.get("text_config")
    llm = _llm_from(text, "text_config.", name) if isinstance(text, dict) else _llm_from(cfg, "", name)
    vcfg = cfg.get("vision_config")
    if not isinstance(vcfg, dict):
        return ModelSpec(name, llm)
    w = "vision_config."
    if "depth" in vcfg:  # Qwen2.5-VL ViT
        hidden, merge = int(_get(vcfg, "hidden_size", w)), int(_get(vcfg, "spatial_merge_size", w))
        grid = 448 // int(_get(vcfg, "patch_size", w))
        temporal = int(_get(vcfg, "temporal_patch_size", w))
        cat = hidden * merge * merge
        mergers = 1 + len(vcfg.get("deepstack_visual_indexes") or [])  # Qwen3-VL: one merger per DeepStack level
        vision = VisionSpec(int(vcfg["depth"]), hidden, int(_get(vcfg, "intermediate_size", w)), grid * grid,
                            ((cat, cat), (cat, int(_get(vcfg, "out_hidden_size", w)))) * mergers, merge * merge,
                            temporal, name="qwen-vit")
        return ModelSpec(name, llm, vision, 32, grid * grid // (merge * merge * temporal))
    # LLaVA-OneVision / SigLIP layout
    hidden = int(_get(vcfg, "hidden_size", w))
    grid = int(_get(vcfg, "image_size", w)) // int(_get(vcfg, "patch_size", w))
    vision = VisionSpec(int(_get(vcfg, "num_hidden_layers", w)), hidden, int(_get(vcfg, "intermediate_size", w)),
                        grid * grid, ((hidden, llm.hidden), (llm.hidden, llm.hidden)), name="vit")
    return ModelSpec(name, llm, vision, 32, math.ceil(grid / 2) ** 2)


def _video(model, frames: int | None, tokens_per_frame: int | None) -> tuple[ModelSpec, int, int]:
    """(spec, frames, tokens per frame): the preset's defaults where None, both checked >= 1."""
    spec = get_spec(model)
    frames = spec.frames if frames is None else frames
    tokens_per_frame = spec.tokens_per_frame if tokens_per_frame is None else tokens_per_frame
    if frames is None or tokens_per_frame is None:
        raise ValueError(f"{spec.name} has no default frames/tokens per frame; pass both")
    _check_count("frames", frames, low=1)
    _check_count("tokens_per_frame", tokens_per_frame, low=1)
    return spec, frames, tokens_per_frame


def _check_count(name: str, value, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# CLI: ``aot flops``


def _retentions(raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--retention needs comma-separated numbers, got {raw!r}") from None


def add_flops_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``flops`` subcommand to an argparse subparsers object and return its parser."""
    p = subparsers.add_parser("flops", help="FLOPs of a video LLM at several retentions (paper Eq. 17/18, "
                                            "plus the vision tower)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help=f"preset: {', '.join(PRESETS)} (default: llava-onevision-7b)")
    src.add_argument("--config", default=None, help="a Hugging Face config.json instead of a preset")
    p.add_argument("--frames", type=int, default=None, help="input frames (default: the preset's)")
    p.add_argument("--tokens-per-frame", type=int, default=None, help="visual tokens per frame entering the LLM "
                                                                      "(default: the preset's)")
    p.add_argument("--retention", dest="retentions", type=_retentions, default=None,
                   help="comma-separated retentions (default: 1,0.25,0.2,0.15,0.1)")
    p.add_argument("--text-tokens", type=int, default=0, help="text tokens added to the prefill (default: 0)")
    p.add_argument("--decode-tokens", type=int, default=0, help="generated tokens, Eq. 18 (default: 0)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--in-llm", action="store_true", help="also the in-LLM methods' prefill FLOPs (FastV K=2 at "
                                                         "R=50%% and 80%%, PDrop 8/16/24 lambda 0.5)")
    return p


def _config_spec(path: str) -> ModelSpec:
    """``--config``: a readable JSON object with a model's keys, else a ValueError naming the file."""
    from .checks import check_input_file

    check_input_file(path, "--config")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--config {path!r} is not a JSON file ({err}); give a Hugging Face config.json") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path!r} holds a JSON {type(cfg).__name__}, not an object; give a Hugging "
                         f"Face config.json")
    try:
        return spec_from_config(cfg)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"--config {path!r}: not a model config ({err})") from None


DEFAULT_RETENTIONS = (1.0, 0.25, 0.2, 0.15, 0.1)


def _check_cli_budgets(spec: ModelSpec, frames, tokens_per_frame, retentions) -> tuple[float, ...]:
    """The retentions of ``aot flops``, each keeping at least one token (what the compressors accept):
    a ``--retention`` given that keeps none is an error; of the defaults (``retentions`` None) those
    that keep none are left out, with a note."""
    given = retentions is not None
    retentions = tuple(retentions) if given else DEFAULT_RETENTIONS
    frames = spec.frames if frames is None else frames
    tokens_per_frame = spec.tokens_per_frame if tokens_per_frame is None else tokens_per_frame
    if frames is None or tokens_per_frame is None:
        return retentions  # report() names the missing value
    _check_count("frames", frames, low=1)
    _check_count("tokens_per_frame", tokens_per_frame, low=1)
    total = frames * tokens_per_frame
    for r in retentions:
        budget(r, frames, tokens_per_frame)  # the range check
    kept = tuple(r for r in retentions if budget(r, frames, tokens_per_frame) >= 1)
    if not given and kept != retentions:
        dropped = ", ".join(f"{r:g}" for r in retentions if r not in kept)
        print(f"aot flops: note: retention {dropped} keeps 0 of {total} visual tokens ({frames} frames x "
              f"{tokens_per_frame} tokens), which the compressors refuse: left out", file=sys.stderr)
        return kept
    for r in retentions:
        if budget(r, frames, tokens_per_frame) < 1:
            raise ValueError(f"--retention {r:g} keeps 0 of {total} visual tokens ({frames} frames x "
                             f"{tokens_per_frame} tokens); the compressors need at least 1: use retentions "
                             f">= {0.5 / total:.3g}, or more frames or tokens per frame")
    return retentions


def run_flops(args: argparse.Namespace) -> int:
    """Print the cost table for parsed ``aot flops`` arguments; 0 on success, 2 on a bad input."""
    try:
        spec = _config_spec(args.config) if args.config else get_spec(args.model or "llava-onevision-7b")
        retentions = _check_cli_budgets(spec, args.frames, args.tokens_per_frame, args.retentions)
        rows = report(spec, args.frames, args.tokens_per_frame, retentions, args.text_tokens, args.decode_tokens)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"aot flops: error: {msg}", file=sys.stderr)
        return 2
    frames = args.frames or spec.frames
    per = args.tokens_per_frame or spec.tokens_per_frame
    print(f"{spec.name}: {frames} frames x {per} tokens, {args.text_tokens} text tokens, "
          f"{args.decode_tokens} decoded tokens")
    print(markdown(rows))
    print(VISUAL_TOKENS_NOTE)
    inllm = []
    if getattr(args, "in_llm", False):
        try:
            inllm = inllm_report(spec, args.frames, args.tokens_per_frame, text_tokens=args.text_tokens)
        except ValueError as err:
            print(f"aot flops: error: {err}", file=sys.stderr)
            return 2
        print("\nin-LLM pruning (every visual token enters the LLM; layers from the stage on see fewer):")
        print(inllm_markdown(inllm))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": spec.name, "frames": frames, "tokens_per_frame": per, "text_tokens": args.text_tokens,
                       "decode_tokens": args.decode_tokens, "rows": [asdict(r) for r in rows],
                       **({"in_llm_rows": [asdict(r) for r in inllm]} if inllm else {})}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
