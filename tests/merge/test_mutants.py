"""Mutants of the merge methods must FAIL the conformance checks (tests/merge/conformance.py).

Each mutant keeps the method's signature and breaks one defining step; a check that still passed on it would
not be testing the method's purpose. The unmodified methods pass the same checks in test_registry.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from orthokit.merge.dare import dare_linear
from orthokit.merge.dc_merge import dc_merge
from orthokit.merge.orthomerge import orthomerge, orthomerge_oft
from orthokit.merge.task_arithmetic import task_arithmetic
from orthokit.merge.ties import magnitude_trim

from . import conformance as C


def ta_lambda_twice(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    lambda_: float = 1.0,
    normalize: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Task arithmetic whose λ is applied twice."""
    return task_arithmetic(base, tensors, weights=weights, lambda_=lambda_ * lambda_, normalize=normalize)


def ta_without_base(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    lambda_: float = 1.0,
    normalize: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Task arithmetic that forgets to subtract the base: θ₀ + λ Σ w_t θ_t."""
    assert base is not None
    w = [1.0] * len(tensors) if weights is None else list(weights)
    delta = sum(wi * t for wi, t in zip(w, tensors))
    return base + lambda_ * (delta / sum(w) if normalize else delta)


def ties_without_election(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    lambda_: float = 1.0,
    normalize: bool = True,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TIES that trims but skips the sign election: a (weighted) mean over all surviving entries."""
    assert base is not None
    w = [1.0] * len(tensors) if weights is None else list(weights)
    dens = [density] * len(tensors) if isinstance(density, float) else list(density)
    trimmed = [magnitude_trim(t - base, d) for t, d in zip(tensors, dens)]
    num = sum(wi * t for wi, t in zip(w, trimmed))
    den = sum(wi * (t != 0).to(t.dtype) for wi, t in zip(w, trimmed))
    merged = num / torch.where(den == 0, torch.ones_like(den), den) if normalize else num
    return base + lambda_ * merged


def dare_without_rescale(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE that drops but forgets to rescale the survivors (E[δ̃] = ρ δ)."""
    return dare_linear(
        base,
        tensors,
        weights=weights,
        density=density,
        lambda_=lambda_,
        normalize=normalize,
        rescale=False,
        generator=generator,
    )


def dare_drop_rate_swapped(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    density: Sequence[float] | float = 1.0,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE that reads ``density`` as the drop rate p (keeps 1 − ρ)."""
    d = [1.0 - x for x in density] if not isinstance(density, float) else 1.0 - density
    return dare_linear(
        base,
        tensors,
        weights=weights,
        density=d,
        lambda_=lambda_,
        normalize=normalize,
        rescale=rescale,
        generator=generator,
    )


def dc_merge_smoothing_ignored(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """DC-Merge that never smooths the spectrum."""
    kw["smoothing"] = "none"
    return dc_merge(base, tensors, **kw)  # type: ignore[arg-type]


def do_merging_plain_sum(
    base: Tensor | None, tensors: Sequence[tuple[Tensor, Tensor]], **kw: object
) -> Tensor:
    """'DO-Merging' without decoupling or orthogonalization: W₀ + λ Σ w_t B_t A_t."""
    w = kw.get("weights") or [1.0] * len(tensors)
    lam = float(kw.get("lambda_", 1.0))  # type: ignore[arg-type]
    delta = lam * sum(wi * (B @ A) for wi, (A, B) in zip(w, tensors))  # type: ignore[union-attr]
    return delta if base is None else base + delta


def orthomerge_no_magnitude_correction(
    base: Tensor | None, tensors: Sequence[Tensor], **kw: object
) -> Tensor:
    """OrthoMerge with a plain Lie mean (the rotation angle shrinks, which the paper's correction prevents)."""
    kw["magnitude_correction"] = False
    return orthomerge(base, tensors, **kw)  # type: ignore[arg-type]


def oft_ignores_base(base: Tensor | None, tensors: Sequence[Tensor], **kw: object) -> Tensor:
    """orthomerge_oft that merges around the identity even when given a base rotation R₀."""
    return orthomerge_oft(None, tensors, **kw)  # type: ignore[arg-type]


MUTANTS: list[tuple[str, Callable[..., Tensor], Callable[..., None]]] = [
    ("task_arithmetic", ta_lambda_twice, C.check_task_arithmetic),
    ("ties", ties_without_election, C.check_ties),
    ("dare_linear", dare_without_rescale, lambda fn: C.check_dare_expectation("dare_linear", fn)),
    ("dare_linear", dare_drop_rate_swapped, lambda fn: C.check_dare_expectation("dare_linear", fn)),
    ("dc_merge", dc_merge_smoothing_ignored, C.check_dc_merge),
    ("do_merging", do_merging_plain_sum, C.check_do_merging),
    ("orthomerge", orthomerge_no_magnitude_correction, C.check_orthomerge),
    ("orthomerge_oft", oft_ignores_base, C.check_orthomerge_oft),
    ("task_arithmetic", ta_without_base, lambda fn: C.check_base_fixed_point("task_arithmetic", fn)),
    ("task_arithmetic", ta_without_base, lambda fn: C.check_one_model_exact("task_arithmetic", fn)),
]


@pytest.mark.parametrize(("name", "mutant", "check"), MUTANTS, ids=[m[1].__name__ for m in MUTANTS])
def test_mutant_fails_its_check(name: str, mutant: Callable[..., Tensor], check: Callable[..., None]) -> None:
    with pytest.raises(AssertionError):
        check(mutant)


def test_lambda_twice_slips_through_the_property_checks() -> None:
    """Why per-method closed forms are needed: at λ = 1 the mutant is still exact on one model."""
    C.check_one_model_exact("task_arithmetic", ta_lambda_twice)
    with pytest.raises(AssertionError, match="task_arithmetic: max error"):
        C.check_task_arithmetic(ta_lambda_twice)
