"""Mutant binders must FAIL the conformance checks (tests/vsa/conformance.py).

Each mutant keeps the binder interface and breaks one defining step while still *claiming* the orthogonal
capability; a suite that passed them would not be testing what ``orthogonal=True`` promises. The mutants are
registered into a temporary copy of the registry, never into ``BINDERS``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from orthokit._registry import Registry
from orthokit.linalg.hadamard import hadamard_transform
from orthokit.vsa.binding import Role, ensure_registered, role_seed
from orthokit.vsa.gaussian import GaussianBinder
from orthokit.vsa.haar import HaarBinder
from orthokit.vsa.hadamard import HadamardBinder
from orthokit.vsa.registry import BINDERS

from . import conformance as C


class UnbindOtherSeed(HaarBinder):
    """Haar binder whose unbind uses the matrix of a different seed (a classic serialization bug)."""

    name = "mut_other_seed"

    def _apply(self, role: Role, x: Tensor, transpose: bool) -> Tensor:
        if not transpose:
            return super()._apply(role, x, False)
        g = torch.Generator().manual_seed(role_seed(self.seed + 1, "haar", role))
        q, r = torch.linalg.qr(torch.randn(self.d, self.d, generator=g, dtype=torch.float64))
        return x @ (q * torch.sign(torch.diagonal(r))).to(x.dtype)


class SkipOneD(HadamardBinder):
    """(HD)^k binder whose unbind skips the first diagonal D_1."""

    name = "mut_skip_d"

    def _apply(self, role: Role, x: Tensor, transpose: bool) -> Tensor:
        if not transpose:
            return super()._apply(role, x, False)
        s = self._signs_of(role).to(x.dtype)
        for i in reversed(range(self.k)):
            x = hadamard_transform(x) * (s[i] if i > 0 else 1.0)
        return x


class ScaledHaar(HaarBinder):
    """Haar matrix times 1.01 (nearly orthogonal: norms grow 1 % per bind)."""

    name = "mut_scaled"

    def _apply(self, role: Role, x: Tensor, transpose: bool) -> Tensor:
        y = super()._apply(role, x, transpose)
        return y * (1.01 if not transpose else 1 / 1.01)

    def matrix(self, role: Role, *, dtype: torch.dtype = torch.float64) -> Tensor:
        return (
            super().matrix(role, dtype=dtype) * 1.01
        )  # consistent dense form: only the norm check can catch it


class RandomEachCall(HadamardBinder):
    """Signs drawn from the global RNG on every call (not a function of (seed, role))."""

    name = "mut_unseeded"

    def _signs_of(self, role: Role) -> Tensor:
        return (2 * torch.randint(0, 2, (self.k, self.d)) - 1).to(torch.int8)


class FastPathDisagrees(HadamardBinder):
    """bind uses k factors but matrix() reports k - 1 (fast path and dense matrix disagree)."""

    name = "mut_dense_mismatch"

    def matrix(self, role: Role, *, dtype: torch.dtype = torch.float64) -> Tensor:
        s = self._signs_of(role).to(dtype)
        x = torch.eye(self.d, dtype=dtype)
        for i in range(self.k - 1):
            x = hadamard_transform(x * s[i])
        return x.T.contiguous()


class SignedPermutation(HaarBinder):
    """A seeded random signed permutation instead of a Haar matrix: exactly orthogonal, deterministic, invertible —
    but binding only relabels coordinates (no mixing)."""

    name = "mut_permutation"

    def _generate(self, role: Role) -> Tensor:
        g = torch.Generator().manual_seed(role_seed(self.seed, "haar", role))
        p = torch.randperm(self.d, generator=g)
        signs = 2 * torch.randint(0, 2, (self.d, 1), generator=g) - 1
        return torch.eye(self.d, dtype=torch.float64)[p] * signs


class SameDiagonals(HadamardBinder):
    """(HD)^k binder with D_1 = D_2 = D_3 (one sign vector reused): orthogonal and consistent, fewer random bits."""

    name = "mut_same_d"

    def _signs_of(self, role: Role) -> Tensor:
        s = super()._signs_of(role)
        return s[:1].expand_as(s).contiguous()


class QRWithoutSignFix(HaarBinder):
    """Q of the seeded Gaussian's QR without the diag(R) > 0 fix: orthogonal, but not Haar (biased toward -I)."""

    name = "mut_no_sign_fix"

    def _generate(self, role: Role) -> Tensor:
        g = torch.Generator().manual_seed(role_seed(self.seed, "haar", role))
        return torch.linalg.qr(torch.randn(self.d, self.d, generator=g, dtype=torch.float64))[0]


