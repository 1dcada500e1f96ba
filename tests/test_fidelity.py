"""Fidelity metrics against hand-computed answers."""

import math

import torch

import aot
from aot.fidelity import fidelity


def test_identity_is_perfect():
    x = torch.randn(3, 16, 8)
    out = aot.compress(x, torch.rand(3, 16), config=aot.AOTConfig(retention=1.0))
    fid = fidelity(x, out.tokens, out.sizes, out.assignment)
    for v in fid:
        assert abs(v - 1.0) < 1e-5


def test_hand_computed_two_tokens():
    # x = [e0, e1] in one frame, both absorbed into y = e0: token cosines are 1 and 0.
    e = torch.eye(2)
    x = e.view(1, 2, 2)
    y = e[:1]
    fid = fidelity(x, y, torch.tensor([2]), torch.tensor([0, 0]))
    assert abs(fid.token_cos_mean - 0.5) < 1e-6
    # full readout of query e_i: softmax([1, 0] / sqrt 2) over keys [e0, e1] -> (p, 1 - p) for e0
    p = 1 / (1 + math.exp(-1 / math.sqrt(2)))
    full0 = torch.tensor([p, 1 - p])
    full1 = torch.tensor([1 - p, p])
    # compressed: one key, the readout is e0 for both queries
    want = (float(full0[0] / full0.norm()) + float(full1[0] / full1.norm())) / 2
    assert abs(fid.readout_cos_mean - want) < 1e-6


def test_dropped_tokens_count_as_zero():
    x = torch.randn(1, 4, 3)
    fid = fidelity(x, x[0, :2], torch.tensor([1, 1]), torch.tensor([0, 1, -1, -1]))
    assert abs(fid.token_cos_mean - 0.5) < 1e-6
