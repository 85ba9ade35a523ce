"""Exception types shared by every equipoise package.

Every error raised for bad user input names where the problem is (file, line, field), the value
seen and what was expected, so that a scientist can fix the input without reading our code.
"""

from __future__ import annotations

from pathlib import Path


class EquipoiseError(Exception):
    """Base class of all equipoise errors."""


class InputError(EquipoiseError, ValueError):
    """Bad user input: a malformed file, an impossible parameter, a wrong unit.

    Parameters
    ----------
    message: what is wrong and what was expected.
    path: the file the problem is in, if any.
    line: 1-based line number in ``path``, if known.
    field: the name of the flag, column or field concerned, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        where = []
        if self.path is not None:
            where.append(self.path if line is None else f"{self.path}:{line}")
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(field)
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class NonFiniteError(EquipoiseError, FloatingPointError):
    """A loss term or a gradient became NaN or infinite during a fit.

    Attributes name the term, the parameter group (if the gradient is at fault) and the step.
    """

    def __init__(self, message: str, *, term: str | None = None, group: str | None = None,
                 step: int | None = None) -> None:
        self.term = term
        self.group = group
        self.step = step
        super().__init__(message)
