"""AOT itself and the paper's ablations (Tables 4, 5 and 8), as names over AOTConfig switches.

The ablations that take OT out of the inter-frame stage also judge "changed" without it
(keep_by="cosine": the kept tokens are those least similar to every keyframe anchor).
"""

from __future__ import annotations

from ..compress import compress
from ..config import AOTConfig
from .registry import Method, register

_ABLATIONS = {
    # name: (AOTConfig overrides, summary)
    "aot-plan-keep": (dict(keep_by="plan"),
                      "AOT keeping the tokens with the lowest q = max_j p_ij of the plan (the paper's literal rule)"),
    "aot-random-anchors": (dict(anchor_select="random"), "AOT with uniformly random anchors (paper Table 8)"),
    "aot-no-local": (dict(global_share=1.0), "AOT without local (windowed) anchors: all anchors global (Table 5)"),
    "aot-no-global": (dict(global_share=0.0), "AOT without global anchors: all anchors local (Table 5)"),
    "aot-no-ot": (dict(intra_merge="none", inter_merge="none", keep_by="cosine"),
                  "anchors and kept tokens only, the rest dropped: no aggregation (Table 4 'no merging', Table 5 'w/o OT')"),
    "aot-cosine": (dict(intra_merge="cosine", inter_merge="cosine", keep_by="cosine"),
                   "cosine-similarity weighting instead of the OT plan, both stages (Table 4)"),
    "aot-intra-only": (dict(inter_merge="none", keep_by="cosine"), "OT inside frames only; later frames' tokens kept or dropped (Table 5 'w/o inter')"),
    "aot-inter-only": (dict(intra_merge="none"), "OT across frames only; unanchored tokens dropped (Table 5 'w/o intra')"),
}


def _aot(x, scores, *, local_scores=None, grid=None, config: AOTConfig):
    return compress(x, scores, local_scores=local_scores, grid=grid, config=config)


register(Method("aot", _aot, AOTConfig, "AOT: local-global anchors, intra- and inter-frame OT aggregation (this library)"))
for _name, (_preset, _summary) in _ABLATIONS.items():
    register(Method(_name, _aot, AOTConfig, _summary, preset=_preset))
