"""Run directories of ``refine``: usable before any work, resumable, never wiped silently.

A run directory holds config.json, whose ``config.settings`` is the fingerprint of everything that
decides the refinement (observed image and mask by content hash, the model configuration, the
refined names, the options). Rerunning with the same settings resumes from checkpoint.pt; other
settings are an InputError naming the differing keys; ``overwrite`` starts over. A directory that
is not a run directory (files, but no config.json) is refused unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from equipoise.errors import InputError

__all__ = ["check_output_dir", "check_output_file", "fingerprint", "prepare_run_dir", "note_interrupt"]

#: files the refinement writes (removed by ``overwrite``)
RUN_FILES = ("config.json", "record.jsonl", "summary.json", "run.log", "checkpoint.pt", "search.json",
             "refined.bin", "refined.npy")


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a directory that exists or can be created and written; InputError otherwise.

    Refuses an existing file, a path under a file, and a directory without write permission, naming
    the offending path; creates nothing.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError("is an existing file; expected a directory (new or a previous run's)", path=p, field=what)
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create a directory here: {parent} is a file", path=p, field=what)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"no write permission in {parent}", path=p, field=what)
    return p


def check_output_file(path: str | Path, what: str) -> Path:
    """``path`` as a file that can be written (its directory exists and is writable, it is not a
    directory); InputError naming the flag ``what`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise InputError("is a directory; expected a file name", path=p, field=what)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"directory {folder} does not exist", path=p, field=what)
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"not writable (no write permission in {folder})", path=p, field=what)
    return p


def _plain(value: Any) -> Any:
    """JSON-ready stand-in of ``value``: arrays by shape and content hash, dataclasses as dicts."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"shape": list(data.shape), "dtype": str(data.dtype), "sha1": hashlib.sha1(data.tobytes()).hexdigest()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def fingerprint(**settings: Any) -> dict:
    """JSON-ready settings (arrays replaced by their hash), as stored in config.json."""
    return json.loads(json.dumps(_plain(settings)))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [prefix]


def prepare_run_dir(path: str | Path, settings: dict, overwrite: bool) -> bool:
    """Make ``path`` ready for a run with ``settings``; True when a checkpoint will be resumed.

    New or empty directory: a fresh run. A previous run with the same settings: resume (True if it
    has a checkpoint). Other settings: InputError listing the differing keys, unless ``overwrite``
    (its run files are removed). Files but no config.json: InputError unless ``overwrite``.
    """
    p = check_output_dir(path)
    if not p.exists():
        return False
    config = p / "config.json"
    entries = [e for e in p.iterdir()]
    if overwrite:
        for name in RUN_FILES:
            (p / name).unlink(missing_ok=True)
        return False
    if not entries:
        return False
    if not config.is_file():
        raise InputError(f"directory is not empty ({len(entries)} entries) and holds no equipoise run "
                         "(no config.json); choose a new --out or pass --overwrite", path=p, field="--out")
    try:
        stored = json.loads(config.read_text()).get("config", {}).get("settings")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise InputError(f"unreadable config.json ({exc}); pass --overwrite to start over", path=config) from exc
    if stored != settings:
        keys = _differences(stored or {}, settings)
        raise InputError(f"this run directory holds a run with other settings ({', '.join(keys[:8])}"
                         f"{' ...' if len(keys) > 8 else ''}); rerun with the same settings to resume, "
                         "or pass --overwrite to start over, or choose another --out", path=p, field="--out")
    return (p / "checkpoint.pt").is_file()


def note_interrupt(path: str | Path, step: int | None) -> str:
    """Append the Ctrl-C line to ``path``/run.log and return it."""
    where = "no checkpoint yet" if step is None else f"checkpoint at step {step} in checkpoint.pt"
    line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} interrupted (Ctrl-C); {where}; "
            "rerun the same command with the same --out to resume")
    with open(Path(path) / "run.log", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return line
