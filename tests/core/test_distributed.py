"""Data parallelism: 2 CPU processes (gloo) stay bitwise in sync, match one process on the union
of their batches, and resume bitwise from a checkpoint."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from equipoise.core import distributed
from equipoise.core.record import read_record

from tests.core.training_problem import make_training

STEPS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, world: int, port: int, root: str, resume: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = distributed.setup(backend="gloo")
    try:
        assert (context.rank, context.world_size, context.is_main) == (rank, world, rank == 0)
        out = {}
        if not resume:
            fit, model, batches = make_training(f"{root}/union", batch_size=4, steps=STEPS, dropout=0.0)
            union = fit.run()
            assert batches.world_size == world
            out = {"union": _params(model), "union_loss": union.final_loss, "validation": union.validation}
        else:
            fit, model, _ = make_training(f"{root}/whole", batch_size=4, steps=STEPS)  # dropout: per-rank RNG
            fit.run()
            out["whole"] = _params(model)
            fit, model, _ = make_training(f"{root}/cut", batch_size=4, steps=STEPS)
            assert not fit.run(max_steps=6).completed
            fit, model, _ = make_training(f"{root}/cut", batch_size=4, steps=STEPS)
            fit.run()
            out["resumed"] = _params(model)
        torch.save(out, f"{root}/rank{rank}.pt")
        # both ranks done before either destroys the group: gloo aborted a rank ("terminate called
        # without an active exception", SIGABRT) when its peer tore down first (2 of 8 runs under load)
        torch.distributed.barrier()
    finally:
        distributed.teardown()


def _spawn(root, resume: bool) -> list[dict]:
    mp.spawn(_worker, args=(2, _free_port(), str(root), resume), nprocs=2, join=True)
    return [torch.load(root / f"rank{r}.pt") for r in (0, 1)]


def _same(ranks: list[dict], key: str) -> None:
    for a, b in zip(ranks[0][key], ranks[1][key], strict=True):
        assert torch.equal(a, b), key  # bitwise in sync


def test_two_processes_stay_in_sync_and_match_one_process_on_the_union(tmp_path):
    ranks = _spawn(tmp_path, resume=False)
    _same(ranks, "union")
    assert ranks[0]["validation"] == ranks[1]["validation"]
    assert [line["step"] for line in read_record(tmp_path / "union")] == list(range(STEPS))  # rank 0 writes alone

    fit, model, _ = make_training(tmp_path / "single", batch_size=8, steps=STEPS, dropout=0.0)
    single = fit.run()
    for a, b in zip(_params(model), ranks[0]["union"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # same maths, other summation order
    assert single.final_loss == pytest.approx(ranks[0]["union_loss"], rel=1e-10)
    assert ranks[0]["validation"]["last"]["metrics"]["val_mse"] == pytest.approx(
        single.validation["last"]["metrics"]["val_mse"], rel=1e-9)


@pytest.mark.slow
def test_two_process_run_resumes_bitwise(tmp_path):
    ranks = _spawn(tmp_path, resume=True)
    _same(ranks, "whole")
    _same(ranks, "resumed")
    for a, b in zip(ranks[0]["whole"], ranks[0]["resumed"]):
        assert torch.equal(a, b)  # resume under DDP is bitwise: per-rank RNG, batches, AdamW, lr schedule
    assert [line["step"] for line in read_record(tmp_path / "cut")] == list(range(STEPS))


def test_setup_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = distributed.setup()
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    assert not distributed.active() and distributed.world_size() == 1
