"""Distributed orthogonalization: shard the polar work of a DDP step across ranks.

Under DDP every rank holds the same (all-reduced) gradients and therefore the same momentum. Orthogonalizing every
matrix on every rank wastes ``world_size×`` compute (Keller's and Dion's observation, reference notes §3, §10.1),
so with ``distributed=True`` each matrix gets ONE owner rank — whole matrices, assigned round-robin in order of
decreasing size so the load is balanced — the owner orthogonalizes its share (still batched by shape), and the
results are broadcast from their owners (one flat buffer per owner and dtype). Every rank then applies the same
arithmetic (scaling, weight decay, ``p ← p − lr·O``), so parameters stay replicated and equal to the
single-process result.

FSDP2 (``fully_shard``, DTensor parameters): updates that are DTensors are gathered with ``full_tensor()``,
orthogonalized by their owner, broadcast, and each rank keeps its local shard
(``distribute_tensor``-equivalent slicing via ``DTensor.from_local``). See ``docs/optim/framework.md``.

Example:
    >>> assign_owners([10, 40, 20, 30], world_size=2)
    [1, 0, 0, 1]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from orthokit.optim.transforms import MatrixView, orthogonalize

__all__ = [
    "DistContext",
    "resolve_dist_context",
    "context_from_dtensor",
    "assign_owners",
    "sharded_orthogonalize",
]


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and process group used to shard orthogonalization."""

    rank: int
    world_size: int
    group: Any = None

    def global_rank(self, group_rank: int) -> int:
        """Global rank of ``group_rank`` in :attr:`group` (for ``broadcast``'s ``src``)."""
        if self.group is None:
            return group_rank
        import torch.distributed as dist

        return dist.get_global_rank(self.group, group_rank)


def resolve_dist_context(distributed: bool | str, process_group: Any = None) -> DistContext | None:
    """``DistContext`` for ``distributed`` ∈ {False, True, "auto"} (``None`` means single-process).

    ``True`` requires an initialized default process group (``ValueError`` otherwise); ``"auto"`` enables sharding
    only when one is initialized with more than one rank.

    Example:
        >>> resolve_dist_context(False) is None
        True
    """
    if distributed is False:
        return None
    if distributed is not True and distributed != "auto":
        raise ValueError(f"distributed must be True, False or 'auto', got {distributed!r}")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if distributed == "auto":
            return None
        raise ValueError("distributed=True needs an initialized torch.distributed process group")
    ws = dist.get_world_size(process_group)
    if ws == 1 and distributed == "auto":
        return None
    return DistContext(dist.get_rank(process_group), ws, process_group)


def context_from_dtensor(t: Tensor) -> DistContext:
    """``DistContext`` over the process group of a 1-D-mesh DTensor (FSDP2 parameters).

    Raises ``ValueError`` for multi-dimensional meshes (HSDP/TP), which are not supported.
    """
    import torch.distributed as dist

    mesh = t.device_mesh  # type: ignore[attr-defined]
    if mesh.ndim != 1:
        raise ValueError(f"only 1-D device meshes (FSDP2 shard mesh) are supported, got a {mesh.ndim}-D mesh")
    group = mesh.get_group()
    return DistContext(dist.get_rank(group), dist.get_world_size(group), group)


def assign_owners(sizes: Sequence[int], world_size: int) -> list[int]:
    """Owner rank of each matrix: round-robin over the matrices sorted by decreasing size (ties by index).

    Example:
        >>> assign_owners([5, 5, 5], 2)
        [0, 1, 0]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    order = sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), i))
    owners = [0] * len(sizes)
    for j, i in enumerate(order):
        owners[i] = j % world_size
    return owners


def _is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def sharded_orthogonalize(
    t: orthogonalize, updates: Sequence[Tensor], views: Sequence[MatrixView], ctx: DistContext
) -> list[Tensor]:
    """Orthogonalize ``updates`` with each matrix computed once by its owner rank, then broadcast.

    Equivalent to ``t.compute(updates, views)`` on one process (the polar output of a matrix does not depend on
    which other matrices share its batched call). DTensor updates are gathered to full tensors first and the
    returned updates are DTensors with the input's mesh and placements.
    """
    import torch.distributed as dist

    dtensor_meta: list[Any] = []
    full: list[Tensor] = []
    for u in updates:
        if _is_dtensor(u):
            dtensor_meta.append((u.device_mesh, u.placements))
            full.append(u.full_tensor())
        else:
            dtensor_meta.append(None)
            full.append(u)
    owners = assign_owners([u.numel() for u in full], ctx.world_size)
    mine = [i for i, o in enumerate(owners) if o == ctx.rank]
    out: list[Tensor | None] = [None] * len(full)
    for i, o in zip(mine, t.compute([full[i] for i in mine], [views[i] for i in mine])):
        out[i] = o
    by_kind: dict[tuple[torch.dtype, torch.device], list[int]] = defaultdict(list)
    for i, u in enumerate(full):
        by_kind[(u.dtype, u.device)].append(i)
    for (dt, dev), idx in by_kind.items():
        for r in range(ctx.world_size):
            ridx = [i for i in idx if owners[i] == r]
            if not ridx:
                continue
            sizes = [full[i].numel() for i in ridx]
            if r == ctx.rank:
                flat = torch.cat([out[i].reshape(-1) for i in ridx])  # type: ignore[union-attr]
            else:
                flat = torch.empty(sum(sizes), dtype=dt, device=dev)
            dist.broadcast(flat, src=ctx.global_rank(r), group=ctx.group)
            if r != ctx.rank:
                for i, piece in zip(ridx, flat.split(sizes)):
                    out[i] = piece.view(full[i].shape)
    result: list[Tensor] = []
    for i, o in enumerate(out):
        assert o is not None
        meta = dtensor_meta[i]
        if meta is None:
            result.append(o)
        else:
            from torch.distributed.tensor import distribute_tensor

            mesh, placements = meta
            # every rank holds the full result: take the local shard without communication
            result.append(distribute_tensor(o, mesh, placements, src_data_rank=None))
    return result
