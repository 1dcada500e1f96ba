"""Sinkhorn early stops deferred to one host read per compress call (aot.stops, issue 17; opt-in).

The independent answer is the per-check loop (``aot.stops.deferred(False)``: a host read per check,
the behaviour before this change, itself checked against tests/aot_reference and POT elsewhere):
every output must be equal bit for bit, whatever the learned caps are (right, too large, too short),
for one video and for a batch whose videos stop at different checks. Reads are counted with torch's
profiler (benchmarks/launches.py), so they can be asserted.
"""

import collections
import importlib.util
import os
from pathlib import Path

import pytest
import torch

import aot
import aot.stops as stops

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "launches.py"
_spec = importlib.util.spec_from_file_location("launches", _PATH)
launches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launches)

FIELDS = ("tokens", "sizes", "frames", "positions", "assignment", "dynamic")


@pytest.fixture(autouse=True)
def _deferred():
    """Deferral is opt-in (aot.stops docstring): every test here turns it on, and says when it is off."""
    with stops.deferred(True):
        yield


def test_off_by_default_reads_per_check(monkeypatch):
    x, s = _video((13, 36, 16))
    cfg = aot.AOTConfig(retention=0.15, tol=1e-4)
    needs = _checks_needed(x, s, cfg)
    stops.clear()
    token = stops._ENABLED.set(False)  # the default without AOT_DEFERRED_STOPS
    try:
        for _ in range(2):
            assert launches.count(lambda: aot.compress(x, s, config=cfg))["reads"] == 1 + sum(needs)
        assert not stops._CAPS
    finally:
        stops._ENABLED.reset(token)


def _video(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    # a little structure (tokens resemble their neighbours in time) so merges are not all alike
    x = x + 0.8 * x.roll(1, -3)
    return x, torch.rand(*shape[:-1], generator=g)


def _same(a, b):
    for k in FIELDS:
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    for p, q in zip(a.mix, b.mix):
        assert torch.equal(p, q)


def _checks_needed(x, s, cfg):
    """The per-check loop's stop check of each solve (a recording call)."""
    stops.clear()
    aot.compress(x, s, config=cfg)
    return _caps()


def _caps():
    (key,) = stops._CAPS
    return stops.caps(key)


def _set_caps(caps):
    (key,) = stops._CAPS
    stops._CAPS[key] = collections.deque([caps], maxlen=stops.WINDOW)


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-4])
def test_deferred_equals_the_per_check_loop_and_reads_once(tol):
    cfg = aot.AOTConfig(retention=0.15, tol=tol)
    x, s = _video((13, 36, 16))
    with stops.deferred(False):
        ref = aot.compress(x, s, config=cfg)
        eager = launches.count(lambda: aot.compress(x, s, config=cfg))
    first = launches.count(lambda: aot.compress(x, s, config=cfg))  # records the caps
    again = launches.count(lambda: aot.compress(x, s, config=cfg))
    _same(aot.compress(x, s, config=cfg), ref)
    needs = _caps()
    assert len(needs) >= 3  # the intra solve and the merge steps
    assert first["reads"] == eager["reads"] == 1 + sum(needs), (first, eager, needs)
    assert again["reads"] == 2, again  # the value check and the one read of every solve's flags
    if tol == 1e-4:
        assert max(needs) >= 2  # solves that stop after several checks are covered


def test_caps_larger_than_needed_give_the_same_result():
    cfg = aot.AOTConfig(retention=0.15, tol=1e-3)
    x, s = _video((13, 36, 16), seed=1)
    with stops.deferred(False):
        ref = aot.compress(x, s, config=cfg)
    needs = _checks_needed(x, s, cfg)
    _set_caps([n + 3 for n in needs])  # frozen at the needed check, three checks of spare iterations
    c = launches.count(lambda: aot.compress(x, s, config=cfg))
    assert c["reads"] == 2
    (key,) = stops._CAPS
    assert list(stops._CAPS[key])[-1] == needs  # what the call needed is learned, not what it ran
    _same(aot.compress(x, s, config=cfg), ref)


def test_short_caps_fall_back_to_the_per_check_loop_and_learn():
    cfg = aot.AOTConfig(retention=0.15, tol=1e-4)
    x, s = _video((13, 36, 16), seed=2)
    with stops.deferred(False):
        ref = aot.compress(x, s, config=cfg)
    needs = _checks_needed(x, s, cfg)
    assert max(needs) >= 2
    _set_caps([1] * len(needs))  # too short for the solves that need more checks
    c = launches.count(lambda: aot.compress(x, s, config=cfg))
    # value check + the deferred call's one read, then the value check is not repeated: the per-check call
    assert c["reads"] == 2 + sum(needs), (c, needs)
    assert _caps() == needs
    _set_caps([1] * len(needs))
    _same(aot.compress(x, s, config=cfg), ref)


