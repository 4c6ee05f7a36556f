"""Conformance checks of the MBAT binder family (registry ``BINDERS``); each raises ``AssertionError`` on failure.

The family's purpose: a binder maps a role to a ``d × d`` matrix, deterministically from ``(seed, role)``;
bind is that matrix; a binder registered ``orthogonal=True`` keeps norms exactly and its unbind is the exact
inverse (``Mᵀ``); and the matrix *mixes* like a random matrix of its family (Gallant's binding needs every
output coordinate to depend on many inputs — a signed permutation is orthogonal but only relabels coordinates).

The dense reference of every registered family is built **here, independently of the library** (its own
Sylvester Hadamard matrix, its own QR with the ``diag(R) > 0`` sign fix, its own Gaussian draw) from the seeding
rule each binder documents (``role_seed(seed, family, role)`` seeds a ``torch.Generator``): the library's
``matrix()`` and ``bind``/``unbind`` must agree with it. A binder of an unknown family fails until a reference
is added to :func:`reference_matrix`. Mutants in ``test_mutants.py`` must fail these checks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from orthokit.vsa.binding import Binder, Role, role_seed
from orthokit.vsa.gaussian import GaussianBinder
from orthokit.vsa.haar import HaarBinder
from orthokit.vsa.hadamard import HadamardBinder

D = 64
ROLES = ("key:name", "key:orders", "[]", 7)
#: dimension of the distributional (mixing) check
D_MIX = 256


def _x(n: int = 6, d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3.0


def _gen(b: Binder, family: str, role: Role) -> torch.Generator:
    return torch.Generator().manual_seed(role_seed(b.seed, family, role))


def _sylvester(d: int) -> Tensor:
    """Orthonormal Sylvester–Hadamard matrix built by Kronecker products (not ``orthokit.linalg``)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.kron(base, h)
    return h / math.sqrt(d)


def reference_signs(b: HadamardBinder, role: Role) -> Tensor:
    """``[k, d]`` ±1 signs of ``D_1 … D_k`` regenerated from ``(seed, role)`` (float64)."""
    bits = torch.randint(0, 2, (b.k, b.d), generator=_gen(b, "hadamard", role), dtype=torch.int8)
    return (2 * bits - 1).to(torch.float64)


def reference_matrix(b: Binder, role: Role) -> Tensor:
    """The float64 dense ``M_role`` of ``b``'s family, built independently of the binder's code paths."""
    if isinstance(b, HadamardBinder):
        h, s = _sylvester(b.d), reference_signs(b, role)
        m = torch.eye(b.d, dtype=torch.float64)
        for i in range(b.k):  # M = H D_k ⋯ H D_1
            m = h @ torch.diag(s[i]) @ m
        return m
    if isinstance(b, HaarBinder):
        a = torch.randn(b.d, b.d, generator=_gen(b, "haar", role), dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        return q * torch.sign(torch.diagonal(r))  # Mezzadri's sign fix: Q is then Haar-distributed
    if isinstance(b, GaussianBinder):
        a = torch.randn(b.d, b.d, generator=_gen(b, "gaussian", role), dtype=torch.float64)
        return a / math.sqrt(b.d)
    raise AssertionError(
        f"{b!r}: no independent reference matrix for this family; add one to reference_matrix"
    )


def reference_unbind(b: Binder, role: Role, y: Tensor) -> Tensor:
    """The family's documented inverse rule applied with the reference matrix (row vectors)."""
    m = reference_matrix(b, role)
    if isinstance(b, GaussianBinder) and b.unbind_rule == "inverse":
        return torch.linalg.solve(m, y.T).T
    return y @ m  # Mᵀ y for every row


def check_norm_preservation(b: Binder) -> None:
    """``‖bind(r, x)‖ = ‖x‖`` to 1e-6 (relative) in float64 for several roles, also after 10 nested binds."""
    x = _x(d=b.d)
    for r in ROLES:
        y = b.bind(r, x)
        assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-6, atol=0), (
            f"{b!r}: bind({r!r}) changes norms"
        )
    y = b.bind("[]", x, power=10)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-6, atol=0), f"{b!r}: 10 nested binds drift"


def check_exact_inverse(b: Binder) -> None:
    """``unbind(r, bind(r, x)) = x`` to 1e-10 in float64, and ``unbind`` is the transpose of the reference matrix."""
    x = _x(d=b.d)
    for r in ROLES:
        back = b.unbind(r, b.bind(r, x))
        err = float((back - x).abs().max() / x.abs().max())
        assert err < 1e-10, f"{b!r}: unbind∘bind({r!r}) is not the identity (rel. error {err:.2e})"
        m = reference_matrix(b, r)
        assert torch.allclose(b.unbind(r, x), x @ m, atol=1e-10), f"{b!r}: unbind({r!r}) is not Mᵀ"
    back = b.unbind("[]", b.bind("[]", x, power=5), power=5)
    assert float((back - x).abs().max()) < 1e-9, f"{b!r}: powers do not invert"


