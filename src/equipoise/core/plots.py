"""Figures of a run directory, drawn from record.jsonl with matplotlib's Agg canvas (no display)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from equipoise.core.record import read_record
from equipoise.errors import InputError

__all__ = ["plot_run"]

#: at most this many parameter panels and lines per panel
MAX_PANELS = 12
MAX_LINES = 10


def _number(value) -> float:
    """A float from a record value (non-finite values are stored as strings)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _positive(values: list[float]) -> list[float]:
    """Non-positive values as NaN, so log axes skip them."""
    return [v if v > 0 else math.nan for v in values]


def _figure(title: str, ylabel: str, log: bool, boundaries: list[tuple[int, str]]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    for step, name in boundaries:
        ax.axvline(step, color="0.7", linewidth=0.8, linestyle="--")
        ax.annotate(name, (step, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color="0.4",
                    va="top", rotation=90)
    return fig, ax


def _save(fig, path: Path, ax=None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for axis in fig.axes if ax is None else [ax]:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw a run's figures as PNGs and return their paths.

    Reads ``run_dir/record.jsonl`` and writes to ``out_dir`` (default ``run_dir/plots``):
    loss_terms.png (raw and weighted value of each term and the weighted total, log scale),
    shares.png (each term's share of the total), weights.png (effective weights, log scale),
    grad_norms.png (each term's gradient norm on each free group, log scale) and params.png
    (parameter trajectories). Dashed lines mark stage starts.
    """
    entries = [e for e in read_record(run_dir) if "terms" in e]
    if not entries:
        raise InputError("record.jsonl holds no logged term values (was the fit run with diagnostics=False?)",
                         path=Path(run_dir) / "record.jsonl")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)

    boundaries, previous = [], None
    steps, total = [], []
    terms: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    norms: dict[str, list] = defaultdict(list)
    params: dict[str, list] = defaultdict(list)
    for entry in entries:
        step = entry["step"]
        if entry.get("stage") != previous:
            previous = entry.get("stage")
            boundaries.append((step, str(previous)))
        steps.append(step)
        total.append(_number(entry.get("loss")))
        for name, values in entry["terms"].items():
            for key in ("raw", "weight", "weighted", "share"):
                terms[name][key].append((step, _number(values.get(key))))
        for name, groups in entry.get("grad_norms", {}).items():
            for group, value in groups.items():
                norms[f"{name} on {group}"].append((step, _number(value)))
        for name, value in entry.get("params", {}).items():
            params[name].append((step, value))

    paths = []
    fig, ax = _figure("loss per term (solid: weighted, dotted: raw)", "value", True, boundaries)
    ax.plot(steps, _positive(total), color="black", linewidth=1.5, label="weighted total")
    for name, series in terms.items():
        x, weighted = zip(*series["weighted"])
        line, = ax.plot(x, _positive(list(weighted)), label=name)
        ax.plot(x, _positive([v for _, v in series["raw"]]), linestyle=":", color=line.get_color())
    paths.append(_save(fig, out / "loss_terms.png"))

    fig, ax = _figure("share of the weighted total", "share", False, boundaries)
    for name, series in terms.items():
        ax.plot(*zip(*series["share"]), label=name)
    ax.set_ylim(-0.02, 1.02)
    paths.append(_save(fig, out / "shares.png"))

    fig, ax = _figure("effective weights", "weight", True, boundaries)
    for name, series in terms.items():
        x, w = zip(*series["weight"])
        ax.plot(x, _positive(list(w)), label=name)
    paths.append(_save(fig, out / "weights.png"))

    fig, ax = _figure("gradient norm of each term on each free group", "norm", True, boundaries)
    for name, series in norms.items():
        x, n = zip(*series)
        ax.plot(x, _positive(list(n)), marker=".", label=name)
    if not norms:
        ax.text(0.5, 0.5, "no gradient norms recorded", transform=ax.transAxes, ha="center")
    paths.append(_save(fig, out / "grad_norms.png"))

    paths.append(_plot_params(params, boundaries, out / "params.png"))
    return paths


def _plot_params(params: dict[str, list], boundaries: list[tuple[int, str]], path: Path) -> Path:
    from matplotlib.figure import Figure

    names = list(params)[:MAX_PANELS]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4 * cols, 2.6 * rows), layout="constrained")
    fig.suptitle("parameter trajectories")
    if not names:
        fig.add_subplot().text(0.5, 0.5, "no parameter summaries recorded", ha="center")
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_title(name, fontsize=9)
        x = [s for s, _ in params[name]]
        values = [v for _, v in params[name]]
        if values and isinstance(values[0], list):
            for j in range(min(MAX_LINES, len(values[0]))):
                ax.plot(x, [_number(v[j]) if j < len(v) else math.nan for v in values], linewidth=1)
        else:
            ax.plot(x, [_number(v) for v in values], linewidth=1)
        for step, _ in boundaries:
            ax.axvline(step, color="0.7", linewidth=0.8, linestyle="--")
    return _save(fig, path)