MUTANTS: dict[str, Any] = {
    "mut_other_seed": UnbindOtherSeed,
    "mut_skip_d": SkipOneD,
    "mut_scaled": ScaledHaar,
    "mut_unseeded": RandomEachCall,
    "mut_dense_mismatch": FastPathDisagrees,
    "mut_permutation": SignedPermutation,
    "mut_same_d": SameDiagonals,
    "mut_no_sign_fix": QRWithoutSignFix,
}


#: the check each mutant must trip (message fragment)
EXPECTED = {
    "mut_other_seed": "unbind.* differs from the reference inverse rule",
    "mut_skip_d": "unbind.* differs from the reference inverse rule",
    "mut_scaled": "matrix.* differs from the reference matrix",
    "mut_unseeded": "stored signs .* differ|differs from the reference matrix",
    "mut_dense_mismatch": "matrix.* differs from the reference matrix",
    "mut_permutation": "differs from the reference matrix",
    "mut_same_d": "are identical",
    "mut_no_sign_fix": "differs from the reference matrix",
}

#: redundancy: each mutant is also rejected by the check aimed at its defect, on its own
#: (mutant, check, message fragment, why)
TARGETED = [
    ("mut_other_seed", C.check_exact_inverse, "not the identity", "unbind is not the inverse of bind"),
    ("mut_skip_d", C.check_exact_inverse, "not the identity", "unbind is not the inverse of bind"),
    ("mut_scaled", C.check_norm_preservation, "changes norms", "norms grow 1 % per bind"),
    (
        "mut_unseeded",
        C.check_determinism_and_roles,
        "not deterministic",
        "matrix not a function of (seed, role)",
    ),
    (
        "mut_permutation",
        C.check_mixing,
        "does not mix",
        "d²·mean(m⁴) = d = 256 and max|m| = 1 (Haar: 3 and 0.27): binding only relabels coordinates",
    ),
    (
        "mut_same_d",
        C.check_factors,
        "are identical",
        "D_1 = D_2 = D_3: the k = 3 product reuses one sign vector",
    ),
    ("mut_no_sign_fix", C.check_mixing, "biased toward", "tr M ≈ -10 at d = 256 (Haar: N(0, 1))"),
]


def _registry_with_mutants() -> Registry[Any]:
    ensure_registered()
    reg: Registry[Any] = Registry("binding matrix family (test copy)")
    for n in BINDERS.names():
        reg.add(n, BINDERS.get(n), **dict(BINDERS.capabilities(n)))
    for n, cls in MUTANTS.items():
        reg.add(n, cls, orthogonal=True, cost="d^2")
    return reg


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_fails_the_suite(name: str) -> None:
    reg = _registry_with_mutants()
    b = reg.get(name)(C.D, seed=3)
    with pytest.raises(AssertionError, match=EXPECTED[name]):
        C.check_binder(b, reg.capabilities(name)["orthogonal"], serialization=False)


@pytest.mark.parametrize(("name", "check", "match", "why"), TARGETED, ids=[t[0] for t in TARGETED])
def test_targeted_check_rejects_mutant(name: str, check: Any, match: str, why: str) -> None:
    with pytest.raises(AssertionError, match=match):
        check(MUTANTS[name](C.D, seed=3))


def test_unmodified_binders_pass_in_the_same_copy() -> None:
    reg = _registry_with_mutants()
    for n in BINDERS.names():
        C.check_binder(reg.get(n)(C.D, seed=3), reg.capabilities(n)["orthogonal"], serialization=False)


def test_gaussian_claiming_orthogonal_is_rejected() -> None:
    with pytest.raises(AssertionError):
        C.check_binder(GaussianBinder(C.D, seed=0), orthogonal=True)
