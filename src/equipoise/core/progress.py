"""Progress reporting: a rich bar on a terminal, plain periodic lines otherwise, or nothing;
plus a human-readable ``run.log`` in the run directory."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

from equipoise.errors import InputError

__all__ = ["Progress", "MODES"]

MODES = ("auto", "bar", "plain", "quiet")
#: seconds between plain progress lines on the console
PLAIN_INTERVAL = 10.0
#: run.log gets about this many progress lines per stage
LOG_LINES_PER_STAGE = 20


def _eta(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class Progress:
    """Console progress and run.log for one call of ``Fit.run``.

    ``mode``: "bar" (rich progress bar with ETA and current loss), "plain" (a line every
    ``PLAIN_INTERVAL`` seconds, for logs and batch jobs), "quiet" (console silent) or "auto"
    (bar when stdout is a terminal, else plain). ``total``: steps of the whole fit; ``done``: steps
    already done (on resume).
    """

    def __init__(self, mode: str, total: int, done: int, log_path: Path | None) -> None:
        if mode not in MODES:
            raise InputError(f"progress must be one of {MODES}, got {mode!r}", field="progress")
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode, self.total, self.first_done = mode, total, done
        self.started = time.perf_counter()
        self.last_plain = -float("inf")
        self.log = None if log_path is None else open(log_path, "a", encoding="utf-8")
        self.bar = None
        if mode == "bar":
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("loss {task.fields[loss]}"))
            self.task = self.bar.add_task("fit", total=total, completed=done, loss="-")
            self.bar.start()

    def _write_log(self, message: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
            self.log.flush()

    def event(self, message: str) -> None:
        """A notable event (stage start and end, weights, flags, resume): console and run.log."""
        self._write_log(message)
        if self.mode == "bar":
            self.bar.console.print(message, markup=False, highlight=False)
        elif self.mode == "plain":
            print(f"[equipoise] {message}", flush=True)

    def step(self, done: int, stage: str, stage_step: int, stage_steps: int, loss: float | None = None) -> None:
        """Report that ``done`` steps of the fit are finished; ``loss`` is the last weighted total
        (None for work without a loss, e.g. synthesising spectra: the line then has no loss)."""
        now = time.perf_counter()
        rate = (done - self.first_done) / max(now - self.started, 1e-9)
        eta = _eta((self.total - done) / rate) if rate > 0 else "?"
        loss_text = "" if loss is None else f"loss {loss:.6g} "
        line = f"step {done}/{self.total} stage {stage} {stage_step + 1}/{stage_steps} {loss_text}eta {eta}"
        if stage_step % max(1, stage_steps // LOG_LINES_PER_STAGE) == 0 or stage_step + 1 == stage_steps:
            self._write_log(line)
        if self.mode == "bar":
            self.bar.update(self.task, completed=done, description=stage,
                            loss="-" if loss is None else f"{loss:.4g}")
        elif self.mode == "plain" and (now - self.last_plain >= PLAIN_INTERVAL or done == self.total):
            self.last_plain = now
            print(f"[equipoise] {line}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.log is not None:
            self.log.close()
            self.log = None
