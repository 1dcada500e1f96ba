"""The AOT core as it was before issue 17 (commit 76f3d27): a per-video, per-clip Python loop with a
host read per Sinkhorn check. Kept only as the test oracle of the vectorised core (tests/test_core_oracle.py)
and as the 'before' column of benchmarks/launches.py. Not part of the library; do not import it from aot/.

One change against 76f3d27, made in aot/ too: with cosine merging, a token that gives no anchor any
weight is dropped (owner -1) instead of being attributed to anchor 0 with zero weight (aot-cosine's
assignment and sizes now agree with its mix). It also returns no mix."""

from .compress import compress  # noqa: F401