def check_dense_equivalence(b: Binder) -> None:
    """``matrix()``, the fast ``bind`` (batched over leading dims) and ``unbind`` all equal the independently
    built reference matrix of the family (float64, 1e-10)."""
    x = _x(d=b.d).reshape(2, 3, b.d)
    for r in ROLES:
        ref = reference_matrix(b, r)
        m = b.matrix(r)
        assert m.shape == (b.d, b.d), f"{b!r}: matrix({r!r}) has shape {tuple(m.shape)}"
        assert torch.allclose(m, ref, atol=1e-10), f"{b!r}: matrix({r!r}) differs from the reference matrix"
        assert torch.allclose(b.bind(r, x), x @ ref.T, atol=1e-10), (
            f"{b!r}: bind({r!r}) differs from the reference matrix"
        )
        want = reference_unbind(b, r, x.reshape(-1, b.d)).reshape(x.shape)
        assert torch.allclose(b.unbind(r, x), want, atol=1e-8), (
            f"{b!r}: unbind({r!r}) differs from the reference inverse rule"
        )


def check_factors(b: Binder) -> None:
    """Structured binders: the ``k`` Rademacher diagonals are distinct (independent draws — ``D_1 = D_2 = D_3``
    wastes the randomness the ``k = 3`` default relies on) and are exactly the seeded draws of ``(seed, role)``."""
    if not isinstance(b, HadamardBinder):
        return
    for r in ROLES:
        s = b.signs(r)
        for i in range(b.k):
            for j in range(i):
                assert not torch.equal(s[i], s[j]), (
                    f"{b!r}: D_{j + 1} and D_{i + 1} of {r!r} are identical (factors must be independent)"
                )
        assert torch.equal(s.to(torch.float64), reference_signs(b, r)), f"{b!r}: stored signs of {r!r} differ"


def check_mixing(b: Binder) -> None:
    """At ``d = 256`` the matrix mixes like a random rotation: entries spread (``d²·mean(m⁴) ≤ 4.5`` — Haar and
    Gaussian ≈ 3, a signed permutation = ``d``; ``max|m| ≤ 0.5`` — Haar ≈ 0.27) and no bias toward ``±I``
    (``|tr M| ≤ 5`` — for Haar ``tr M`` has mean 0 and variance 1; a QR without the ``diag(R) > 0`` sign fix
    gives ``tr M ≈ -10``)."""
    big = type(b)(D_MIX, seed=b.seed, **b._options())
    for r in ROLES:
        m = big.matrix(r)
        m4 = D_MIX * D_MIX * float((m**4).mean())
        mx, tr = float(m.abs().max()), float(m.trace())
        assert m4 <= 4.5 and mx <= 0.5, (
            f"{b!r}: matrix({r!r}) does not mix (d²·mean(m⁴) = {m4:.2f}, max|m| = {mx:.2f}; Haar ≈ 3, 0.27)"
        )
        assert abs(tr) <= 5.0, f"{b!r}: matrix({r!r}) is biased toward ±I (trace {tr:.2f}; Haar: N(0, 1))"


def check_determinism_and_roles(b: Binder) -> None:
    """Same ``(seed, role)`` → the same matrix in a fresh binder; other role or seed → a different one."""
    fresh = type(b)(b.d, seed=b.seed, **b._options())
    other_seed = type(b)(b.d, seed=b.seed + 1, **b._options())
    x = _x(d=b.d)
    for r in ROLES:
        assert torch.equal(fresh.bind(r, x), b.bind(r, x)), f"{b!r}: not deterministic for role {r!r}"
        assert not torch.allclose(other_seed.bind(r, x), b.bind(r, x)), f"{b!r}: seed ignored for role {r!r}"
    assert not torch.allclose(b.bind("key:a", x), b.bind("key:b", x)), f"{b!r}: roles share a matrix"


def check_serialization(b: Binder) -> None:
    """``from_state_dict(state_dict())`` rebuilds a binder with bit-identical bind and unbind; the state is JSON-able."""
    import json

    state = json.loads(json.dumps(b.state_dict()))
    c = Binder.from_state_dict(state)
    assert type(c) is type(b) and c.state_dict() == b.state_dict()
    x = _x(d=b.d)
    for r in ROLES:
        assert torch.equal(c.bind(r, x), b.bind(r, x)) and torch.equal(c.unbind(r, x), b.unbind(r, x))


def check_binder(b: Binder, orthogonal: bool, *, serialization: bool = True) -> None:
    """Every check that applies to a binder with the given ``orthogonal`` capability (``serialization=False``
    for classes that are not in ``BINDERS``, which ``from_state_dict`` cannot look up)."""
    check_factors(b)
    check_dense_equivalence(b)
    check_determinism_and_roles(b)
    check_mixing(b)
    if serialization:
        check_serialization(b)
    if orthogonal:
        check_norm_preservation(b)
        check_exact_inverse(b)
