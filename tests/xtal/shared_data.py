"""Where the xtal test data are: ``../shared/data/xtal`` beside the checkout (tests skip without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("EQUIPOISE_XTAL_DATA",
                           Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "xtal"))


def data_file(name: str) -> Path:
    """``DATA / name``, or skip the test with a clear message when it is absent."""
    path = DATA / name
    if not path.exists():
        pytest.skip(f"xtal test data {name} not found at {path} (../shared not present)")
    return path


def monlib_or_skip(explicit: str | None = None) -> Path:
    """The monomer library that lookup finds, or skip (not installed on this machine)."""
    from equipoise.errors import InputError
    from equipoise.xtal.monlib import find_monlib

    try:
        return find_monlib(explicit)
    except InputError as exc:
        pytest.skip(f"no monomer library: {exc}")
