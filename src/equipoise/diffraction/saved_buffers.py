"""Memory for what a forward pass keeps for its backward pass, reused by the simulator's next call.

Why: the simulator's forward pass with autograd keeps a few hundred MB for the backward pass
(simulate.py: the geometry's autograd graph and the lattice Jacobians of every chunk). On the CPU
a fresh buffer costs a page fault per 4 KiB on first touch, and glibc hands freed blocks back to the
kernel, so every call paid them again (measured here: filling a fresh 134 MB float64 buffer 0.085 s,
32 715 faults, about 2.3 µs each, against 0.019 s to copy the same data into memory already touched;
1024² float64 fwd+bwd faulted 40 000-90 000 times per call). A refinement evaluates the same
simulator again and again with the same shapes, so :class:`SavedBuffers` keeps the memory between
calls and hands it out again.

Slots are handed out in request order: a forward pass makes the same requests (shapes, dtypes) on
every call, so request i gets back slot i; a slot that is too small or of another dtype is replaced.
The memory is held from the first call with autograd until the simulator is dropped (or
:meth:`SavedBuffers.clear`): at most what one forward pass keeps, which the simulator bounds by
part of ``config.memory_budget_bytes``.

Two ways in: :meth:`SavedBuffers.take` (a kernel writes its kept result there directly, e.g. the
lattice Jacobians, lattice_sum.py) and :meth:`SavedBuffers.saving`, a
``torch.autograd.graph.saved_tensors_hooks`` context under which tensors that autograd saves are
copied into slots (the originals are then freed with their chunk and their memory reused by the next
chunk). One forward pass uses the buffers at a time (:meth:`SavedBuffers.lease`): while a graph
still holds them, another call gets none and allocates fresh memory as before.

Only CPU tensors are worth it (CUDA's caching allocator already reuses device memory): on other
devices :meth:`SavedBuffers.lease` gives nothing and the simulator behaves as without this module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

#: tensors that autograd saves with fewer elements than this are kept as they are (small inputs,
#: per-chunk scalars): copying them would cost more than it saves
MIN_SAVED_NUMEL = 1 << 12


class SavedBuffers:
    """Reusable slots of memory on one device (module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._slots: list[Tensor] = []
        self._owned: set[int] = set()  # data pointers of the slots
        self._next = 0
        self._leased = False

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(s.numel() * s.element_size() for s in self._slots)

    def clear(self) -> None:
        """Drop the held memory (the next lease allocates again)."""
        if not self._leased:
            self._slots, self._owned = [], set()

    def lease(self) -> _Lease | None:
        """Exclusive use of the slots from request 0, or None when in use (or not on the CPU).

        The lease ends with :meth:`_Lease.end`, or when it is garbage-collected (an autograd graph
        dropped without a backward pass).
        """
        if self._leased or self.device.type != "cpu":
            return None
        self._leased, self._next = True, 0
        return _Lease(self)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """The next slot as a contiguous tensor ``shape`` of ``dtype`` (contents undefined)."""
        numel = math.prod(shape)
        i, self._next = self._next, self._next + 1
        slot = self._slots[i] if i < len(self._slots) else None
        if slot is None or slot.dtype != dtype or slot.numel() < numel:
            slot = torch.empty(numel, dtype=dtype, device=self.device)
            if i < len(self._slots):
                self._owned.discard(self._slots[i].data_ptr())
                self._slots[i] = slot
            else:
                self._slots.append(slot)
            self._owned.add(slot.data_ptr())
        return slot[:numel].view(shape)

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Within: tensors that autograd saves (of at least MIN_SAVED_NUMEL elements) are copied into slots.

        The same tensor saved by several operations is copied once (per ``with``); tensors that live
        in a slot already (written there through :meth:`take`) are kept as they are.
        """
        copies: dict[tuple, tuple[Tensor, Tensor]] = {}

        def pack(t: Tensor) -> Tensor:
            if (t.numel() < MIN_SAVED_NUMEL or t.device != self.device or t.is_sparse
                    or t.untyped_storage().data_ptr() in self._owned):
                return t
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
                   t.dtype, t._version)
            hit = copies.get(key)
            if hit is None:
                copy = self.take(tuple(t.shape), t.dtype)
                with torch.no_grad():
                    copy.copy_(t)
                copies[key] = hit = (t, copy)  # the original kept alive so that its address is not reused
            return hit[1]

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            try:
                yield
            finally:
                copies.clear()


class _Lease:
    """Use of a :class:`SavedBuffers` by one forward pass; :meth:`end` (or garbage collection) frees it."""

    def __init__(self, buffers: SavedBuffers) -> None:
        self.buffers: SavedBuffers | None = buffers

    def end(self) -> None:
        if self.buffers is not None:
            self.buffers._leased = False
            self.buffers = None

    def __del__(self) -> None:
        self.end()
