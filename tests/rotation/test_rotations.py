"""Conformance suite over every registered rotation (``ROTATIONS``), with mutants that must fail it.

The checks are plain functions raising ``AssertionError``: the parametrized tests run them on every registry
entry and size, and the mutant tests show that each check rejects a broken rotation (a zero-padded-and-truncated
Hadamard that is not orthogonal; signs drawn from the global RNG, so the "same seed" gives another matrix).
Sizes: powers of two, Paley orders 12 / 20 / 44 / 768, and 172 (no Hadamard construction: block-diagonal fallback).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from orthokit._registry import Registry
from orthokit.linalg import hadamard_matrix
from orthokit.rotation.base import DenseRotation, IdentityRotation, Rotation, check_orthogonal
from orthokit.rotation.haar import HaarRotation, haar_matrix
from orthokit.rotation.hadamard import HadamardRotation, block_orders, is_hadamard_order
from orthokit.rotation.registry import ROTATIONS, make_rotation
from orthokit.rotation.two_block import TwoBlockHadamard

SIZES = [1, 2, 16, 64, 12, 20, 44, 768, 172]
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Thousands of tiny ops: one intra-op thread avoids thread hand-off costs on a loaded 2-core host."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------------------
# the conformance checks (each raises AssertionError naming what failed)
# ------------------------------------------------------------------------------------------------------------------
def check_orthogonal_fp64(rot: Rotation, tol: float = 1e-6) -> None:
    q = rot.matrix(F64)
    assert q.shape == (rot.n, rot.n), f"{rot!r}: matrix shape {tuple(q.shape)}"
    err = float((q.T @ q - torch.eye(rot.n, dtype=F64)).abs().max())
    assert err <= tol, f"{rot!r}: not orthogonal, max|QᵀQ - I| = {err:.3g}"
    assert abs(rot.orthogonality_error() - err) <= 1e-15, f"{rot!r}: orthogonality_error() disagrees"


def check_deterministic(registry: Registry[Any], name: str, n: int) -> None:
    a = registry.get(name)(n, seed=7).matrix(F64)
    b = registry.get(name)(n, seed=7).matrix(F64)
    assert torch.equal(a, b), f"{name}(n={n}): the same seed gave different matrices"
    if registry.capabilities(name).get("randomized", True) and n > 1:
        # small n has few distinct matrices (n = 2: four sign patterns), so ask for one difference among 5 seeds
        others = [registry.get(name)(n, seed=s).matrix(F64) for s in range(8, 13 if n < 8 else 9)]
        assert any(not torch.equal(a, c) for c in others), (
            f"{name}(n={n}): different seeds gave the same matrix"
        )


def check_inverse(rot: Rotation, tol: float = 1e-12) -> None:
    x = torch.randn(5, rot.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = rot.apply(x)
    for label, back in (("apply_T", rot.apply_T(y)), ("inverse().apply", rot.inverse().apply(y))):
        err = float((back - x).abs().max())
        assert err <= tol, f"{rot!r}: {label} does not invert apply (max error {err:.3g})"
    assert torch.allclose(rot.inverse().matrix(), rot.matrix().T, rtol=0, atol=1e-15), (
        f"{rot!r}: inverse != Qᵀ"
    )


def check_apply_matches_matrix(rot: Rotation, tol: float = 1e-12) -> None:
    x = torch.randn(2, 3, rot.n, dtype=F64, generator=torch.Generator().manual_seed(2))
    q = rot.matrix(F64)
    assert torch.allclose(rot.apply(x), x @ q, rtol=0, atol=tol), f"{rot!r}: apply(x) != x @ matrix()"
    assert torch.allclose(rot.apply_T(x), x @ q.T, rtol=0, atol=tol), f"{rot!r}: apply_T(x) != x @ matrix().T"


def check_state_roundtrip(rot: Rotation) -> None:
    d = rot.state_dict()
    for k, v in d.items():
        assert isinstance(k, str) and isinstance(v, (Tensor, int, str)), (
            f"{rot!r}: state field {k!r} is {type(v)}"
        )
        assert not isinstance(v, torch.Generator), f"{rot!r}: stores generator state"
    back = Rotation.from_state_dict(d)
    assert type(back) is type(rot) and back.n == rot.n and back.seed == rot.seed, (
        f"{rot!r}: round trip changed it"
    )
    assert torch.equal(back.matrix(), rot.matrix()), f"{rot!r}: round trip changed the matrix"
    inv = Rotation.from_state_dict(rot.inverse().state_dict())
    assert torch.equal(inv.matrix(), rot.matrix().T), f"{rot!r}: inverse round trip"


def conformance(registry: Registry[Any], name: str, n: int) -> None:
    """All checks for one registry entry and size."""
    rot = registry.get(name)(n, seed=3)
    check_orthogonal_fp64(rot)
    check_deterministic(registry, name, n)
    check_inverse(rot)
    check_apply_matches_matrix(rot)
    check_state_roundtrip(rot)


# ------------------------------------------------------------------------------------------------------------------
# the suite over the real registry
# ------------------------------------------------------------------------------------------------------------------
def test_registry_lists_the_families() -> None:
    assert {"identity", "hadamard", "haar", "two_block_hadamard"} <= set(ROTATIONS.names())
    for name in ROTATIONS.names():
        caps = ROTATIONS.capabilities(name)
        assert caps["cost"] in ("n", "n log n", "n^2")
        assert caps["haar_marginals"] in ("exact", "per-coordinate", "none")
        assert isinstance(caps["structured"], bool) and isinstance(caps["any_n"], bool)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ROTATIONS.names())
def test_conformance(name: str, n: int) -> None:
    if not ROTATIONS.capabilities(name)["any_n"] and not is_hadamard_order(n):
        with pytest.raises(ValueError, match="Hadamard order"):
            ROTATIONS.get(name)(n, seed=0)
        return
    conformance(ROTATIONS, name, n)


@pytest.mark.parametrize("name", ROTATIONS.names())
def test_apply_dtypes_leading_dims_and_grad(name: str) -> None:
    rot = make_rotation(name, 12, seed=5)
    q = rot.matrix(F64)
    x = torch.randn(2, 3, 12)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        y = rot.apply(x.to(dt))
        assert y.dtype == dt and y.shape == x.shape
        ref = x.to(dt).double() @ q
        assert torch.allclose(y.double(), ref, atol=2e-2 if dt != torch.float32 else 1e-5)
    xr = x.double().requires_grad_(True)
    g = torch.randn(2, 3, 12, dtype=F64)
    (rot.apply(xr) * g).sum().backward()
    assert xr.grad is not None and torch.allclose(xr.grad, g @ q.T, atol=1e-12)
    with pytest.raises(ValueError, match="last dim 12"):
        rot.apply(torch.randn(3, 13))
    with pytest.raises(ValueError, match="real floating"):
        rot.apply(torch.ones(3, 12, dtype=torch.int64))


def test_hadamard_is_diag_signs_times_paley_matrix() -> None:
    r = HadamardRotation(12, seed=0)
    s = r.signs.to(F64)
    expected = torch.diag(s) @ hadamard_matrix(12, dtype=F64)
    assert torch.allclose(r.matrix(), expected, rtol=0, atol=1e-15)
    g = torch.Generator().manual_seed(0)  # the documented sign draw: bits from Generator().manual_seed(seed)
    assert torch.equal(
        r.signs, (2 * torch.randint(0, 2, (12,), generator=g, dtype=torch.int8) - 1).to(torch.int8)
    )


def test_block_diagonal_fallback_never_pads() -> None:
    assert not is_hadamard_order(172)
    assert block_orders(172) == (88, 84) and all(is_hadamard_order(b) for b in block_orders(172))
    r = HadamardRotation(172, seed=1)
    q = r.matrix()
    assert torch.count_nonzero(q[:88, 88:]) == 0 and torch.count_nonzero(q[88:, :88]) == 0
    assert torch.allclose(q[:88, :88].abs(), torch.full((88, 88), 88**-0.5, dtype=F64))
    assert torch.allclose(q[88:, 88:].abs(), torch.full((84, 84), 84**-0.5, dtype=F64))
    # explicit blocks (the QuaRot-style 128 ⊕ 44) are honoured and recorded in the state
    r2 = HadamardRotation(172, seed=1, blocks=(128, 44))
    assert r2.state_dict()["blocks"].tolist() == [128, 44]
    check_orthogonal_fp64(r2)
    for n in (5, 6, 10, 92, 116, 1000):  # odd, 2 mod 4, ...: always a valid partition
        bs = block_orders(n)
        assert sum(bs) == n and all(is_hadamard_order(b) for b in bs) and list(bs) == sorted(bs, reverse=True)


def test_two_block_matches_paper_formula_and_blocks_option() -> None:
    n = 20  # a Paley order: H not symmetric, so the transpose bookkeeping matters
    r = TwoBlockHadamard(n, seed=4)
    h = hadamard_matrix(n, dtype=F64) * math.sqrt(n)  # unnormalized ±1
    d1, d2 = torch.diag(r.signs[0].to(F64)), torch.diag(r.signs[1].to(F64))
    u = torch.randn(n, dtype=F64)
    assert torch.allclose(r.apply(u), (h @ d1 @ h @ d2 @ u) / n, atol=1e-13)
    r3 = TwoBlockHadamard(16, seed=4, blocks=3)
    h16 = hadamard_matrix(16, dtype=F64)
    m = h16 @ torch.diag(r3.signs[0].double()) @ h16 @ torch.diag(r3.signs[1].double())
    m = m @ h16 @ torch.diag(r3.signs[2].double())
    assert torch.allclose(r3.matrix(), m.T, atol=1e-13)
    one = TwoBlockHadamard(16, seed=4, blocks=1)
    assert torch.allclose(one.matrix(), torch.diag(one.signs[0].double()) @ h16, atol=1e-15)
    with pytest.raises(ValueError, match="blocks"):
        TwoBlockHadamard(16, blocks=0)


def test_haar_is_sign_fixed_qr_of_seeded_gaussian() -> None:
    g = torch.Generator().manual_seed(11)
    a = torch.randn(6, 6, generator=g, dtype=F64)
    q = HaarRotation(6, seed=11).matrix()
    r = q.T @ a  # A = QR with R upper triangular and a positive diagonal
    assert torch.allclose(torch.tril(r, -1), torch.zeros(6, 6, dtype=F64), atol=1e-12)
    assert bool((torch.diagonal(r) > 0).all())


# ------------------------------------------------------------------------------------------------------------------
# make_rotation
# ------------------------------------------------------------------------------------------------------------------
def test_make_rotation_specs() -> None:
    q = haar_matrix(8, 0)
    r = make_rotation(q, 8)
    assert isinstance(r, DenseRotation) and torch.equal(r.matrix(), q)
    check_state_roundtrip(r)
    # float32 input: accepted at 1e-4, projected to the nearest orthogonal matrix (exact inverse in fp64)
    q32 = (q + 2e-6 * torch.randn(8, 8, dtype=F64)).float()
    r32 = make_rotation(q32, 8)
    check_orthogonal_fp64(r32, 1e-13)
    assert float((r32.matrix() - q32.double()).abs().max()) < 1e-4
    rf = make_rotation(lambda n, seed: haar_matrix(n, seed + 100), 8, seed=2)
    assert torch.equal(rf.matrix(), haar_matrix(8, 102))
    h = HadamardRotation(8, seed=0)
    assert make_rotation(h, 8) is h
    assert make_rotation("none", 8).name == "identity" and make_rotation("random", 8).name == "haar"


@pytest.mark.parametrize(
    ("spec", "n", "err", "match"),
    [
        ("hadamardd", 8, ValueError, "Did you mean 'hadamard'"),
        (torch.eye(8), 4, ValueError, r"shape \(4, 4\)"),
        (2.0 * torch.eye(4), 4, ValueError, "not orthogonal"),
        (torch.eye(4).double() + 1e-5, 4, ValueError, "not orthogonal"),  # fp64: 1e-6 tolerance
        (torch.full((4, 4), float("nan")), 4, ValueError, "non-finite"),
        (lambda n, seed: "nope", 4, TypeError, "must return a torch.Tensor"),
        (lambda n, seed: torch.eye(n + 1), 4, ValueError, r"expected \(4, 4\)"),
        (HadamardRotation(8), 4, ValueError, "size 8, expected n=4"),
        (3, 4, TypeError, "rotation spec"),
        ("hadamard", 0, ValueError, "n must be >= 1"),
        ("hadamard", 4.0, TypeError, "n must be an int"),
    ],
)
def test_make_rotation_rejects(spec: Any, n: Any, err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        make_rotation(spec, n)


def test_make_rotation_bad_seed() -> None:
    with pytest.raises(TypeError, match="seed"):
        make_rotation("haar", 4, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        make_rotation("haar", 4, seed=-1)


# ------------------------------------------------------------------------------------------------------------------
# hostile state dicts
# ------------------------------------------------------------------------------------------------------------------
def _had_state() -> dict[str, Any]:
    return HadamardRotation(12, seed=0).state_dict()


@pytest.mark.parametrize(
    ("mutate", "err", "match"),
    [
        (lambda d: d.update(name="nope"), ValueError, "unknown name 'nope'"),
        (lambda d: d.pop("signs"), ValueError, "needs 'signs'"),
        (lambda d: d.update(signs=torch.ones(11, dtype=torch.int8)), ValueError, r"shape \(12,\)"),
        (lambda d: d.update(signs=torch.zeros(12, dtype=torch.int8)), ValueError, "only ±1"),
        (lambda d: d.update(signs=torch.ones(12, dtype=torch.bool)), ValueError, "±1 values"),
        (lambda d: d.update(signs=[1] * 12), TypeError, "must be a torch.Tensor"),
        (
            lambda d: d.update(blocks=torch.tensor([6, 6])),
            ValueError,
            "6, which is not a supported Hadamard order",
        ),
        (lambda d: d.update(blocks=torch.tensor([8, 8])), ValueError, "sum to 16"),
        (lambda d: d.update(blocks=torch.tensor([12.0])), ValueError, "integer tensor"),
        (lambda d: d.update(n=-3), ValueError, "must be >= 1"),
        (lambda d: d.update(n="12"), TypeError, "must be an int"),
        (lambda d: d.update(transposed=2), ValueError, "'transposed' must be 0 or 1"),
        (lambda d: d.update(seed=-5), ValueError, "seed"),
    ],
)
def test_from_state_dict_rejects_hostile_input(mutate: Any, err: type[Exception], match: str) -> None:
    d = _had_state()
    mutate(d)
    with pytest.raises(err, match=match):
        Rotation.from_state_dict(d)


def test_from_state_dict_other_families() -> None:
    with pytest.raises(TypeError, match="must be a dict"):
        Rotation.from_state_dict([("name", "haar")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is for 'hadamard', not 'haar'"):
        HaarRotation.from_state_dict(_had_state())
    d = HaarRotation(10, seed=3).state_dict()
    d["fingerprint"] = d["fingerprint"] + 1e-9
    with pytest.raises(ValueError, match="does not match the matrix regenerated"):
        Rotation.from_state_dict(d)
    d = HaarRotation(10, seed=3).state_dict()
    d.pop("seed")
    with pytest.raises(ValueError, match="needs an int 'seed'"):
        Rotation.from_state_dict(d)
    d = TwoBlockHadamard(16, seed=1).state_dict()
    d["signs"] = d["signs"][:1]
    with pytest.raises(ValueError, match=r"shape \(2, 16\)"):
        Rotation.from_state_dict(d)
    d = TwoBlockHadamard(16, seed=1).state_dict()
    d["blocks"] = True
    with pytest.raises(ValueError, match="'blocks' must be an int"):
        Rotation.from_state_dict(d)
    d = DenseRotation(torch.eye(4)).state_dict()
    d["matrix"] = torch.ones(4, 4)
    with pytest.raises(ValueError, match="not orthogonal"):
        Rotation.from_state_dict(d)
    assert isinstance(Rotation.from_state_dict(IdentityRotation(3).state_dict()), IdentityRotation)


def test_check_orthogonal_messages() -> None:
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        check_orthogonal([[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="real floating"):
        check_orthogonal(torch.eye(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="square"):
        check_orthogonal(torch.ones(2, 3))


# ------------------------------------------------------------------------------------------------------------------
# mutants: each must be rejected by the suite's checks
# ------------------------------------------------------------------------------------------------------------------
class PaddedHadamard(Rotation):
    """MUTANT: zero-pad n=12 to 16, apply diag(s)·H_16, truncate — the fast-hadamard-transform behaviour."""

    def __init__(self, n: int, *, seed: int | None = 0) -> None:
        super().__init__(n, seed=seed)
        m = 1 << (n - 1).bit_length()
        self._full = HadamardRotation(m, seed=seed)

    def _dense64(self) -> Tensor:
        return self._full.matrix()[: self.n, : self.n]

    def _state(self) -> dict[str, Any]:
        return {}


class GlobalRngHadamard(Rotation):
    """MUTANT: signs from the global torch RNG, ignoring the seed (not reproducible)."""

    def __init__(self, n: int, *, seed: int | None = 0, signs: Tensor | None = None) -> None:
        super().__init__(n, seed=seed)
        self.signs = signs if signs is not None else (2 * torch.randint(0, 2, (n,)) - 1).to(torch.int8)

    def _dense64(self) -> Tensor:
        return HadamardRotation(self.n, signs=self.signs, seed=None).matrix()


# names set after class creation, so the mutants never enter Rotation.from_state_dict's lookup table
PaddedHadamard.name = "mutant_padded"  # type: ignore[misc]
GlobalRngHadamard.name = "mutant_global_rng"  # type: ignore[misc]
MUTANTS: Registry[Any] = Registry("mutant rotation")
MUTANTS.add("mutant_padded", PaddedHadamard, randomized=True)
MUTANTS.add("mutant_global_rng", GlobalRngHadamard, randomized=True)


def test_mutant_padded_is_rejected() -> None:
    rot = MUTANTS.get("mutant_padded")(12, seed=0)
    with pytest.raises(AssertionError, match="not orthogonal"):
        check_orthogonal_fp64(rot)
    with pytest.raises(AssertionError, match="does not invert"):
        check_inverse(rot)
    with pytest.raises(AssertionError):
        conformance(MUTANTS, "mutant_padded", 12)
    with pytest.raises(ValueError, match="not orthogonal"):
        make_rotation(rot.matrix(), 12)  # make_rotation's validation rejects it too


def test_mutant_global_rng_is_rejected() -> None:
    rot = MUTANTS.get("mutant_global_rng")(16, seed=0)
    check_orthogonal_fp64(rot)  # it is orthogonal: only determinism catches it
    check_inverse(rot)
    with pytest.raises(AssertionError, match="same seed gave different matrices"):
        check_deterministic(MUTANTS, "mutant_global_rng", 16)
    with pytest.raises(AssertionError):
        conformance(MUTANTS, "mutant_global_rng", 16)


# ------------------------------------------------------------------------------------------------------------------
# distribution: coordinate marginals of two-block HD·HD vs Haar (Zilca & Mendelson, arXiv 2604.23418)
# ------------------------------------------------------------------------------------------------------------------
KS_N, KS_SEEDS = 128, 400


@pytest.fixture(scope="module")
def marginal_samples() -> dict[str, Tensor]:
    """``u @ Q`` for two inputs (``e_1``, a fixed dense unit Gaussian) over 400 seeds of each family, n = 128."""
    n = KS_N
    e1 = torch.zeros(n, dtype=F64)
    e1[0] = 1
    g = torch.randn(n, dtype=F64, generator=torch.Generator().manual_seed(123))
    u = torch.stack([e1, g / g.norm()])
    out = {}
    for key, cls, off in (("two_block", TwoBlockHadamard, 0), ("one_block", HadamardRotation, 0)):
        out[key] = torch.stack([cls(n, seed=s + off).apply(u) for s in range(KS_SEEDS)])
    out["haar"] = torch.stack([HaarRotation(n, seed=10**6 + s).apply(u) for s in range(KS_SEEDS)])
    return out


# Threshold: scipy's two-sample KS p-value > 1e-3 (400 vs 400 samples: the statistic D stays below ≈ 0.138). The
# test resolves Kolmogorov distances ≳ 0.1 only: two-block's marginal for u = e_1 is a scaled binomial whose true
# distance to the Haar marginal is ≈ half an atom, √(1/(2πn)) ≈ 0.035 at n = 128 — the paper's positive result is
# about this distance vanishing (O(d^{-1/5})), not about it being 0 at finite d; with thousands of seeds the
# lattice becomes detectable.
@pytest.mark.parametrize("inp", [0, 1], ids=["e1", "dense"])
@pytest.mark.parametrize("j", [0, 63, 127])
def test_two_block_coordinate_marginals_match_haar(
    marginal_samples: dict[str, Tensor], inp: int, j: int
) -> None:
    from scipy.stats import ks_2samp

    res = ks_2samp(
        marginal_samples["two_block"][:, inp, j].numpy(), marginal_samples["haar"][:, inp, j].numpy()
    )
    assert res.pvalue > 1e-3 and res.statistic < 0.138, (res.statistic, res.pvalue)


@pytest.mark.parametrize("j", [0, 63, 127])
def test_one_block_hadamard_fails_marginal_test_on_extremal_input(
    marginal_samples: dict[str, Tensor], j: int
) -> None:
    """Documented negative: one randomized Hadamard maps e_1 to entries ±1/√n, a two-point law, far from Haar."""
    from scipy.stats import ks_2samp

    ob = marginal_samples["one_block"][:, 0, j]
    assert torch.allclose(ob.abs(), torch.full_like(ob, KS_N**-0.5))
    res = ks_2samp(ob.numpy(), marginal_samples["haar"][:, 0, j].numpy())
    assert res.pvalue < 1e-6 and res.statistic > 0.25, (res.statistic, res.pvalue)


def test_two_block_joint_law_is_not_haar(marginal_samples: dict[str, Tensor]) -> None:
    """The paper's negative result, made concrete: T(e_1)·Ĥ has all entries ±1/√n for EVERY seed (it is
    Ĥ·(random signs)/√n, undone by one more Ĥ), while a Haar image of e_1 is a uniform point on the sphere whose
    largest rotated coordinate is ≈ √(2 ln 2n)/√n. So the joint law differs although every marginal is close."""
    h = hadamard_matrix(KS_N, dtype=F64)
    stat = {k: (v[:, 0, :] @ h).abs().amax(dim=-1) * math.sqrt(KS_N) for k, v in marginal_samples.items()}
    assert torch.allclose(stat["two_block"], torch.ones(KS_SEEDS, dtype=F64), atol=1e-12)
    assert float(stat["haar"].min()) > 1.5
    three = torch.stack(
        [TwoBlockHadamard(KS_N, seed=s, blocks=3).apply(torch.eye(KS_N, dtype=F64)[0]) for s in range(50)]
    )
    assert float(((three @ h).abs().amax(dim=-1) * math.sqrt(KS_N)).min()) > 1.5  # a third block breaks it


def test_any_module_imported_first_gives_the_full_registry() -> None:
    """The family modules import the registry and the registry loads them lazily: no import cycle in any order.

    One fresh interpreter; between orders every ``orthokit.rotation`` module is dropped from ``sys.modules``.
    """
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        "for first in ['hadamard', 'two_block', 'haar', 'metrics', 'base', 'registry']:\n"
        "    for k in [k for k in sys.modules if k.startswith('orthokit.rotation')]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module('orthokit.rotation.' + first)\n"
        "    reg = importlib.import_module('orthokit.rotation.registry')\n"
        "    print(first, ','.join(reg.ROTATIONS.names()), reg.make_rotation('two_block', 8).name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 6
    for line in lines:
        assert line.split()[1:] == ["haar,hadamard,identity,two_block_hadamard", "two_block_hadamard"], line


# ------------------------------------------------------------------------------------------------------------------
# review rA fixes: large Paley cores, the core cap, the construction record, the NaN policy
# ------------------------------------------------------------------------------------------------------------------
def test_llama2_7b_intermediate_11008_is_one_fast_hadamard_block() -> None:
    """11008 = 344·32 (Paley I over GF(343)): was the prime core 5504 (15 s to build, 7.5 s per 16 rows)."""
    import time

    from orthokit.linalg import hadamard_construction
    from orthokit.rotation.hadamard import is_fast_order

    t0 = time.perf_counter()
    r = make_rotation("hadamard", 11008, seed=3)
    x = torch.randn(16, 11008)
    y = r.apply(x)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = r.apply(x)
    apply = time.perf_counter() - t0
    assert build < 2.0 and apply < 0.2, (build, apply)
    assert r.blocks == (11008,) and is_fast_order(11008)
    assert r.state_dict()["constructions"] == hadamard_construction(11008) == "paley1(q=343) ⊗ sylvester(32)"
    assert torch.allclose(r.apply_T(y), x, atol=1e-4) and torch.allclose(
        y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5
    )
    # the same construction at a size whose dense reference is cheap: 1376 = 344·4
    r2 = HadamardRotation(1376, seed=3)
    x2 = torch.randn(5, 1376, dtype=F64)
    assert torch.allclose(r2.apply(x2), x2 @ r2.matrix(), atol=1e-12)


def test_cores_above_the_cap_fall_back_to_blocks() -> None:
    from orthokit.linalg.hadamard import _plan
    from orthokit.rotation.hadamard import MAX_CORE, is_fast_order

    assert is_hadamard_order(29568) and _plan(29568)[2] == 924 > MAX_CORE  # Qwen2-72B intermediate
    assert not is_fast_order(29568)
    bs = block_orders(29568)
    assert len(bs) == 2 and sum(bs) == 29568 and all(_plan(b)[2] <= MAX_CORE for b in bs), bs
    r = HadamardRotation(29568, seed=0)
    assert r.blocks == bs
    x = torch.randn(2, 29568, dtype=F64)
    assert torch.allclose(r.apply_T(r.apply(x)), x, atol=1e-10)
    # explicit big-core blocks stay accepted (states saved with them load)
    assert HadamardRotation(1460, seed=0, blocks=(1460,)).blocks == (1460,)


def test_state_records_constructions_and_refuses_another() -> None:
    r = HadamardRotation(172, seed=2)
    d = r.state_dict()
    assert d["constructions"] == "paley1(q=43) ⊗ sylvester(2) ⊕ paley1(q=83)"
    assert torch.equal(Rotation.from_state_dict(d).matrix(), r.matrix())
    old = {k: v for k, v in d.items() if k != "constructions"}  # a state from before the field existed
    assert torch.equal(Rotation.from_state_dict(old).matrix(), r.matrix())
    bad = dict(d, constructions="paley1(q=87) ⊕ paley1(q=83)")
    with pytest.raises(ValueError, match="constructions"):
        Rotation.from_state_dict(bad)


def _legacy_state(n: int, blocks: tuple[int, ...], seed: int = 3) -> dict[str, Any]:
    """A Hadamard state as written before commit 8b2684d: same fields, no 'constructions'."""
    from orthokit.rotation.hadamard import rademacher_signs

    return {
        "name": "hadamard",
        "n": n,
        "transposed": 0,
        "seed": seed,
        "signs": rademacher_signs((n,), seed),
        "blocks": torch.tensor(blocks, dtype=torch.int64),
    }


@pytest.mark.parametrize(
    ("n", "old"),
    [(104, "paley1(q=103)"), (200, "paley1(q=199)"), (11008, "paley1(q=5503) ⊗ sylvester(2)")],
)
def test_legacy_state_whose_matrix_changed_is_refused(n: int, old: str) -> None:
    """Pre-prime-power states (no 'constructions') of orders whose core changed used to load silently with
    other matrices (reviewer rC #1); under the old prime-only rule these blocks were ``old``."""
    from orthokit.rotation.hadamard import legacy_construction

    assert legacy_construction(n) == old
    with pytest.raises(ValueError, match=rf"block order {n} was {re.escape(old)}, now"):
        Rotation.from_state_dict(_legacy_state(n, (n,)))


def test_legacy_construction_matches_the_documented_changed_orders() -> None:
    from orthokit.linalg import hadamard_construction
    from orthokit.rotation.hadamard import legacy_construction

    changed = [
        n
        for n in range(4, 3000, 4)
        if (o := legacy_construction(n)) is not None and o != hadamard_construction(n)
    ]
    assert changed == [
        104,
        200,
        208,
        400,
        416,
        488,
        800,
        832,
        976,
        1448,
        1600,
        1664,
        1952,
        2504,
        2664,
        2720,
        2896,
    ]
    assert (
        legacy_construction(52) is None and legacy_construction(172) is None
    )  # 52 is new; 172 never a order
    # a legacy state with a block the old rule did not have is no genuine old state: refused too
    with pytest.raises(ValueError, match="block order 52 had no construction"):
        Rotation.from_state_dict(_legacy_state(56, (52, 4)))


def test_legacy_state_of_an_unchanged_order_still_loads_exactly() -> None:
    for n, blocks in ((172, (88, 84)), (768, (768,)), (12, (12,))):
        r = Rotation.from_state_dict(_legacy_state(n, blocks))
        assert r.blocks == blocks
        assert torch.equal(r.matrix(), HadamardRotation(n, seed=3, blocks=blocks).matrix())


def test_legacy_rotated_model_state_is_refused_on_load() -> None:
    """A rotated Llama (intermediate 104, online R4 before down_proj) saved before 8b2684d: strict
    load_state_dict used to succeed and give other logits; now the R4 state is refused."""
    import io

    from orthokit.rotation.online import OnlineRotatedLinear
    from orthokit.rotation.rewrite import rotate_model
    from tests.rotation._models import tiny_ids, tiny_model

    m = tiny_model("llama", intermediate_size=104, num_hidden_layers=1)
    q, _ = rotate_model(m, "hadamard", seed=0, inputs=tiny_ids(1, 8))
    sd = q.state_dict()
    key = next(k for k in sd if k.endswith("down_proj._extra_state"))
    down = q.get_submodule(key.rsplit(".", 1)[0])
    assert isinstance(down, OnlineRotatedLinear) and down.rotation.blocks == (104,)
    assert q.load_state_dict(sd, strict=True) is not None  # today's state round-trips
    state = down.rotation_state()
    del state["rotation"]["constructions"]  # what the old code wrote
    buf = io.BytesIO()
    torch.save(state, buf)
    sd[key] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    with pytest.raises(ValueError, match="block order 104 was paley1"):
        q.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("name", ["hadamard", "two_block_hadamard", "haar", "identity", "dense"])
def test_apply_passes_nan_and_inf_through_like_a_linear(name: str) -> None:
    """One policy for every rotation: apply/apply_T propagate NaN/inf like x @ Q (nn.Linear), never raise."""
    n = 12
    rot = make_rotation(haar_matrix(n, 5), n) if name == "dense" else make_rotation(name, n, seed=1)
    x = torch.randn(3, n, dtype=F64)
    x[0, 4] = float("nan")
    x[1, 2] = float("inf")
    q = rot.matrix()
    for out, ref in ((rot.apply(x), x @ q), (rot.apply_T(x), x @ q.T)):
        # rows with a NaN/inf stay non-finite (which entries exactly depends on the kernel, as for any GEMM)
        assert not out[0].isfinite().all() and not out[1].isfinite().all(), name
        assert torch.allclose(out[2], ref[2], atol=1e-12)
    from orthokit.linalg import hadamard_transform

    with pytest.raises(ValueError, match="non-finite"):  # the public transform keeps its check
        hadamard_transform(x)
