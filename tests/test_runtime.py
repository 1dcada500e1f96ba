"""aot.runtime: thread scoping, the default thread count, output-path checks, error messages (issue 7)."""

from __future__ import annotations

import errno

import pytest
import torch

from aot.runtime import check_output_path, default_threads, error_message, physical_cores, torch_threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_torch_threads_sets_for_the_block_and_restores(two_threads):
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(1):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 2  # restored after an error too
    with torch_threads(None) as n:
        assert n == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            with torch_threads(bad):
                pass


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.1, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 5.0, 1), (1, 0.0, 1),
    (16, 0.0, 4), (16, 13.0, 3), (16, 40.0, 1), (8, 2.0, 4),
])
def test_default_threads_rule(cores, load, expected):
    assert default_threads(cores=cores, load=load) == expected


def test_default_threads_on_this_machine():
    n = default_threads()
    assert 1 <= n <= min(4, physical_cores())


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "new.json", "--json") == tmp_path / "new.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the probe file is gone, nothing created
    existing = tmp_path / "old.json"
    existing.write_text("keep me")
    check_output_path(existing, "--json")
    assert existing.read_text() == "keep me"  # not truncated
    with pytest.raises(ValueError, match=r"--json '.*missing/r.json': the folder '.*missing' does not exist"):
        check_output_path(tmp_path / "missing" / "r.json", "--json")
    with pytest.raises(ValueError, match="--png .* is a folder, not a file name"):
        check_output_path(tmp_path, "--png")
    with pytest.raises(ValueError, match="is not a folder"):
        check_output_path(existing / "r.json", "--json")
    with pytest.raises(ValueError, match="--json '/proc/r.json' is not writable"):
        check_output_path("/proc/r.json", "--json")  # not writable even for root


def test_error_message_has_no_raw_errno():
    err = OSError(errno.EACCES, "Permission denied", "/x/y.json")
    assert error_message(err) == "Permission denied: '/x/y.json'"
    assert error_message(OSError(1094995529, "Invalid data found when processing input")) == \
        "Invalid data found when processing input"
    assert error_message(FileNotFoundError("video file not found: 'a.mp4'")) == "video file not found: 'a.mp4'"
    assert error_message(ValueError("bad")) == "bad"
