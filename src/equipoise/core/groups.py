"""Named parameter groups: validation, freezing, snapshots and summaries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["ParamGroups"]

#: groups with at most this many elements are summarised by their values, larger ones by mean/rms
SMALL_GROUP = 16


class ParamGroups:
    """Parameter groups by name, each a list of leaf floating-point tensors (any shape, device)."""

    def __init__(self, params: Mapping[str, Tensor | Sequence[Tensor]]) -> None:
        if not isinstance(params, Mapping) or not params:
            raise InputError("params must be a non-empty mapping of group name -> tensor(s)", field="params")
        self.groups: dict[str, list[Tensor]] = {}
        seen: dict[int, str] = {}
        for name, value in params.items():
            tensors = [value] if isinstance(value, Tensor) else list(value)
            if not isinstance(name, str) or not name or not tensors:
                raise InputError(f"group {name!r} must have a non-empty name and at least one tensor",
                                 field="params")
            for tensor in tensors:
                if not isinstance(tensor, Tensor) or not tensor.is_leaf or not tensor.is_floating_point():
                    raise InputError(f"group {name!r}: expected leaf floating-point tensors, got "
                                     f"{type(tensor).__name__}", field=f"params[{name!r}]")
                if id(tensor) in seen:
                    raise InputError(f"a tensor of group {name!r} is also in group {seen[id(tensor)]!r}",
                                     field=f"params[{name!r}]")
                seen[id(tensor)] = name
            self.groups[name] = tensors

    def check_names(self, names: Sequence[str], field: str) -> None:
        """InputError naming ``field`` if a name is not a group."""
        for name in names:
            if name not in self.groups:
                raise InputError(f"unknown parameter group {name!r}; groups are {sorted(self.groups)}",
                                 field=field)

    def tensors(self, names: Sequence[str]) -> list[Tensor]:
        """The tensors of groups ``names``, in order."""
        return [t for name in names for t in self.groups[name]]

    def layout(self, names: Sequence[str]) -> list[str]:
        """Group name of each tensor of :meth:`tensors`."""
        return [name for name in names for _ in self.groups[name]]

    def set_free(self, names: Sequence[str]) -> None:
        """Make exactly the groups ``names`` require gradients; freeze the others."""
        free = set(names)
        for name, tensors in self.groups.items():
            for tensor in tensors:
                tensor.requires_grad_(name in free)

    @contextmanager
    def keep_flags(self) -> Iterator[None]:
        """Restore every tensor's ``requires_grad`` on exit."""
        flags = [(t, t.requires_grad) for ts in self.groups.values() for t in ts]
        try:
            yield
        finally:
            for tensor, flag in flags:
                tensor.requires_grad_(flag)

    def state(self) -> dict[str, list[Tensor]]:
        """Detached copies of every tensor, for checkpoints and trial fits."""
        return {name: [t.detach().clone() for t in ts] for name, ts in self.groups.items()}

    def load(self, state: Mapping[str, Sequence[Tensor]]) -> None:
        """Copy ``state`` (from :meth:`state`) into the tensors in place."""
        with torch.no_grad():
            for name, tensors in self.groups.items():
                for tensor, saved in zip(tensors, state[name], strict=True):
                    tensor.copy_(saved)

    def describe(self) -> dict[str, list[dict]]:
        """Shape, dtype and device of every tensor, for config.json and resume checks."""
        return {name: [{"shape": list(t.shape), "dtype": str(t.dtype), "device": str(t.device)} for t in ts]
                for name, ts in self.groups.items()}

    def summary(self, include_large: bool) -> dict[str, float | list[float]]:
        """Values of small groups; ``<group>.mean`` and ``<group>.rms`` of large ones if ``include_large``.

        One host synchronisation in all.
        """
        keys: list[tuple[str, int]] = []
        parts: list[Tensor] = []
        with torch.no_grad():
            for name, tensors in self.groups.items():
                numel = sum(t.numel() for t in tensors)
                if numel <= SMALL_GROUP:
                    flat = torch.cat([t.detach().reshape(-1) for t in tensors]).to(torch.float64)
                    keys.append((name, flat.numel()))
                    parts.append(flat)
                elif include_large:
                    total = sum(t.detach().sum(dtype=torch.float64) for t in tensors)
                    squares = sum(torch.linalg.vector_norm(t.detach(), dtype=torch.float64) ** 2 for t in tensors)
                    keys.append((name + ".mean", 1))
                    keys.append((name + ".rms", 1))
                    parts.append((total / numel).reshape(1))
                    parts.append(torch.sqrt(squares / numel).reshape(1))
            if not parts:
                return {}
            values = torch.cat([p.cpu() for p in parts]).tolist()
        out: dict[str, float | list[float]] = {}
        position = 0
        for key, count in keys:
            chunk = values[position:position + count]
            out[key] = chunk[0] if count == 1 else chunk
            position += count
        return out
