"""Distributed recording: DDP (rank 0 writes), FSDP2 and DTensor placements (exact reductions).

The slow tests start one job of 2 CPU processes with the gloo backend (this file run as a
script, torchrun-style environment variables) that records three runs: DDP, FSDP2
(`fully_shard`, uneven and empty shards included) and hand-placed DTensors (Shard(1),
Replicate, uneven Shard(0)). Each is compared with a single-process run of the same model, data
and optimizer made in the test process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stepsize_lens._schema import METRICS
from stepsize_lens.recording.distributed import rank_path, sharded_rows
from stepsize_lens.recording.metrics import tensor_grams, tensor_perp2
from stepsize_lens.run import Run

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5
BATCH = 8
WORLD = 2


# -- the shared recipe: same model, data and optimizer in the job and in the reference ----------
def _model() -> nn.Module:
    torch.manual_seed(0)
    # 7 rows split 4 + 3, 3 rows split 2 + 1, and a 1-row layer whose rank-1 shard is empty
    return nn.Sequential(
        nn.Linear(6, 7),
        nn.LayerNorm(7),
        nn.ReLU(),
        nn.Linear(7, 3),
        nn.ReLU(),
        nn.Linear(3, 1),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=generator), torch.randn(BATCH, 1, generator=generator)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, world: int) -> None:
    x, y = _data()
    share = BATCH // world
    x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()  # DDP / FSDP2 average the halves' grads
        optimizer.step()


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _placed_tensors() -> list[tuple[torch.Tensor, list[torch.Tensor], str]]:
    """(weight, one gradient per step, placement) for the hand-placed DTensor run."""
    generator = torch.Generator().manual_seed(2)
    shapes = {"shard1": (5, 4), "replicate": (3, 4), "shard0_1d": (5,), "shard0": (7, 3)}
    return [
        (
            torch.randn(shape, generator=generator),
            [torch.randn(shape, generator=generator) for _ in range(STEPS)],
            placement,
        )
        for placement, shape in shapes.items()
    ]


def _train_placed(params: list[torch.Tensor], grads: list[list[torch.Tensor]], opt) -> None:
    for step in range(STEPS):
        for param, steps in zip(params, grads):
            param.grad = steps[step]
        opt.step()


# -- the job's processes -------------------------------------------------------------------------
def _worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.nn.parallel import DistributedDataParallel

    import stepsize_lens

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # DDP: replicated parameters; rank 0 writes ddp.pt, write=True gives every rank its file
    # (one lens per optimizer: the same recipe twice)
    for name, write in (("ddp.pt", None), ("ddp_all.pt", True)):
        model = _model()
        ddp = DistributedDataParallel(model)
        optimizer = _sgd(ddp.parameters())
        lens = stepsize_lens.attach(
            ddp, optimizer, path=out / name, schedule=1, write=write, flush_every=None
        )
        _train(ddp, optimizer, rank, world)
        lens.close()

    # FSDP2: DTensor parameters sharded on dim 0
    model = _model()
    for index in (0, 1, 3, 5):
        fully_shard(model[index])
    fully_shard(model)
    optimizer = _adamw(model.parameters())
    lens = stepsize_lens.attach(
        model, optimizer, path=out / "fsdp.pt", schedule=1, write=True, flush_every=None
    )
    _train(model, optimizer, rank, world)
    lens.close()
    local_rows = {name: p.to_local().shape[0] for name, p in model.named_parameters()}
    torch.save(local_rows, out / f"fsdp_local_rows{rank}.pt")

    # hand-placed DTensors: column-split rows, replicated, uneven 1-D and row shards
    mesh = init_device_mesh("cpu", (world,))
    kinds = {
        "shard1": [Shard(1)],
        "replicate": [Replicate()],
        "shard0_1d": [Shard(0)],
        "shard0": [Shard(0)],
    }
    params, grads = [], []
    for weight, steps, kind in _placed_tensors():
        params.append(nn.Parameter(distribute_tensor(weight, mesh, kinds[kind])))
        grads.append([distribute_tensor(g, mesh, kinds[kind]) for g in steps])
    optimizer = _sgd(params)
    lens = stepsize_lens.attach(optimizer, path=out / "placed.pt", schedule=1, flush_every=None)
    _train_placed(params, grads, optimizer)
    lens.close()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PYTHONPATH=str(ROOT),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            pytest.fail("the 2-process gloo job did not finish in 120 s")
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    return out


def _reference(tmp_path: Path, name: str, make_optimizer) -> Run:
    import stepsize_lens

    model = _model()
    optimizer = make_optimizer(model.parameters())
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / name, schedule=1)
    _train(model, optimizer, rank=0, world=1)
    lens.close()
    return stepsize_lens.load(tmp_path / name)


def _assert_same_run(got: Run, want: Run) -> None:
    assert got.tensor_names == want.tensor_names
    assert list(got.params["shape"]) == list(want.params["shape"])
    assert list(got.steps) == list(want.steps) == list(range(1, STEPS + 1))
    for name in METRICS:
        a, b = got.metric(name), want.metric(name)
        scale = float(np.nanmax(np.abs(b), initial=1e-12))
        torch.testing.assert_close(
            torch.from_numpy(a),
            torch.from_numpy(b),
            rtol=1e-4,
            atol=1e-5 * scale,
            equal_nan=True,
            msg=lambda m, name=name: f"{name}: {m}",
        )
    for view in ("test_view", "applied_view"):
        assert (got.view(view) == want.view(view)).all(), view


# -- fast tests ----------------------------------------------------------------------------------
def test_rank_path() -> None:
    assert rank_path("out/run.pt", 0, 2) == "out/run.pt"
    assert rank_path("out/run.pt", 1, 2) == str(Path("out/run.rank1.pt"))
    assert rank_path("out/run", 3, 4) == str(Path("out/run.rank3"))
    assert rank_path("out/run-{rank}.pt", 0, 2) == "out/run-0.pt"
    assert rank_path("run.pt", 0, 1) == "run.pt"
    assert rank_path(None, 1, 2) is None


def test_no_reduction_without_dtensors() -> None:
    assert sharded_rows([torch.zeros(3, 2), torch.zeros(4)]) is None


def test_merging_row_pieces_is_exact() -> None:
    """Pieces of rows (split across columns, as shards of a 1-D tensor are) merge into the
    whole rows' Grams and tangential parts, also for nearly radial updates."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(4, 10, generator=generator, dtype=torch.float64)
    g = torch.randn(4, 10, generator=generator, dtype=torch.float64)
    d = -1e-3 * w + 1e-11 * torch.randn(4, 10, generator=generator, dtype=torch.float64)
    stacked = torch.stack([w, g, d], dim=1)

    def per_row(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gram = block @ block.transpose(1, 2)
        coef = gram[:, 0, 2] / gram[:, 0, 0]
        return gram, (block[:, 2] - coef[:, None] * block[:, 0]).square().sum(-1)

    want_gram, want_perp2 = per_row(stacked)
    cuts = [(0, 3), (3, 4), (4, 10)]  # three column pieces per row
    piece_gram, piece_perp2 = zip(*(per_row(stacked[:, :, a:b]) for a, b in cuts))
    rows = torch.arange(4).repeat(len(cuts))
    got_gram = tensor_grams(torch.cat(piece_gram), rows, 4)
    got_perp2 = tensor_perp2(torch.cat(piece_gram), torch.cat(piece_perp2), rows, got_gram)
    torch.testing.assert_close(got_gram, want_gram, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_perp2, want_perp2, rtol=1e-6, atol=0)
    naive = want_gram[:, 2, 2] - want_gram[:, 0, 2] ** 2 / want_gram[:, 0, 0]
    assert not torch.allclose(
        naive, want_perp2, rtol=1e-2, atol=0
    )  # the cancellation merging avoids


# -- the 2-process job ----------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_rank0_writes_and_matches_single_process(job: Path, tmp_path: Path) -> None:
    import stepsize_lens

    assert (job / "ddp.pt").exists()
    assert not (job / "ddp.rank1.pt").exists()  # rank 1 does not write by default
    got = stepsize_lens.load(job / "ddp.pt")
    assert got.meta["rank"] == 0 and got.meta["world_size"] == WORLD
    want = _reference(tmp_path, "ref_sgd.pt", _sgd)
    _assert_same_run(got, want)
    # write=True: every rank writes its own file, with the same numbers
    other = stepsize_lens.load(job / "ddp_all.rank1.pt")
    assert other.meta["rank"] == 1
    _assert_same_run(other, stepsize_lens.load(job / "ddp_all.pt"))


@pytest.mark.slow
def test_fsdp2_matches_single_process(job: Path, tmp_path: Path) -> None:
    import stepsize_lens

    rows0 = torch.load(job / "fsdp_local_rows0.pt")
    rows1 = torch.load(job / "fsdp_local_rows1.pt")
    assert rows0["0.weight"] == 4 and rows1["0.weight"] == 3  # uneven shards
    assert rows1["5.weight"] == 0  # an empty shard
    got = stepsize_lens.load(job / "fsdp.pt")
    want = _reference(tmp_path, "ref_adamw.pt", _adamw)
    _assert_same_run(got, want)
    # every rank holds the same, whole-model numbers
    _assert_same_run(stepsize_lens.load(job / "fsdp.rank1.pt"), got)


@pytest.mark.slow
def test_dtensor_placements_match_single_process(job: Path, tmp_path: Path) -> None:
    import stepsize_lens

    placed = _placed_tensors()
    params = [nn.Parameter(weight.clone()) for weight, _, _ in placed]
    optimizer = _sgd(params)
    lens = stepsize_lens.attach(optimizer, path=tmp_path / "ref_placed.pt", schedule=1)
    _train_placed(params, [steps for _, steps, _ in placed], optimizer)
    lens.close()
    _assert_same_run(
        stepsize_lens.load(job / "placed.pt"), stepsize_lens.load(tmp_path / "ref_placed.pt")
    )


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    # Every file is written and the process group destroyed. Leave without running C++ static
    # destructors: gloo's threads, torn down at interpreter exit, sometimes abort the process
    # ("terminate called without an active exception", exit -6; seen once in a CI run).
    sys.stdout.flush()
    os._exit(0)
