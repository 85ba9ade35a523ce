"""The run directory: config.json, record.jsonl, summary.json, checkpoint.pt and run.log.

JSON files and checkpoints are written atomically (temporary file in the same folder, then
``os.replace``), so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from equipoise.errors import InputError

__all__ = ["RunDir", "read_record"]


def _clean(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by the strings "nan", "inf", "-inf" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON (non-finite floats as strings), on one line."""
    text = json.dumps(value)
    if "NaN" in text or "Infinity" in text:
        text = json.dumps(_clean(value))
    return text


@contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then act on it as the previous handler would.
    A KeyboardInterrupt raised inside torch.save's C++ writer (its Python write callback) leaves
    the writer to finish into a closed file and aborts the process ('write to closed file'); held,
    the interrupt arrives after a complete file. No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and previous is not signal.SIG_IGN:
        if callable(previous):
            previous(signal.SIGINT, None)
        else:
            raise KeyboardInterrupt


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then move it onto ``path``
    (Ctrl-C is held until the file is in place: :func:`_interrupt_after`)."""
    with _interrupt_after():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


class RunDir:
    """Files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = self.path / "config.json"
        self.record = self.path / "record.jsonl"
        self.summary = self.path / "summary.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.log = self.path / "run.log"
        self._handle = None

    def write_json(self, path: Path, value: Any) -> None:
        """Write ``value`` as indented strict JSON, atomically."""
        text = json.dumps(_clean(value), indent=2) + "\n"
        _atomic_write(path, lambda handle: handle.write(text.encode()))

    def save_checkpoint(self, state: dict) -> None:
        """``torch.save(state)`` atomically; record.jsonl is flushed first so it is never behind."""
        self.flush()
        _atomic_write(self.checkpoint, lambda handle: torch.save(state, handle))

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint, or None if there is none."""
        if not self.checkpoint.exists():
            return None
        return torch.load(self.checkpoint, map_location="cpu", weights_only=False)

    def clear(self) -> None:
        """Remove the files of a previous run (fresh start)."""
        for path in (self.record, self.summary, self.checkpoint, self.log):
            path.unlink(missing_ok=True)

    def open_record(self, keep_before: int | None) -> None:
        """Open record.jsonl for appending; on resume keep only lines with ``step < keep_before``.

        Lines after the checkpoint (and a line cut short by a kill) are dropped, so a resumed run
        leaves no duplicate steps.
        """
        if keep_before is not None and self.record.exists():
            kept = []
            for line in self.record.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("step", math.inf) < keep_before:
                    kept.append(line + "\n")
            _atomic_write(self.record, lambda handle: handle.write("".join(kept).encode()))
        self._handle = open(self.record, "a", encoding="utf-8")

    def append(self, entry: dict) -> None:
        """Append one record line (buffered; flushed at checkpoints and at the end)."""
        self._handle.write(dumps(entry) + "\n")

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_record(run_dir: str | Path) -> Iterator[dict]:
    """Parsed lines of ``run_dir/record.jsonl``; InputError naming the file if it is missing."""
    path = Path(run_dir) / "record.jsonl"
    if not path.is_file():
        raise InputError("no record.jsonl here: expected a run directory written by equipoise.core.Fit",
                         path=path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"not a JSON line ({exc.msg})", path=path, line=number) from exc
