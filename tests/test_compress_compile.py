"""torch.compile (default CPU inductor backend) of aot.compress: one graph, same outputs (issue 17 item 3).

With tol=None (a fixed iteration count) and validate=False (no value-check read) the fixed-budget
call has no host read left, so dynamo captures it whole (fullgraph=True); that is also what makes
it capturable as a CUDA graph (not testable here: no GPU). Inductor fuses elementwise chains and
reassociates float32 arithmetic, so tokens and mix weights agree to rounding (1e-5), not bit for
bit; every discrete output (sizes, frames, positions, assignment, dynamic, mix rows/cols) is equal.
Kept small (3 frames in one clip, 2 iterations): compile time grows with the unrolled operator count
(about 1 min user time at 4 frames x 4 iterations, 3.5 min wall at 8 frames x 20 iterations here).
"""

import torch

import aot


def test_fullgraph_compile_equals_eager():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 8, generator=g)
    s = torch.rand(2, 3, 16, generator=g)
    cfg = aot.AOTConfig(retention=0.25, n_iters=2, tol=None, clip_length=3)
    torch._dynamo.reset()
    fn = torch.compile(lambda x, s: aot.compress(x, s, config=cfg, validate=False), fullgraph=True)
    out = fn(x, s)
    ref = aot.compress(x, s, config=cfg)
    torch.testing.assert_close(out.tokens, ref.tokens, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(aot.Compressed._fields[1:6], out[1:6], ref[1:6]):
        assert torch.equal(a, b), name
    assert torch.equal(out.mix.rows, ref.mix.rows) and torch.equal(out.mix.cols, ref.mix.cols)
    torch.testing.assert_close(out.mix.weights, ref.mix.weights, rtol=1e-5, atol=1e-6)
