"""Shared helpers of the text readers: open plain or gzipped files, split numeric columns."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from equipoise.errors import InputError


def resolve_existing(path: str | Path) -> Path:
    """Return ``path``, or ``path.gz`` when only the gzipped copy exists; InputError if neither does."""
    p = Path(path)
    if p.is_file():
        return p
    gz = p.with_name(p.name + ".gz")
    if gz.is_file():
        return gz
    raise InputError("file not found", path=p)


def numeric_lines(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, whitespace-separated tokens) of a text file, gzipped or not.

    Blank lines and comments (from ``#`` to the end of the line) are skipped.
    """
    p = resolve_existing(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8", errors="replace") as handle:  # type: ignore[operator]
            for number, text in enumerate(handle, start=1):
                tokens = text.split("#", 1)[0].split()
                if tokens:
                    yield number, tokens
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read file: {exc}", path=p) from exc


def parse_floats(tokens: list[str], *, path: Path | str, line: int, what: str) -> list[float]:
    """Convert tokens to floats; InputError naming the file, line and offending token otherwise."""
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise InputError(f"expected {what}, found non-numeric value {token!r}", path=path, line=line) from None
    return values
