"""Score reductions under a logits budget (issue 17 item 4): aot.models.scores.attention_received steps
over several batch elements at once and qwen2_5_vl.segment_received over several equal-length windows.

Oracles: the functions as they were before (copied below, one element / one segment and one query
chunk at a time), which the CPU default must equal bit for bit, and a naive float64 softmax, which
every budget must match within float32 rounding (sums over rows in another grouping round
differently). Operator counts come from torch's profiler (benchmarks/launches.py's counter).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from aot.models import scores as S
from aot.models.qwen2_5_vl import segment_received
from aot.models.scores import attention_received, record_scores, score_bytes

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "launches.py"
_spec = importlib.util.spec_from_file_location("launches", _PATH)
launches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launches)


# --------------------------------------------------------------------------- the oracles


def old_attention_received(q, k, *, chunk=256):
    """attention_received before the budget (commit 8b2332e), kept as the oracle."""
    batch, heads, tq, dh = q.shape
    tk = k.shape[2]
    step = tq if chunk is None else min(chunk, tq)
    total = q.new_zeros((batch, tk), dtype=torch.float32)
    buffer = q.new_empty(heads * step * tk, dtype=torch.float32)
    for b in range(batch):
        kt = (k[b].float() * dh**-0.5).transpose(-1, -2)
        for start in range(0, tq, step):
            qc = q[b, :, start : start + step].float()
            rows = heads * qc.shape[1]
            logits = torch.matmul(qc, kt, out=buffer[: rows * tk].view(heads, -1, tk))
            logits -= logits.amax(dim=-1, keepdim=True)
            logits.exp_()
            inverse = logits.sum(dim=-1).reciprocal_()
            total[b] += (inverse.view(1, rows) @ logits.view(rows, tk))[0]
    return total / (heads * tq)


def old_segment_received(q, k, cu_seqlens, *, chunk=256):
    """segment_received before the budget: one attention_received call per segment."""
    bounds = [int(b) for b in cu_seqlens.tolist()]
    out = torch.zeros(q.shape[1], dtype=torch.float32, device=q.device)
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            out[s:e] = old_attention_received(q[None, :, s:e], k[None, :, s:e], chunk=chunk)[0] * (e - s)
    return out


def naive64(q, k):
    """softmax(q k^T / sqrt(dh)) in float64, averaged over heads and queries: (B, Tk)."""
    attn = torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return attn.mean(dim=(1, 2))


def naive64_segments(q, k, cu):
    """A dense (heads, T, T) softmax with every pair outside its segment masked, summed over queries,
    averaged over heads, in float64; tokens outside every segment receive 0."""
    heads, t, dh = q.shape
    seg = torch.full((t,), -1, dtype=torch.long)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        seg[s:e] = i
    logits = q.double() @ k.double().transpose(-1, -2) / dh**0.5
    logits = logits.masked_fill(seg[:, None] != seg[None, :], float("-inf"))
    inside = seg >= 0
    attn = torch.zeros_like(logits)
    attn[:, inside] = logits[:, inside].softmax(-1)
    return attn.mean(0).sum(0)


def _qk(shape, tk=None, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    b, h, tq, dh = shape
    q = torch.randn(b, h, tq, dh, generator=g) * scale
    k = torch.randn(b, h, tq if tk is None else tk, dh, generator=g) * scale
    return q, k


def _element(q, k):
    return S.step_bytes(1, q.shape[1], q.shape[2], k.shape[2], q.shape[3])  # one element's working set


# --------------------------------------------------------------------------- numbers


CASES = [((3, 4, 37, 16), 29, 7), ((2, 4, 20, 8), 20, 256), ((4, 16, 100, 72), 100, 256),
         ((2, 16, 300, 72), 300, 128), ((2, 3, 50, 8), 50, None), ((5, 2, 10, 4), 10, 3), ((3, 5, 61, 12), 61, 16)]


@pytest.mark.parametrize("shape,tk,chunk", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_default_is_bit_identical_to_the_old_loop(shape, tk, chunk, dtype):
    q, k = _qk(shape, tk, seed=sum(shape))
    q, k = q.to(dtype), k.to(dtype)
    assert torch.equal(attention_received(q, k, chunk=chunk), old_attention_received(q, k, chunk=chunk))
    # max_bytes=None on the CPU is chunk's working set: passing it explicitly is the same call
    heads, tq, dh = shape[1], shape[2], shape[3]
    rows = tq if chunk is None else min(chunk, tq)
    budget = 4 * heads * (rows * tk + (rows + tk) * dh)  # logits, q and k copies
    assert score_bytes(q.device, heads, tq, tk, dh, chunk) == budget
    assert torch.equal(attention_received(q, k, chunk=chunk, max_bytes=budget),
                       old_attention_received(q, k, chunk=chunk))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_budget_matches_a_float64_reference(dtype):
    q, k = _qk((7, 4, 33, 16), tk=45, seed=1)  # Tq != Tk; 7 elements: uneven groups of 2, 3, 4
    q, k = q.to(dtype), k.to(dtype)
    ref = naive64(q.float(), k.float())
    one = _element(q, k)
    queries = lambda c: S.step_bytes(1, 4, c, 45, 16)  # noqa: E731
    budgets = {"one query": 1, "5 queries": queries(5), "uneven query chunks": queries(10) + 100,
               "1 element": one, "2 elements": 2 * one + 3, "3 elements": 3 * one, "4 elements": 4 * one,
               "all": 7 * one, "more than all": 10**9}
    for name, budget in budgets.items():
        got = attention_received(q, k, max_bytes=budget)
        assert got.dtype == torch.float32 and got.shape == (7, 45), name
        torch.testing.assert_close(got.double(), ref, atol=1e-7, rtol=1e-5, msg=name)
        torch.testing.assert_close(got.sum(-1), torch.ones(7), atol=1e-5, rtol=0)


def test_steps_follow_the_budget():
    # (elements per step, queries per step) for 32 x 16 heads x 729 x 729, dh 72 (a SigLIP layer)
    one = 4 * 16 * (729 * 729 + 2 * 729 * 72)  # logits, q and k of a frame: 40.7 MB
    assert S.step_bytes(1, 16, 729, 729, 72) == one
    default = 4 * 16 * (256 * 729 + (256 + 729) * 72)  # 12 MB of logits, 4.5 MB of copies
    assert S._steps(32, 16, 729, 729, 72, default) == (1, 256)
    assert S._steps(32, 16, 729, 729, 72, default - 1) == (1, 255)
    assert S._steps(32, 16, 729, 729, 72, 64 * 2**20) == (1, 729)
    assert S._steps(32, 16, 729, 729, 72, 256 * 2**20) == (6, 729)
    assert S._steps(32, 16, 729, 729, 72, 32 * one) == (32, 729)
    assert S._steps(32, 16, 729, 729, 72, 10**12) == (32, 729)
    assert S._steps(32, 16, 729, 729, 72, 1) == (1, 1)  # at least one query of every head


def test_device_aware_default():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only the device's type is read: no GPU needed
    assert score_bytes(cpu, 16, 729, 729, 72) == S.step_bytes(1, 16, 256, 729, 72)  # the old loop's chunk
    assert score_bytes(cpu, 16, 729, 729, 72, chunk=None) == S.step_bytes(1, 16, 729, 729, 72)
    assert score_bytes(cuda, 16, 729, 729, 72) == S.DEVICE_SCORE_BYTES == 256 * 2**20
    big = S.step_bytes(1, 16, 4096, 4096, 72)  # chunk's working set where it is larger
    assert score_bytes(cuda, 16, 4096, 4096, 72, chunk=None) == big > S.DEVICE_SCORE_BYTES
    assert score_bytes(cuda, 16, 729, 729, 72, max_bytes=1000) == 1000  # an explicit budget wins everywhere


def test_segments_cpu_default_is_bit_identical_and_budgets_match_float64():
    g = torch.Generator().manual_seed(5)
    # windows as Qwen2.5-VL lays them out (runs of equal windows, narrower at the edge), an empty
    # segment, and a long segment that needs query chunks at chunk=16
    lens = [16, 16, 16, 8, 16, 16, 16, 8, 8, 8, 8, 4, 0, 16, 4, 40]
    cu = torch.tensor([0] + lens).cumsum(0)
    t = int(cu[-1]) + 3  # 3 trailing tokens in no segment
    q = (torch.randn(t, 4, 8, generator=g) * 2).transpose(0, 1)  # (heads, T, dh), strided as the hook gives it
    k = (torch.randn(t, 4, 8, generator=g) * 2).transpose(0, 1)
    for chunk in (256, 16, 5, None):
        assert torch.equal(segment_received(q, k, cu, chunk=chunk), old_segment_received(q, k, cu, chunk=chunk))
    ref = naive64_segments(q, k, cu)
    assert ref[-3:].abs().sum() == 0
    window = S.step_bytes(1, 4, 16, 16, 8) + 2 * 4 * 16 * 8 * 4  # a window of 16 and its gathered q, k
    for budget in (1, window, 3 * window, 5 * window + 1, 10**9):
        for dtype in (torch.float32, torch.bfloat16):
            got = segment_received(q.to(dtype), k.to(dtype), cu, chunk=16, max_bytes=budget)
            want = ref if dtype == torch.float32 else naive64_segments(q.to(dtype).float(), k.to(dtype).float(), cu)
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5, msg=f"{budget} {dtype}")
            assert got[-3:].abs().sum() == 0


# --------------------------------------------------------------------------- launches


def test_operator_count_falls_as_the_budget_grows():
    # 32 frames x 2 heads x 40 queries at chunk 16: 96 query chunks, as a 32-frame SigLIP layer at 256
    q, k = _qk((32, 2, 40, 8), seed=2)
    old = launches.count(lambda: old_attention_received(q, k, chunk=16))
    one = _element(q, k)
    counts = [launches.count(lambda b=b: attention_received(q, k, chunk=16, max_bytes=b))
              for b in (None, one, 4 * one, 32 * one)]
    ops = [c["ops"] for c in counts]
    assert old["reads"] == 0 and all(c["reads"] == 0 for c in counts)
    assert ops[0] <= 0.6 * old["ops"], (ops, old["ops"])  # the CPU default: fewer operators per chunk
    assert ops == sorted(ops, reverse=True) and len(set(ops)) == 4, ops
    assert ops[-1] <= old["ops"] / 10, (ops, old["ops"])  # a budget covering all: one step
    assert ops[-1] <= 30, ops


def test_the_device_default_steps_a_siglip_layer_in_few_launches():
    # meta tensors: no memory, no arithmetic, and not the CPU, so the device default (256 MiB) applies
    q = torch.empty(32, 16, 729, 72, device="meta")
    new = launches.count(lambda: attention_received(q, q))
    small = torch.empty(2, 16, 729, 72, device="meta")
    per_element = launches.count(lambda: old_attention_received(small, small))["ops"] / 2
    assert new["ops"] <= 32 * per_element / 10, (new, per_element)


def test_segments_with_one_budget_cost_few_operators():
    lens = [16, 16, 16, 8] * 12 + [8, 8, 8, 4] * 3  # 60 windows of 3 lengths
    cu = torch.tensor([0] + lens).cumsum(0)
    t = int(cu[-1])
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(4, t, 8, generator=g), torch.randn(4, t, 8, generator=g)
    old = launches.count(lambda: old_segment_received(q, k, cu))
    default = launches.count(lambda: segment_received(q, k, cu))
    big = launches.count(lambda: segment_received(q, k, cu, max_bytes=10**9))
    assert old["reads"] == default["reads"] == big["reads"] == 1  # cu_seqlens, once
    assert default["ops"] < old["ops"] and big["ops"] <= old["ops"] / 10, (old["ops"], default["ops"], big["ops"])


# --------------------------------------------------------------------------- plumbing and errors


def test_record_scores_takes_the_budget():
    lin = torch.nn.Linear(8, 8)

    def qk(module, hidden):
        x = torch.nn.functional.linear(hidden, module.weight, module.bias)  # not module(): that would re-enter the hook
        x = x.view(hidden.shape[0], hidden.shape[1], 2, 4).transpose(1, 2)  # (B, 2, T, 4)
        return x, x.flip(2)

    hidden = torch.randn(3, 11, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), record_scores({"l": lin}, qk, chunk=4, max_bytes=10**6) as rec:
        lin(hidden)
    q, k = qk(lin, hidden)
    torch.testing.assert_close(rec["l"][0].double(), naive64(q.detach(), k.detach()), atol=1e-7, rtol=1e-5)
    with pytest.raises(ValueError, match="max_bytes"):
        with record_scores({"l": lin}, qk, max_bytes=0):
            pass


def test_bad_budgets_are_named():
    q = torch.randn(1, 2, 5, 4)
    for bad, err in ((0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError), ("1MB", TypeError)):
        with pytest.raises(err, match="max_bytes"):
            attention_received(q, q, max_bytes=bad)
        with pytest.raises(err, match="max_bytes"):
            segment_received(q[0], q[0], torch.tensor([0, 5]), max_bytes=bad)


def test_qwen_hooks_take_the_budget():
    """A tiny Qwen2.5-VL tower: its window block's hook with a budget that batches its windows gives the
    default hook's scores; aot.patch(..., score_bytes=) reaches the hooks' state and is checked."""
    pytest.importorskip("transformers")
    pytest.importorskip("torchvision")
    import hf_tiny_qwen as hq

    import aot
    from aot.models import qwen2_5_vl as adapter

    model, proc = hq.model(), hq.processor()
    video = hq.frames(6, seed=1, height=48, width=40)  # windows of 16 and 8 patches
    inp = proc(text=["<|vision_start|><|video_pad|><|vision_end|> hi"], videos=[video], return_tensors="pt")
    tower = model.model.visual
    cus = []
    seen = tower.blocks[0].attn.register_forward_pre_hook(lambda m, a, kw: cus.append(kw["cu_seqlens"]),
                                                          with_kwargs=True)
    recs = {None: [], 10**9: []}
    handles = [tower.blocks[0].attn.register_forward_pre_hook(adapter.score_hook(rec, 7, {}, None, budget),
                                                              with_kwargs=True) for budget, rec in recs.items()]
    with torch.no_grad():
        model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"])
    for h in handles + [seen]:
        h.remove()
    lengths = (cus[0][1:] - cus[0][:-1]).tolist()
    assert len(lengths) > len(set(lengths)) > 1, lengths  # several windows share a length: batched
    torch.testing.assert_close(recs[10**9][0], recs[None][0], atol=1e-6, rtol=1e-5)
    aot.patch(model, aot.AOTConfig(retention=0.5), score_bytes=2**20)
    assert model._aot.score_bytes == 2**20
    aot.unpatch(model)
    with pytest.raises(ValueError, match="score_bytes"):
        aot.patch(model, aot.AOTConfig(retention=0.5), score_bytes=0)
    assert getattr(model, "_aot", None) is None
