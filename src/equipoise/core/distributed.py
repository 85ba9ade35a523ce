"""Data-parallel training over processes started by ``torchrun``: setup, teardown, and the few
collectives :class:`~equipoise.core.fit.Fit` uses.

``setup()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and initialises the default process group: gloo on CPU, nccl
when CUDA is available. With a process group of two or more processes a ``Fit`` broadcasts the
parameters from rank 0 at start, averages gradients, term values and losses over the ranks, keeps
every control decision (convergence, time budget, non-finite steps) identical on all ranks, and
lets only rank 0 write the run directory and progress. Every rank must make the same calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["Context", "setup", "teardown", "launched", "active", "rank", "world_size", "is_main"]

#: seconds a collective may wait for the other ranks before failing
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node, the
    ``device`` its tensors should live on, and ``is_main`` (rank 0)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise InputError(f"environment variable {name}={value!r} is not an integer", field=name) from exc


def setup(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Context:
    """Initialise the default process group from torchrun's environment and return the context.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised: rank 0 of 1, on
    CUDA if available, else CPU. ``backend``: "gloo" or "nccl" (default: nccl with CUDA, else
    gloo). With CUDA each process uses GPU ``LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    process = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", process)
    if world < 1 or not 0 <= process < world:
        raise InputError(f"need 0 <= RANK < WORLD_SIZE, got RANK={process}, WORLD_SIZE={world}", field="RANK")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return Context(0, 1, 0, device, None)
    backend = backend or ("nccl" if cuda else "gloo")
    if backend not in ("gloo", "nccl"):
        raise InputError(f"backend must be 'gloo' or 'nccl', got {backend!r}", field="backend")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise InputError(f"WORLD_SIZE={world} but {name} is not set: start the processes with torchrun",
                             field=name)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=process, world_size=world, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if backend == "nccl" else {}))
    return Context(process, world, local, device, backend)


def teardown() -> None:
    """Destroy the default process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def launched(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Context]:
    """:func:`setup` for the lifetime of a command (a no-op without torchrun): yields the
    :class:`Context` and tears the process group down at the end, also on errors."""
    context = setup(backend, timeout_s)
    try:
        yield context
    finally:
        teardown()


def active() -> bool:
    """True when a process group of two or more processes is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and without a process group)."""
    return rank() == 0


def _device_of(tensor: Tensor) -> Tensor:
    """``tensor`` where the backend can reduce it (nccl needs CUDA tensors)."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def broadcast_(tensors: Sequence[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values."""
    with torch.no_grad():
        for tensor in tensors:
            buffer = _device_of(tensor.detach())
            dist.broadcast(buffer, src=src)
            if buffer is not tensor:
                tensor.detach().copy_(buffer)


def average(tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Mean over ranks of each tensor (None stays None; every rank must have None at the same
    places). Tensors of one dtype and device travel as one flat buffer: one all-reduce each."""
    out: list[Tensor | None] = list(tensors)
    buckets: dict[tuple, list[int]] = {}
    for i, tensor in enumerate(tensors):
        if tensor is not None:
            buckets.setdefault((tensor.dtype, tensor.device), []).append(i)
    world = dist.get_world_size()
    for members in buckets.values():
        flat = _device_of(torch.cat([tensors[i].detach().reshape(-1) for i in members]))
        dist.all_reduce(flat)
        flat = flat.div_(world).to(tensors[members[0]].device)
        for i, part in zip(members, flat.split([tensors[i].numel() for i in members])):
            out[i] = part.view_as(tensors[i])
    return out


def any_true(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    value = _device_of(torch.tensor([1.0 if flag else 0.0]))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` (picklable) on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]
