"""Tests for non-power-of-two orders of orthokit.linalg.hadamard_matrix (Paley I/II ⊗ Sylvester)."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.linalg import hadamard as hmod
from orthokit.linalg.hadamard import hadamard_construction, hadamard_matrix

D = torch.float64


def _supported(n: int) -> bool:
    try:
        hadamard_construction(n)
    except ValueError:
        return False
    return True


SUPPORTED = [n for n in range(1, 513) if _supported(n)]


def _explicit_sylvester(n: int, dtype: torch.dtype = D) -> torch.Tensor:
    """Entry formula H[i, j] = (−1)^{popcount(i & j)} / √n, built element by element in ``dtype``."""
    signs = [[(-1.0 if bin(i & j).count("1") % 2 else 1.0) for j in range(n)] for i in range(n)]
    return torch.tensor(signs, dtype=dtype) / math.sqrt(n)


def test_every_supported_order_up_to_512_is_orthonormal_with_exact_entries() -> None:
    assert len(SUPPORTED) == 107  # 102 over prime fields + 52, 100, 244, 340, 344 over GF(p^k)
    # multiples of 4 below 120 not covered: 92 (Williamson), 116 (other constructions); 172 = 4·43 is the issue's
    # example (43, 85 and 171 = 9·19 are no Paley q). 52 = Paley II over GF(25), 100 = Paley II over GF(49).
    assert [n for n in range(4, 120, 4) if n not in SUPPORTED] == [92, 116]
    assert 172 not in SUPPORTED
    for n in SUPPORTED:
        H = hadamard_matrix(n, dtype=D)
        assert H.shape == (n, n) and H.dtype == D
        err = (H @ H.T - torch.eye(n, dtype=D)).abs().max().item()
        assert err <= 1e-12, (n, err)
        assert bool((H.abs() == 1.0 / math.sqrt(n)).all()), n


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_powers_of_two_are_the_sylvester_matrix_bit_identical(n: int) -> None:
    H = hadamard_matrix(n, dtype=D)
    assert torch.equal(H, _explicit_sylvester(n))
    assert torch.equal(H, H.T)
    assert torch.equal(hadamard_matrix(n), _explicit_sylvester(n, torch.float32))
    assert hadamard_construction(n) == f"sylvester({n})"


def test_paley1_order_12_hand_checked() -> None:
    # q = 11: quadratic residues {1, 3, 4, 5, 9}; Q[i, j] = χ(j − i); H = I + [[0, 1ᵀ], [−1, Q]].
    assert hadamard_construction(12) == "paley1(q=11)"
    H = hadamard_matrix(12, dtype=D) * math.sqrt(12)
    assert H[0].tolist() == [1.0] * 12
    chi = [0, 1, -1, 1, 1, 1, -1, -1, -1, 1, -1]  # χ(0..10), by hand
    assert H[1].tolist() == [-1.0, 1.0] + [float(c) for c in chi[1:]]
    assert H[:, 0].tolist() == [1.0] + [-1.0] * 11
    S = H - torch.eye(12, dtype=D)
    assert torch.equal(S, -S.T)  # skew-Hadamard
    assert torch.equal(H @ H.T, 12 * torch.eye(12, dtype=D))


def test_paley1_order_20_and_paley2_order_36() -> None:
    assert hadamard_construction(20) == "paley1(q=19)"  # Paley II would need q = 9 (not prime)
    H20 = hadamard_matrix(20, dtype=D) * math.sqrt(20)
    residues19 = {1, 4, 5, 6, 7, 9, 11, 16, 17}
    assert H20[1, 2:].tolist() == [1.0 if a in residues19 else -1.0 for a in range(1, 19)]
    assert torch.equal(H20 @ H20.T, 20 * torch.eye(20, dtype=D))

    assert hadamard_construction(36) == "paley2(q=17)"
    H36 = hadamard_matrix(36, dtype=D) * math.sqrt(36)
    assert torch.equal(H36, H36.T)  # Paley II is symmetric
    assert H36[:2, :2].tolist() == [[1.0, -1.0], [-1.0, -1.0]]  # diagonal zero → [[1, −1], [−1, −1]]
    assert H36[:2, 2:4].tolist() == [[1.0, 1.0], [1.0, -1.0]]  # +1 → [[1, 1], [1, −1]]
    # C[1, 4] = χ(3 − 0) for q = 17: 3 is a non-residue mod 17 → −[[1, 1], [1, −1]]
    assert H36[2:4, 8:10].tolist() == [[-1.0, -1.0], [-1.0, 1.0]]
    assert torch.equal(H36 @ H36.T, 36 * torch.eye(36, dtype=D))


def test_kronecker_with_sylvester_and_smallest_core() -> None:
    assert hadamard_construction(24) == "paley1(q=11) ⊗ sylvester(2)"  # not paley1(q=23)
    assert hadamard_construction(40) == "paley1(q=19) ⊗ sylvester(2)"
    assert hadamard_construction(28) == "paley2(q=13)"  # 27 is not prime
    H12 = hadamard_matrix(12, dtype=D)
    expected = torch.kron(H12, _explicit_sylvester(8))
    torch.testing.assert_close(hadamard_matrix(96, dtype=D), expected, rtol=0, atol=1e-15)


def test_dtype_device_and_fresh_copies() -> None:
    H = hadamard_matrix(12)
    assert H.dtype == torch.float32
    torch.testing.assert_close(H.double(), hadamard_matrix(12, dtype=D), rtol=0, atol=1e-7)
    H.zero_()
    assert hadamard_matrix(12).abs().min() > 0  # caller mutation does not reach the cache


@pytest.mark.parametrize("n, near", [(172, "168 and 176"), (92, "88 and 96"), (6, "4 and 8"), (3, "2 and 4")])
def test_unsupported_orders_raise_naming_neighbours_and_fallback(n: int, near: str) -> None:
    for fn in (hadamard_matrix, hadamard_construction):
        with pytest.raises(ValueError, match=f"order {n} .*nearest supported orders: {near}.*block-diagonal"):
            fn(n)


def test_bad_arguments() -> None:
    for bad in (12.0, "12", True, None):
        with pytest.raises(TypeError, match="must be an int"):
            hadamard_matrix(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be an int"):
            hadamard_construction(bad)  # type: ignore[arg-type]
    for bad_n in (0, -4):
        with pytest.raises(ValueError, match=">= 1"):
            hadamard_matrix(bad_n)
    for bad_dtype in (torch.int64, torch.complex64, "float32"):
        with pytest.raises(TypeError, match="dtype"):
            hadamard_matrix(12, dtype=bad_dtype)  # type: ignore[arg-type]


def test_flipped_nonresidue_sign_is_not_orthogonal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The orthogonality check can fail: a Jacobsthal matrix with the non-residue sign flipped breaks it."""

    def mutant(q: int) -> torch.Tensor:
        return 1 - torch.eye(q, dtype=torch.int8)

    monkeypatch.setattr(hmod, "_jacobsthal", mutant)
    hmod._integer_hadamard.cache_clear()
    try:
        H = hmod._integer_hadamard(12).to(D)
        assert not torch.equal(H @ H.T, 12 * torch.eye(12, dtype=D))
    finally:
        hmod._integer_hadamard.cache_clear()


