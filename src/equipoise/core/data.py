"""Mini-batches for training: a seeded, resumable, shardable iterator over a dataset.

A :class:`Batches` walks through a dataset forever, epoch after epoch. Epoch ``e`` visits the
items in the order of a permutation drawn from ``seed`` and ``e`` alone, so the position
``(epoch, index)`` is all that a checkpoint needs to resume on exactly the batches an
uninterrupted run would have seen. Under data parallelism every rank walks the same permutation:
step ``k`` takes the ``batch_size * world_size`` items ``perm[k*B*W : (k+1)*B*W]`` and rank ``r``
keeps the ``r``-th slice of ``batch_size`` of them, so the ranks' batches of a step together are
exactly the batch a single process with ``batch_size * world_size`` would have drawn.

An :class:`Interleaved` draws each step's batch from one of several :class:`Batches` (e.g. one
per protein, whose items cannot share a batch): the source of step ``k`` is a seeded draw from
``seed`` and ``k`` alone, the same on every rank, so under data parallelism the ranks' batches of
a step come from the same source, and a checkpoint of the step and the sources' positions resumes
exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from equipoise.errors import InputError

__all__ = ["Batches", "Interleaved"]

#: mixes the epoch into the permutation seed (a large odd constant, any fixed value would do)
_EPOCH_STRIDE = 1_000_003


class Batches:
    """Seeded mini-batches over ``dataset``, epoch after epoch, resumable and sharded by rank.

    ``dataset``: any sequence (``len`` and integer ``__getitem__``). ``batch_size``: items per
    batch on each process. ``shuffle``: a new permutation every epoch (else dataset order).
    ``seed``: permutation seed (the global RNGs are not touched). ``collate(list_of_items) ->
    batch`` (default :func:`torch.utils.data.default_collate`). ``drop_last``: skip the last,
    incomplete batch of an epoch (else it is kept; with several ranks it is padded with items
    from the start of the epoch's order, as ``DistributedSampler`` does, so that every rank gets
    ``batch_size`` items). ``rank``/``world_size``: this process's shard (None: from the
    initialised ``torch.distributed`` process group, else rank 0 of 1), resolved on first use.
    """

    def __init__(self, dataset: Sequence, batch_size: int, shuffle: bool = True, seed: int = 0,
                 collate: Callable[[list], Any] | None = None, drop_last: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        try:
            size = len(dataset)
        except TypeError as exc:
            raise InputError(f"dataset must be a sequence with len(), got {type(dataset).__name__}",
                             field="Batches.dataset") from exc
        if size == 0:
            raise InputError("dataset is empty", field="Batches.dataset")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"must be an integer >= 1, got {batch_size!r}", field="Batches.batch_size")
        if not isinstance(seed, int):
            raise InputError(f"must be an integer, got {seed!r}", field="Batches.seed")
        if collate is not None and not callable(collate):
            raise InputError(f"must be callable, got {type(collate).__name__}", field="Batches.collate")
        if (rank is None) != (world_size is None):
            raise InputError("give both rank and world_size, or neither", field="Batches.rank")
        if world_size is not None and not (isinstance(world_size, int) and 0 <= rank < world_size):
            raise InputError(f"need 0 <= rank < world_size, got rank {rank!r}, world_size {world_size!r}",
                             field="Batches.rank")
        self.dataset, self.size, self.batch_size, self.shuffle, self.seed = dataset, size, batch_size, shuffle, seed
        self.collate = collate or default_collate
        self.drop_last = drop_last
        self._rank, self._world = rank, world_size
        self.epoch, self.index = 0, 0
        self._order: tuple[int, list[int]] | None = None   # (epoch, permutation)
        self._peeked: tuple[tuple[int, int], Any] | None = None  # ((epoch, index), batch)

    # ------------------------------------------------------------------ sharding
    def _shard(self) -> tuple[int, int]:
        if self._world is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                self._rank, self._world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                self._rank, self._world = 0, 1
        if self.drop_last and self._global_batch() > self.size:
            raise InputError(f"batch_size {self.batch_size} x {self._world} processes exceeds the dataset's "
                             f"{self.size} items (drop_last=True leaves no batch)", field="Batches.batch_size")
        return self._rank, self._world

    @property
    def rank(self) -> int:
        return self._shard()[0]

    @property
    def world_size(self) -> int:
        return self._shard()[1]

    def _global_batch(self) -> int:
        return self.batch_size * (self._world or 1)

    def __len__(self) -> int:
        """Batches (steps) per epoch."""
        self._shard()
        full, rest = divmod(self.size, self._global_batch())
        return full + (1 if rest and not self.drop_last else 0)

    # ------------------------------------------------------------------ order
    def _permutation(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + epoch)
                order = torch.randperm(self.size, generator=gen).tolist()
            else:
                order = list(range(self.size))
            self._order = (epoch, order)
        return self._order[1]

    def indices(self, epoch: int, index: int) -> list[int]:
        """Dataset indices of this rank's batch number ``index`` of epoch ``epoch``."""
        rank, _ = self._shard()
        order = self._permutation(epoch)
        step = self._global_batch()
        chunk = order[index * step:(index + 1) * step]
        if len(chunk) < step and self._world > 1:
            chunk = (chunk + order * (step // self.size + 1))[:step]  # pad as DistributedSampler
        return chunk[rank * self.batch_size:(rank + 1) * self.batch_size]

    def peek(self) -> Any:
        """The batch that the next :func:`next` returns, without advancing (cached, built once)."""
        position = (self.epoch, self.index)
        if self._peeked is None or self._peeked[0] != position:
            items = [self.dataset[i] for i in self.indices(*position)]
            self._peeked = (position, self.collate(items))
        return self._peeked[1]

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> Any:
        batch = self.peek()
        self._peeked = None
        self.index += 1
        if self.index >= len(self):
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Position and layout, for checkpoints."""
        rank, world = self._shard()
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "size": self.size,
                "batch_size": self.batch_size, "world_size": world, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict`); InputError if the layout differs."""
        mine = self.state_dict()
        for key in ("seed", "size", "batch_size", "world_size", "shuffle", "drop_last"):
            if state.get(key) != mine[key]:
                raise InputError(f"checkpoint's batches have {key}={state.get(key)!r}, this run has "
                                 f"{mine[key]!r}: resume with the same data, batch size and number of processes",
                                 field=f"Batches.{key}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._peeked = None

    def describe(self) -> dict:
        """Settings, for config.json."""
        return {"size": self.size, "batch_size": self.batch_size, "shuffle": self.shuffle, "seed": self.seed,
                "drop_last": self.drop_last}


class Interleaved:
    """Mini-batches drawn from several :class:`Batches`, one source per step.

    ``sources``: the Batches (each walks its own dataset, seeded, sharded by rank). ``weights``:
    relative frequency of each source (default: its batches per epoch, so every item is visited
    about equally often). The source of step ``k`` is drawn from ``seed`` and ``k`` alone; the
    batch is the source's next one. ``peek``, ``state_dict``/``load_state_dict`` and ``describe``
    as :class:`Batches`; :attr:`source` is the index of the source of the next batch.
    """

    def __init__(self, sources: Sequence[Batches], weights: Sequence[float] | None = None, seed: int = 0) -> None:
        if not sources:
            raise InputError("need at least one source of batches", field="Interleaved.sources")
        weights = [float(len(b)) for b in sources] if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources) or not all(w >= 0 for w in weights) or sum(weights) <= 0:
            raise InputError(f"need one non-negative weight per source (not all 0), got {weights}",
                             field="Interleaved.weights")
        if not isinstance(seed, int):
            raise InputError(f"must be an integer, got {seed!r}", field="Interleaved.seed")
        self.sources, self.seed, self.step = list(sources), seed, 0
        self.weights = torch.tensor(weights, dtype=torch.float64)

    @property
    def source(self) -> int:
        """Index of the source that the next batch comes from."""
        if len(self.sources) == 1:
            return 0
        gen = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self.step)
        return int(torch.multinomial(self.weights, 1, generator=gen))

    def peek(self) -> Any:
        """The batch that the next :func:`next` returns, without advancing."""
        return self.sources[self.source].peek()

    def __iter__(self) -> "Interleaved":
        return self

    def __next__(self) -> Any:
        batch = next(self.sources[self.source])
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        """Step and every source's position, for checkpoints."""
        return {"step": self.step, "seed": self.seed, "weights": self.weights.tolist(),
                "sources": [b.state_dict() for b in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; InputError if the sources or their layout differ."""
        if state.get("seed") != self.seed or len(state.get("sources", [])) != len(self.sources) \
                or state.get("weights") != self.weights.tolist():
            raise InputError(f"checkpoint's interleaved batches have {len(state.get('sources', []))} sources "
                             f"(seed {state.get('seed')!r}), this run has {len(self.sources)} (seed {self.seed}): "
                             "resume with the same data", field="Interleaved")
        for batches, position in zip(self.sources, state["sources"]):
            batches.load_state_dict(position)
        self.step = int(state["step"])

    def describe(self) -> dict:
        """Settings, for config.json."""
        return {"seed": self.seed, "weights": self.weights.tolist(), "sources": [b.describe() for b in self.sources]}
