"""torchrun worker for tests/projection/test_distributed.py (also usable as a reference for DDP use).

Each rank holds half of the old-task data and half of every training batch. It builds a GPM activation memory and
an OGD gradient memory through DDP (covariances all-reduced, gradient vectors all-gathered), trains a few
Projected(AdamW) steps and rank 0 writes parameters and bases to ``<out>/ddp.pt`` (atomically).

Usage: ``torchrun --standalone --nproc_per_node=2 tests/projection/ddp_worker.py OUT_DIR``; ``--single`` runs the
same computation in one process without DDP (the reference).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from orthokit.projection import OGD, Projected, SubspaceMemory

WORLD = 2


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(12, 4, generator=g))[0]
    x_old = torch.randn(40, 4, generator=g) @ basis.T
    y_old = torch.randint(0, 4, (40,), generator=g)
    steps = [(torch.randn(32, 12, generator=g), torch.randint(0, 4, (32,), generator=g)) for _ in range(3)]
    return x_old, y_old, basis, steps


def run(rank: int, world: int, distributed: bool) -> dict[str, torch.Tensor]:
    model = build()
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if distributed else model
    x_old, y_old, _, steps = data()
    shard = slice(rank * 20, (rank + 1) * 20) if distributed else slice(0, 40)
    # activation memory (GPM): rank-local batches, covariance all-reduced
    mem = SubspaceMemory(net, layers="0")
    local = [x_old[shard][i : i + 10] for i in range(0, x_old[shard].shape[0], 10)]
    mem.collect_activations(net, local, threshold=0.999, criterion="minimal")
    # gradient memory (OGD) on the second layer: rank-local examples, vectors all-gathered
    ogd = OGD(model, layers="2", samples_per_task=20 if not distributed else 10)
    ogd.after_task(
        [(x_old[shard][:20], y_old[shard][:20])]
        if distributed
        else [(x_old[:10], y_old[:10]), (x_old[20:30], y_old[20:30])]
    )
    opt = Projected(torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1), mem)
    for x, y in steps:
        xs, ys = (x[rank * 16 : (rank + 1) * 16], y[rank * 16 : (rank + 1) * 16]) if distributed else (x, y)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xs), ys).backward()
        opt.step()
    out = {f"param.{n}": p.detach().clone() for n, p in model.named_parameters()}
    out["gpm_basis"] = mem.basis("0").clone()
    out["ogd_basis"] = ogd.memory.flat_basis.clone()
    return out


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0])
    single = "--single" in argv
    if single:
        result = run(0, 1, distributed=False)
        rank = 0
    else:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        result = run(rank, dist.get_world_size(), distributed=True)
        # every rank must hold the same bases and parameters
        for k, v in result.items():
            ref = v.clone()
            dist.broadcast(ref, src=0)
            if not torch.equal(ref, v):
                raise SystemExit(f"rank {rank}: {k} differs from rank 0")
        dist.barrier()
    if rank == 0:
        name = "single.pt" if single else "ddp.pt"
        tmp = out_dir / (name + ".tmp")
        torch.save(result, tmp)
        os.replace(tmp, out_dir / name)
    if not single:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    # Skip interpreter finalization (gloo worker threads holding tensors can abort the process during teardown);
    # results are already on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
