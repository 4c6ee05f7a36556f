"""Mutants of model_stock, breadcrumbs(_ties), della(_linear) and sce must FAIL their closed-form checks.

Each mutant keeps the method's signature and breaks one defining step (tests/merge/conformance_mergekit_b.py);
a check that still passed on it would not be testing the method's purpose. The unmodified methods pass the same
checks in tests/merge/test_registry.py::test_closed_form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from orthokit.merge.breadcrumbs import breadcrumbs, breadcrumbs_ties
from orthokit.merge.della import magprune_probabilities
from orthokit.merge.model_stock import model_stock
from orthokit.merge.registry import per_model
from orthokit.merge.sce import sce, sce_select_mask
from orthokit.merge.task_arithmetic import generalized_task_arithmetic

from . import conformance_mergekit_b as B


def model_stock_t_one(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """Model Stock with t fixed to 1: the plain (weighted) average of the fine-tunes, the base ignored."""
    assert base is not None
    w = list(kw.get("weights") or [1.0] * len(tensors))  # type: ignore[call-overload]
    model_stock(base, tensors, **kw)  # same validation
    return sum(wi * t for wi, t in zip(w, tensors)) / sum(w)  # type: ignore[return-value]


def breadcrumbs_keeps_outliers(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """Breadcrumbs whose γ is ignored: a plain top-k by magnitude (TIES' trim), outliers kept."""
    kw["gamma"] = 0.0
    return breadcrumbs(base, tensors, **kw)  # type: ignore[arg-type]


def breadcrumbs_ties_without_election(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    gamma: Sequence[float] | float = 0.01,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """breadcrumbs_ties that skips the sign election (= breadcrumbs with a count-normalized mean)."""
    return breadcrumbs(
        base,
        tensors,
        weights=weights,
        density=density,
        gamma=gamma,
        lambda_=lambda_,
        normalize=normalize,
        rescale=rescale,
    )


def della_uniform_keep(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    epsilon: Sequence[float] | float = 0.15,
    lambda_: float = 1.0,
    normalize: bool = True,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DELLA without MagPrune's ranks: every entry kept with probability ρ (that is DARE)."""
    assert base is not None
    w = [1.0] * len(tensors) if weights is None else list(weights)
    dens = per_model(density, len(tensors), "density", 1.0)

    def drop(d: Tensor, i: int) -> Tensor:
        mask = torch.bernoulli(torch.full_like(d, dens[i]), generator=generator)
        out = d * mask
        if rescale and float(out.abs().sum()) > 0:
            out = out * (d.abs().sum() / out.abs().sum())
        return out

    return generalized_task_arithmetic(
        base, tensors, w, sparsify=drop, consensus=True, normalize=normalize, lambda_=lambda_
    )


def della_linear_reversed_ranks(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    epsilon: Sequence[float] | float = 0.15,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """della_linear with the ranks reversed: the smallest |δ| get the highest keep probability ρ + ε."""
    assert base is not None
    w = [1.0] * len(tensors) if weights is None else list(weights)
    dens = per_model(density, len(tensors), "density", 1.0)
    eps = per_model(epsilon, len(tensors), "epsilon", 0.15)

    def drop(d: Tensor, i: int) -> Tensor:
        p = 2 * dens[i] - magprune_probabilities(d, dens[i], eps[i]).reshape(d.shape)
        out = d * torch.bernoulli(p, generator=generator)
        if rescale and float(out.abs().sum()) > 0:
            out = out * (d.abs().sum() / out.abs().sum())
        return out

    return generalized_task_arithmetic(
        base, tensors, w, sparsify=drop, consensus=False, normalize=normalize, lambda_=lambda_
    )


def sce_uniform_weights(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    select_topk: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SCE that skips the Calculate step: η_t = 1/T (a TIES-style disjoint mean of the selected vectors)."""
    assert base is not None
    sce(base, tensors, weights=weights, select_topk=select_topk)  # same validation
    tv = torch.stack([t - base for t in tensors])
    if select_topk < 1:
        tv = tv * sce_select_mask(tv, select_topk, base.dtype)
    keep = tv.sign() == torch.where(tv.sum(0) >= 0, 1.0, -1.0).to(base.dtype)
    return base + (tv * keep).sum(0) / keep.sum(0).clamp(min=1)


MUTANTS: list[tuple[str, Callable[..., Tensor], Callable[..., None]]] = [
    ("model_stock", model_stock_t_one, B.check_model_stock),
    ("breadcrumbs", breadcrumbs_keeps_outliers, B.check_breadcrumbs),
    ("breadcrumbs_ties", breadcrumbs_ties_without_election, B.check_breadcrumbs_ties),
    ("della", della_uniform_keep, lambda fn: B.check_della("della", fn)),
    ("della_linear", della_linear_reversed_ranks, lambda fn: B.check_della("della_linear", fn)),
    ("sce", sce_uniform_weights, B.check_sce),
]


@pytest.mark.parametrize(("name", "mutant", "check"), MUTANTS, ids=[m[1].__name__ for m in MUTANTS])
def test_mutant_fails_its_check(name: str, mutant: Callable[..., Tensor], check: Callable[..., None]) -> None:
    with pytest.raises(AssertionError):
        check(mutant)


def test_unmutated_methods_pass() -> None:
    """The same checks pass on the real methods (so a failing mutant is the mutation's doing)."""
    B.check_model_stock(model_stock)
    B.check_breadcrumbs(breadcrumbs)
    B.check_breadcrumbs_ties(breadcrumbs_ties)
    B.check_sce(sce)
    # (della: its closed form runs in tests/merge/test_registry.py::test_closed_form[della])