@pytest.mark.parametrize(
    ("q", "order", "kind"),
    [(9, 20, "paley2"), (27, 28, "paley1"), (25, 52, "paley2"), (49, 100, "paley2"), (81, 164, "paley2")]
    + [(121, 244, "paley2"), (243, 244, "paley1"), (343, 344, "paley1"), (125, 252, "paley2")],
)
def test_prime_power_paley_matrices_are_exactly_hadamard(q: int, order: int, kind: str) -> None:
    """Paley I/II over GF(p^k), k ≥ 2: H Hᵀ = n·I exactly in float64 (integer entries ±1)."""
    H = (hmod._paley1(q) if kind == "paley1" else hmod._paley2(q)).to(D)
    assert H.shape == (order, order) and bool((H.abs() == 1).all())
    assert torch.equal(H @ H.T, order * torch.eye(order, dtype=D))
    chi = hmod._quadratic_character(q)
    assert int((chi == 1).sum()) == int((chi == -1).sum()) == (q - 1) // 2 and int(chi[0]) == 0


def test_prime_power_orders_in_hadamard_construction() -> None:
    assert hadamard_construction(52) == "paley2(q=25)"  # unsupported before GF(p^k)
    assert hadamard_construction(100) == "paley2(q=49)"
    assert hadamard_construction(344) == "paley1(q=343)"
    # the review's case: Llama-2-7B's 11008 = 172·64 had the prime core 5504 = paley1(q=5503) ⊗ S_2
    assert hadamard_construction(11008) == "paley1(q=343) ⊗ sylvester(32)"
    assert (
        hadamard_construction(28) == "paley2(q=13)"
    )  # at one core order a prime field still wins (unchanged)
    for n in (52, 100, 344 * 4):
        H = hadamard_matrix(n, dtype=D) * math.sqrt(n)
        assert torch.equal(H @ H.T, n * torch.eye(n, dtype=D)), n


def test_gf9_character_hand_checked() -> None:
    # GF(9) = GF(3)[x]/(x² + 1) (the first monic irreducible: x² + 1, f_0 = 1, f_1 = 0), element a + b·x coded a + 3b.
    # Nonzero squares: 1² = 1, 2² = 1, x² = −1 = 2, (1+x)² = 2x (code 6), (1+2x)² = −2x = x (code 3) → {1, 2, 3, 6}.
    assert hmod._irreducible(3, 2) == [1, 0]
    assert hmod._quadratic_character(9).tolist() == [0, 1, 1, 1, -1, -1, 1, -1, -1]


def test_reducible_modulus_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: GF(25) built modulo the reducible x² − 1 (a ring with zero divisors) is not a Hadamard matrix."""
    monkeypatch.setattr(hmod, "_irreducible", lambda p, k: [p - 1, 0])
    H = hmod._paley2(25).to(D)
    assert not torch.equal(H @ H.T, 52 * torch.eye(52, dtype=D))


def test_jacobsthal_is_vectorized_for_large_prime_cores() -> None:
    """The prime core 5504 (q = 5503) took 15 s / 1.1 GB as Python lists; now a vectorized build (< 5 s)."""
    import time

    t0 = time.perf_counter()
    Q = hmod._jacobsthal(5503)
    assert time.perf_counter() - t0 < 5.0
    assert Q.dtype == torch.int8 and Q.shape == (5503, 5503)
    residues = {(x * x) % 5503 for x in range(1, 5503)}
    for i, j in ((0, 1), (7, 3000), (5502, 2), (100, 99)):
        assert int(Q[i, j]) == (1 if (j - i) % 5503 in residues else -1)
    assert torch.equal(Q, -Q.T)  # q ≡ 3 mod 4: χ(−1) = −1
