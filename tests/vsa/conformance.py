"""Conformance checks of the MBAT binder family (registry ``BINDERS``); each raises ``AssertionError`` on failure.

The family's purpose: a binder maps a role to a ``d × d`` matrix, deterministically from ``(seed, role)``;
bind is that matrix (the fast path equals the dense matrix); a binder registered ``orthogonal=True`` keeps
norms exactly and its unbind is the exact inverse (``Mᵀ``). Mutants in ``test_mutants.py`` must fail these.
"""

from __future__ import annotations

import torch

from orthokit.vsa.binding import Binder

D = 64
ROLES = ("key:name", "key:orders", "[]", 7)


def _x(n: int = 6, d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3.0


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
    """``unbind(r, bind(r, x)) = x`` to 1e-10 in float64, and ``unbind`` is the transpose of the dense matrix."""
    x = _x(d=b.d)
    for r in ROLES:
        back = b.unbind(r, b.bind(r, x))
        err = float((back - x).abs().max() / x.abs().max())
        assert err < 1e-10, f"{b!r}: unbind∘bind({r!r}) is not the identity (rel. error {err:.2e})"
        m = b.matrix(r)
        assert torch.allclose(b.unbind(r, x), x @ m, atol=1e-10), f"{b!r}: unbind({r!r}) is not Mᵀ"
    back = b.unbind("[]", b.bind("[]", x, power=5), power=5)
    assert float((back - x).abs().max()) < 1e-9, f"{b!r}: powers do not invert"


def check_dense_equivalence(b: Binder) -> None:
    """The binder's fast ``bind`` equals ``x @ M.T`` with its dense matrix (float64), batched over leading dims."""
    x = _x(d=b.d).reshape(2, 3, b.d)
    for r in ROLES:
        m = b.matrix(r)
        assert m.shape == (b.d, b.d)
        assert torch.allclose(b.bind(r, x), x @ m.T, atol=1e-10), (
            f"{b!r}: bind({r!r}) differs from its matrix"
        )


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
    check_dense_equivalence(b)
    check_determinism_and_roles(b)
    if serialization:
        check_serialization(b)
    if orthogonal:
        check_norm_preservation(b)
        check_exact_inverse(b)