def test_caps_are_the_most_each_solve_needed_in_a_window_of_calls():
    """Two videos of one shape that need more checks at different solves: after one miss each, both
    hit (each solve's cap is the most it needed recently); after WINDOW calls of one video alone the
    caps are that video's again."""
    cfg = aot.AOTConfig(retention=0.15, tol=1e-3)
    (xa, sa), (xb, sb) = _video((13, 36, 16), seed=1), _video((13, 36, 16), seed=2)
    nb = _checks_needed(xb, sb, cfg)
    na = _checks_needed(xa, sa, cfg)  # the caps are now A's
    assert any(p > q for p, q in zip(na, nb)) and any(p < q for p, q in zip(na, nb)), (na, nb)
    reads = launches.count(lambda: aot.compress(xb, sb, config=cfg))["reads"]  # caps of A only: a miss
    assert reads == 2 + sum(nb)
    assert _caps() == [max(p, q) for p, q in zip(na, nb)]
    for x, s in [(xa, sa), (xb, sb)] * 2:
        assert launches.count(lambda: aot.compress(x, s, config=cfg))["reads"] == 2
    for _ in range(stops.WINDOW):
        aot.compress(xa, sa, config=cfg)
    assert _caps() == na


def test_batch_whose_videos_stop_at_different_checks():
    """Each video is its own stop group: frozen at its own check, equal to its own call."""
    cfg = aot.AOTConfig(retention=0.15, tol=1e-3)
    parts = [_video((13, 36, 16), seed=k) for k in range(3)]
    needs = [_checks_needed(x, s, cfg) for x, s in parts]
    assert len({tuple(n) for n in needs}) > 1, needs  # the videos do stop at different checks
    xb, sb = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    stops.clear()
    with stops.deferred(False):
        ref = aot.compress(xb, sb, config=cfg)
    aot.compress(xb, sb, config=cfg)  # records
    assert _caps() == [max(col) for col in zip(*needs)]  # the batch stops with its slowest video
    c = launches.count(lambda: aot.compress(xb, sb, config=cfg))
    assert c["reads"] == 2
    out = aot.compress(xb, sb, config=cfg)
    _same(out, ref)
    for i, (x, s) in enumerate(parts):
        alone = aot.compress(x, s, config=cfg)
        for k in FIELDS:
            assert torch.equal(getattr(out, k)[i], getattr(alone, k)), (i, k)


def test_real_tokens_32_frames_today_defaults():
    """The shape of benchmarks/launches.py at the defaults: one read for the whole chain of solves."""
    x, s = _video((32, 49, 24), seed=3)
    with stops.deferred(False):
        ref = aot.compress(x, s)
    aot.compress(x, s)
    c = launches.count(lambda: aot.compress(x, s))
    assert c["reads"] == 2
    _same(aot.compress(x, s), ref)


def test_not_deferred_without_tol_under_grad_or_when_disabled():
    x, s = _video((8, 36, 16))
    fixed = aot.AOTConfig(retention=0.15, tol=None)
    aot.compress(x, s, config=fixed)
    assert not stops._CAPS  # nothing to defer
    cfg = aot.AOTConfig(retention=0.15, tol=1e-3)
    xg = x.clone().requires_grad_(True)
    aot.compress(xg, s, config=cfg)
    assert not stops._CAPS  # a recorded gradient runs the per-check loop
    with stops.deferred(False):
        aot.compress(x, s, config=cfg)
        aot.compress(x, s, config=cfg)
    assert not stops._CAPS


def test_only_the_plain_route_defers():
    """Below the plain route's reg the renormalised route keeps its read per check: the call still
    equals the per-check loop and no cap is learned for it."""
    cfg = aot.AOTConfig(retention=0.15, tol=1e-3, reg=0.05)
    x, s = _video((8, 36, 16))
    with stops.deferred(False):
        ref = aot.compress(x, s, config=cfg)
    aot.compress(x, s, config=cfg)
    out = aot.compress(x, s, config=cfg)
    _same(out, ref)
    assert _caps() == []


def test_threads_share_the_learned_caps_safely():
    """Serving compresses from several threads: each enters deferred(True) itself (a context variable
    does not cross threads), the caps table is shared under a lock, every result equals the per-check loop."""
    import threading

    cfg = aot.AOTConfig(retention=0.15, tol=1e-3)
    inputs = [_video((13, 36, 16), seed=k) for k in range(4)] + [_video((8, 36, 16), seed=9)]
    with stops.deferred(False):
        refs = [aot.compress(x, s, config=cfg) for x, s in inputs]
    results, errors = {}, []

    def work(i):
        try:
            with stops.deferred(True):
                for _ in range(3):
                    results[i] = aot.compress(*inputs[i], config=cfg)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, ref in enumerate(refs):
        _same(results[i], ref)
    assert len(stops._CAPS) == 2  # two shapes


def test_new_threads_start_from_the_process_default():
    import threading

    seen = []
    t = threading.Thread(target=lambda: seen.append(stops._ENABLED.get()))
    t.start()
    t.join()
    assert len(seen) == 1
    assert stops._ENABLED.get() is True  # this test's fixture
    assert seen[0] is (os.environ.get("AOT_DEFERRED_STOPS", "0") not in ("", "0", "false", "False"))
