"""Run-time helpers for the CLI, the benchmarks and the model adapters: threads, output paths, errors.

Nothing here changes a caller's global state for longer than a ``with`` block.

Threads (measured, README "Threads"): torch's CPU kernels run on an OpenMP pool (libgomp in the
PyPI wheels). Every small op of the Sinkhorn loop is one parallel region that ends at a barrier.
When another process competes for the cores, one of our threads is often descheduled, and the
other waits for it at each barrier, spinning first: a compress call of 32x196x384 that takes
~50 ms went to medians of 0.08-1.5 s (single calls up to 12 s) at 2 threads beside one busy
process on a 2-core machine, and stayed at 48-126 ms at 1 thread. ``OMP_WAIT_POLICY=PASSIVE``
(set before torch is imported) softens it (79-236 ms) but one thread is no slower under load.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["torch_threads", "default_threads", "physical_cores", "check_output_path", "error_message",
           "MAX_DEFAULT_THREADS"]

MAX_DEFAULT_THREADS = 4  # beyond this the Sinkhorn loop's small ops gain little and barriers cost more


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with torch's intra-op thread count set to ``n``, then restore the caller's.

    ``n=None`` leaves the setting alone. Restored even when the block raises.
    """
    import torch

    if n is None:
        yield torch.get_num_threads()
        return
    n = check_threads(n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def check_threads(n, flag: str = "threads") -> int:
    """``n`` as an int >= 1, or a ValueError naming the flag."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{flag} must be an int >= 1, got {n!r}")
    return n


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once).

    Reads Linux's CPU topology; elsewhere falls back to the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count the logical CPU
    return max(1, len(cores))


def default_threads(*, cores: int | None = None, load: float | None = None) -> int:
    """The thread count the CLI and the benchmarks use unless told otherwise.

    ``min(cores, 4)`` on an idle machine, fewer as the 1-minute load average rises:
    ``max(1, min(4, cores, round(cores - load)))``. On a 2-core machine that is 2 threads only
    while the load is below 0.5 and 1 otherwise, because at 2 threads beside any busy process
    torch's OpenMP barriers stall (module docstring). ``cores``/``load`` default to
    :func:`physical_cores` and ``os.getloadavg()[0]`` (0 where the OS has no load average).
    """
    cores = physical_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(MAX_DEFAULT_THREADS, cores, int(cores - load + 0.5)))


def check_output_path(path, flag: str) -> Path:
    """Fail before any work if ``path`` cannot be written; returns it as a Path.

    Checks that the folder exists and that a file can be created there (or, if ``path`` exists,
    that it is a file open for writing). Nothing is written: an existing file is opened for append
    and closed, a probe file in the folder is removed at once. Raises ValueError naming ``flag``.
    """
    p = Path(path)
    shown = f"{flag} {str(p)!r}"
    if str(path) == "" or p.is_dir():
        raise ValueError(f"{shown} is a folder, not a file name; give a file path such as {str(p / 'out')!r}")
    parent = p.parent
    if not parent.exists():
        raise ValueError(f"{shown}: the folder {str(parent)!r} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise ValueError(f"{shown}: {str(parent)!r} is not a folder")
    if p.exists() and not p.is_file():  # a FIFO would block the open below until a reader comes
        raise ValueError(f"{shown} is not a regular file (a FIFO, socket or device); give a file path")
    try:
        if p.exists():
            with open(p, "ab"):
                pass
        else:
            fd, probe = tempfile.mkstemp(dir=parent, prefix=".aot-write-check-")
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{shown} is not writable ({err.strerror or err}); choose a path you can write to") from None
    return p


def error_message(err: BaseException) -> str:
    """A one-line message for a user's mistake: no traceback, no raw errno numbers."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {str(err.filename)!r}" if err.filename else err.strerror
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)
