"""Up-front checks shared by the runners (``aot run``, ``aot eval``, ``aot demo``, the lmms-eval
models): each reads at most a header or a config file and raises one ValueError whose message names
the wrong value and what is allowed, before any model or video is loaded.

The CLI turns these errors into one line and exit code 2 (``aot.cli.main``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["check_device", "check_threads_arg", "check_dtype", "check_model_path", "is_path_like",
           "check_input_file", "check_video", "check_out_folder", "tower_depth", "check_layer_range",
           "standin_grid", "DTYPES", "SPECIAL_FILE_ROOTS"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
SPECIAL_FILE_ROOTS = ("/proc", "/sys", "/dev")  # pseudo files: never a place for data


def check_device(raw, flag: str = "--device") -> str:
    """``raw`` (None: cuda when available, else cpu) as a device string torch can use here.

    Refuses a string torch does not parse (``tpu9``), a device type aot does not run on, and a
    CUDA / MPS device this machine does not have, naming what is available.
    """
    import torch

    if raw is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    allowed = "cpu, cuda, cuda:N (N < the GPU count) or mps"
    try:
        dev = torch.device(str(raw))
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {str(raw)!r} is not a device; use {allowed}") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"{flag} {str(raw)!r}: no CUDA GPU is available here (torch {torch.__version__}, "
                             f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{flag} {str(raw)!r}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}")
        return str(dev)
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{flag} {str(raw)!r}: MPS is not available here; use {allowed}")
        return "mps"
    raise ValueError(f"{flag} {str(raw)!r}: aot runs on {allowed}, not on {dev.type!r}")


def check_threads_arg(value, flag: str = "--threads") -> int | None:
    """None (leave torch's setting) or an int >= 1; anything else (0, -1, 'abc') is refused."""
    if value is None:
        return None
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else 0
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{flag} must be an int >= 1, got {value!r}")
    return n


def check_dtype(value, flag: str = "dtype") -> str:
    """One of :data:`DTYPES`."""
    if str(value) not in DTYPES:
        raise ValueError(f"{flag} must be one of {', '.join(DTYPES)}, got {value!r}")
    return str(value)


def is_path_like(value: str) -> bool:
    """Whether a ``--model`` value can only be a local path, not a hub id ``name`` or ``org/name``:
    absolute, starting with ``.`` or ``~``, ending with a separator, a backslash, or more than one ``/``."""
    s = str(value)
    return (os.path.isabs(s) or s.startswith((".", "~")) or s.endswith(("/", os.sep)) or "\\" in s
            or s.count("/") > 1)


def check_model_path(model_id, standin: str | None = None, flag: str = "--model") -> None:
    """A path-like ``model_id`` that does not exist (or is not a folder) is refused at once, instead of
    being tried as a hub id (tens of seconds of HTTP retries)."""
    s = str(model_id)
    if not s.strip():
        raise ValueError(f"{flag} is empty; give a hub id (org/name), a local checkpoint folder"
                         + (f" or {standin}" if standin else ""))
    if s == standin:
        return
    if standin and s.startswith(standin.split(":")[0] + ":"):
        raise ValueError(f"{flag} {s!r}: the only aot: model is the stand-in {standin}")
    path = Path(s).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {s!r} is a file; give the checkpoint's folder (with config.json)")
        if not (path / "config.json").is_file():
            raise ValueError(f"cannot load {flag} {s!r}: the folder has no config.json; save the checkpoint there with "
                             f"model.save_pretrained(folder) and processor.save_pretrained(folder)")
        return
    if is_path_like(s):
        raise ValueError(f"{flag} {s!r}: no such folder (a local path; a hub id looks like org/name)")


def check_input_file(path, flag: str) -> Path:
    """An existing regular file to read: a folder or a FIFO is named as such, not "no such file"."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag} {str(path)!r}: no such file")
    if p.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; give a file")
    if not p.is_file():
        raise ValueError(f"{flag} {str(path)!r} is not a regular file ({_kind(p)})")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{flag} {str(path)!r} is not readable (permission denied)")
    return p


def _kind(p: Path) -> str:
    mode = p.stat().st_mode
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def check_video(path, frames: int, flag: str = "--video"):
    """The video's header (``aot.video.probe_video``) and the memory its sampled frames would take
    (``aot.video.check_frame_memory``): a text file named .mp4, a one-frame file or too many large
    frames are refused before any decoding. Returns the ``VideoInfo``."""
    from .video import check_frame_memory, probe_video

    if Path(path).exists():  # a folder or a FIFO named as such; a missing file: probe_video's message
        check_input_file(path, flag)
    info = probe_video(path)
    check_frame_memory(info, frames, path)
    return info


def check_out_folder(raw, flag: str = "--out") -> Path:
    """A folder to write into: created if missing (its parent must exist), refused when it is a file
    or cannot be written."""
    import tempfile

    p = Path(raw)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {str(raw)!r} is a file; give a folder (created if missing)")
    if not p.exists():
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{flag} {str(raw)!r}: cannot create the folder ({err.strerror or err})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".aot-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {str(raw)!r} is not writable ({err.strerror or err})") from None
    return p


def standin_grid(video_layout: str = "onevision") -> tuple[int, int]:
    """The LLM token grid of one frame of the stand-in (``aot.models.assembled``): 378 px, 14 px patches."""
    from types import SimpleNamespace

    from .models.assembled import IMAGE_SIZE
    from .models.llava_onevision import config_grid

    return config_grid(SimpleNamespace(image_size=IMAGE_SIZE, patch_size=14), video_layout)


STANDIN_DEPTH = 12  # DINOv2 ViT-S/14, the stand-in's tower


def tower_depth(model_id: str, standin: str | None = None) -> int | None:
    """Layers (blocks) of the vision tower from the checkpoint's config alone, no weights read; None
    when the config cannot be read without the network (a hub id not in the local cache)."""
    if model_id == standin:
        return STANDIN_DEPTH
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - no config at hand: the loader's own check applies later
        return None
    vc = getattr(cfg, "vision_config", None)
    for name in ("depth", "num_hidden_layers"):
        n = getattr(vc, name, None) if vc is not None else None
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_layer_range(layers, depth: int | None, flag: str = "--layers") -> None:
    """Both score layers inside a tower of ``depth`` layers (negative indices count from the last)."""
    if layers is None or depth is None:
        return
    bad = [v for v in layers if not -depth <= int(v) < depth]
    if bad:
        raise ValueError(f"{flag} {','.join(map(str, layers))}: vision layer {bad[0]} is out of range: the tower "
                         f"has {depth} layers, so use an index in [-{depth}, {depth - 1}]")


def run_preflight(args, standin: str) -> str:
    """``aot run``'s checks that need no weights, for every model, the stand-in included: threads,
    device, ``--model`` path, ``--set`` (retention belongs to ``--retention``), the video's header
    and frame memory, ``--layers`` against the tower's depth (from the config) and, where the LLM
    grid is known without weights (the stand-in), the method's budget. Returns the device."""
    from .eval.engine import method_config, parse_overrides

    check_threads_arg(args.threads)
    device = check_device(args.device)
    check_model_path(args.model, standin)
    overrides = parse_overrides(args.overrides)
    if "retention" in overrides:
        raise ValueError(f"--set retention={overrides['retention']}: set the retention with --retention "
                         f"(as aot eval does)")
    _, config = method_config(args.method, args.retention, overrides)
    check_video(args.video, args.frames)
    from .run import _layers

    layers = _layers(args.layers)
    check_layer_range(layers, tower_depth(args.model, standin))
    if args.model == standin:
        from .run import LLAVA, check_budget, family_options

        family_options(LLAVA, video_layout=args.video_layout, positions=args.positions, layers=layers)
        h, w = standin_grid(args.video_layout)
        check_budget(args.method, config, args.video, args.frames, h * w)
    return device


def plugin_preflight(name: str, *, pretrained, frames, max_frames_num, threads, dtype, device, local_layer,
                     global_layer, standin: str) -> None:
    """The lmms-eval models' arguments, checked before accelerate, the config or the weights: every
    mistake one ValueError naming the model arg and what is allowed (``frames=abc``, ``threads=0``,
    ``dtype=bogus``, ``device=tpu9``, a path-like ``pretrained`` that does not exist, a layer beyond
    the tower's depth read from the checkpoint's config)."""
    raw = max_frames_num if max_frames_num is not None else frames
    what = "max_frames_num" if max_frames_num is not None else "frames"
    try:
        n = int(str(raw).strip()) if not isinstance(raw, bool) else 0
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}: {what} must be an int >= 1, got {raw!r}")
    check_threads_arg(threads, f"{name}: threads")
    check_dtype(dtype, f"{name}: dtype")
    check_device(device, f"{name}: device")
    check_model_path(pretrained, standin, f"{name}: pretrained")
    plugin_layers(name, pretrained=pretrained, local_layer=local_layer, global_layer=global_layer, standin=standin,
                  check_range=False)


def plugin_layers(name: str, *, pretrained, local_layer, global_layer, standin: str, check_range: bool = True) -> None:
    """``local_layer`` / ``global_layer`` ints and, with ``check_range``, inside the tower's depth read
    from the checkpoint's config (called after the family check, so a checkpoint of the other family
    is named as such first)."""
    layers = []
    for key, value in (("local_layer", local_layer), ("global_layer", global_layer)):
        if value is None:
            continue
        try:
            layers.append(int(str(value).strip()))
        except ValueError:
            raise ValueError(f"{name}: {key} must be an int (a vision layer index), got {value!r}") from None
    if len(layers) == 2 and check_range:
        check_layer_range(layers, tower_depth(str(pretrained), standin), f"{name}: local_layer, global_layer")
