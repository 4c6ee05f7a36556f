"""Worker launched by tests/optim/test_distributed.py via ``torch.distributed.run --nproc_per_node=2`` (gloo, CPU).

Writes ``<out>/rank<r>.json`` with the checks; the pytest side asserts on them. Three scenarios:

1. ``exact``: identical gradients on every rank (what DDP guarantees), ``Muon(distributed=True)`` vs the
   single-process optimizer computed on every rank — parameters must be bit-identical.
2. ``ddp``: a real ``DistributedDataParallel`` model on half batches with ``hybrid(..., distributed=True)`` vs a
   single-process full-batch run — equal to fp32 tolerance (the gradient all-reduce changes the summation order),
   and identical across ranks.
3. ``fsdp2``: ``fully_shard`` (DTensor parameters) + Muon vs single process; records success or the exact error.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn

from orthokit.optim import Muon, hybrid


def _shapes():
    return [(32, 16), (32, 16), (16, 48), (4, 8, 12), (8, 4, 3, 3), (32, 16), (24, 24), (24, 24), (12, 8)]


def exact_scenario(rank: int) -> dict:
    g = torch.Generator().manual_seed(123)
    W0 = [torch.randn(*s, generator=g) for s in _shapes()]
    grads = [[torch.randn(*s, generator=g) for s in _shapes()] for _ in range(4)]
    results = {}
    for batched in (True, False):
        dist_p = [torch.nn.Parameter(w.clone()) for w in W0]
        ref_p = [torch.nn.Parameter(w.clone()) for w in W0]
        kw = dict(lr=0.02, weight_decay=0.1, batched=batched)
        od = Muon([{"params": dist_p[:-1]}, {"params": dist_p[-1:], "split": 2}], distributed=True, **kw)
        orf = Muon([{"params": ref_p[:-1]}, {"params": ref_p[-1:], "split": 2}], distributed=False, **kw)
        assert od.dist_context is not None and od.dist_context.world_size == 2
        auto = Muon([torch.nn.Parameter(torch.zeros(2, 2))], distributed="auto").dist_context
        assert auto is not None and auto.world_size == 2 and auto.rank == rank
        for gs in grads:
            for p, q, gr in zip(dist_p, ref_p, gs):
                p.grad, q.grad = gr.clone(), gr.clone()
            od.step()
            orf.step()
        max_diff = max((p - q).abs().max().item() for p, q in zip(dist_p, ref_p))
        bit_equal = all(torch.equal(p, q) for p, q in zip(dist_p, ref_p))
        # replicated across ranks?
        flat = torch.cat([p.detach().reshape(-1) for p in dist_p])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        results[f"batched={batched}"] = {
            "bit_equal": bit_equal,
            "max_abs_diff": max_diff,
            "ranks_identical": all(torch.equal(gathered[0], t) for t in gathered),
        }
    return results


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(17, 16)
        self.l1 = nn.Linear(16, 32)
        self.l2 = nn.Linear(32, 32)
        self.l3 = nn.Linear(32, 16)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 17, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        x = torch.tanh(self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x))))))
        return self.head(self.ln(x))


def _batches(steps: int):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 17, (8, 6), generator=g) for _ in range(steps)]


def _loss(model, idx):
    logits = model(idx)
    return nn.functional.cross_entropy(logits.reshape(-1, 17), idx.roll(1, dims=1).reshape(-1))


def ddp_scenario(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    ref = _Net()
    torch.manual_seed(0)
    net = _Net()
    ddp = DDP(net)
    o_ref = hybrid(ref, lr=0.02, adamw_lr=3e-3, weight_decay=0.01)
    o_ddp = hybrid(net, lr=0.02, adamw_lr=3e-3, weight_decay=0.01, distributed=True)
    for idx in _batches(5):
        o_ref.zero_grad()
        _loss(ref, idx).backward()
        o_ref.step()
        o_ddp.zero_grad()
        _loss(ddp, idx.chunk(world)[rank]).backward()
        o_ddp.step()
    max_diff = max((a - b).abs().max().item() for a, b in zip(ref.parameters(), net.parameters()))
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    return {"max_abs_diff": max_diff, "ranks_identical": all(torch.equal(gathered[0], t) for t in gathered)}


def fsdp2_scenario(rank: int, world: int) -> dict:
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(0)
        ref = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Tanh(), nn.Linear(32, 8, bias=False))
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Tanh(), nn.Linear(32, 8, bias=False))
        mesh = init_device_mesh("cpu", (world,))
        for layer in (net[0], net[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        o_ref = Muon(ref.parameters(), lr=0.02, weight_decay=0.01)
        o_net = Muon(net.parameters(), lr=0.02, weight_decay=0.01, distributed=True)
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            x = torch.randn(8, 16, generator=g)
            y = torch.randn(8, 8, generator=g)
            o_ref.zero_grad()
            nn.functional.mse_loss(ref(x), y).backward()
            o_ref.step()
            o_net.zero_grad()
            nn.functional.mse_loss(net(x.chunk(world)[rank]), y.chunk(world)[rank]).backward()
            o_net.step()
        full = [p.full_tensor() for p in net.parameters()]
        max_diff = max((a - b).abs().max().item() for a, b in zip(ref.parameters(), full))
        return {"ok": True, "max_abs_diff": max_diff, "param_type": type(next(net.parameters())).__name__}
    except Exception as e:  # record exactly what failed (reported in docs/optim/framework.md)
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}


def main() -> None:
    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    res = {"world_size": world, "exact": exact_scenario(rank), "ddp": ddp_scenario(rank, world)}
    res["fsdp2"] = fsdp2_scenario(rank, world)
    tmp = os.path.join(out_dir, f".rank{rank}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, f"rank{rank}.json"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skip interpreter finalization: gloo's worker threads can still hold tensors with Python references
    # there, and their destruction during teardown aborts the process ("terminate called without an active
    # exception", seen once in CI after every check had run). Results are already on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
