"""hadamard_transform for every supported order (Paley core ⊗ Sylvester), transpose, autograd, kernels, mutants.

The reference is ``x @ hadamard_matrix(n)`` in float64: the integer Kronecker product built by
``_integer_hadamard`` (checked by hand and for orthogonality in test_hadamard_orders.py), a separate code path from
the transform's factor-wise kernels. Each mutant test breaks one kernel and asserts the reference check catches it.
"""

from __future__ import annotations

import importlib
import math
import sys
import types

import pytest
import torch

from orthokit.linalg import hadamard_matrix, hadamard_transform

Hm = importlib.import_module("orthokit.linalg.hadamard")
D = torch.float64
ORDERS = [1, 2, 8, 12, 20, 24, 28, 36, 40, 44, 48, 64, 96, 256, 768, 1024]
METHODS = ["fwht", "dense", "kron", "auto"]


def _max_err(n: int, method: str, transpose: bool, rows: int = 3, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g, dtype=D)
    H = hadamard_matrix(n, dtype=D)
    ref = x @ (H.T if transpose else H)
    return (hadamard_transform(x, method=method, transpose=transpose) - ref).abs().max().item()


@pytest.mark.parametrize("n", ORDERS)
def test_every_method_matches_float64_reference(n: int) -> None:
    for method in METHODS:
        for transpose in (False, True):
            assert _max_err(n, method, transpose) < 1e-12, (n, method, transpose)


def test_larger_paley_orders_and_kron_factorisation() -> None:
    assert Hm._kron_log2(14) == [5, 5, 4] and Hm._kron_log2(12) == [6, 6] and Hm._kron_log2(6) == [6]
    assert Hm._kron_log2(0) == []
    # hadamard_matrix(c·2^b) = hadamard_matrix(c) ⊗ hadamard_matrix(2^b) (test_hadamard_orders.py checks it at 96):
    # a float64 reference without the n×n matrix
    for c, p in ((12, 512), (20, 1 << 13)):  # 6144: core + 2 factors; 163840: core + 3 factors
        x = torch.randn(1, c, p, dtype=D)
        ref = torch.einsum("rkl,ki,lj->rij", x, hadamard_matrix(c, dtype=D), hadamard_matrix(p, dtype=D))
        for method in ("fwht", "kron"):
            y = hadamard_transform(x.reshape(1, c * p), method=method)
            assert (y - ref.reshape(1, c * p)).abs().max() < 1e-12, (c, p, method)
    assert len(Hm._kron_factors(20 << 13, D, "cpu", False)) == 4


def test_transpose_inverts_and_only_sylvester_is_involutive() -> None:
    x = torch.randn(4, 24, dtype=D)
    y = hadamard_transform(x)
    torch.testing.assert_close(hadamard_transform(y, transpose=True), x)
    assert (hadamard_transform(y) - x).abs().max() > 0.1  # Paley core: H·H ≠ I
    z = torch.randn(4, 32, dtype=D)
    torch.testing.assert_close(hadamard_transform(hadamard_transform(z)), z)
    torch.testing.assert_close(hadamard_transform(z, transpose=True), hadamard_transform(z))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_unsupported_order_raises_and_never_pads() -> None:
    for n in (172, 92, 6):
        with pytest.raises(ValueError, match=f"size {n} along dim 1: no Hadamard construction.*nearest"):
            hadamard_transform(torch.randn(2, n, 3), dim=1)


def test_leading_dims_and_dim_argument() -> None:
    x = torch.randn(2, 3, 12, 5, dtype=D)
    H = hadamard_matrix(12, dtype=D)
    ref = torch.einsum("abkc,kj->abjc", x, H)
    for method in METHODS:
        y = hadamard_transform(x, dim=2, method=method)
        assert y.shape == x.shape
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        hadamard_transform(x, dim=-2, transpose=True), torch.einsum("abkc,jk->abjc", x, H), rtol=0, atol=1e-12
    )
    e = torch.randn(0, 12)
    assert hadamard_transform(e).shape == (0, 12)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_half_precision_in_computed_in_float32(dt: torch.dtype) -> None:
    x = torch.randn(8, 48).to(dt)
    for method in ("fwht", "dense", "kron"):
        y = hadamard_transform(x, method=method)
        assert y.dtype == dt
        # computed in float32 and rounded once: equal to the float32 result cast down
        assert torch.equal(y, hadamard_transform(x.float(), method=method).to(dt))
        ref = x.double() @ hadamard_matrix(48, dtype=D)
        assert (y.double() - ref).abs().max() < 4 * torch.finfo(dt).eps * ref.abs().max()


@pytest.mark.parametrize("n", [12, 16, 24])
def test_autograd_matches_transposed_reference(n: int) -> None:
    H = hadamard_matrix(n, dtype=D)
    for method in ("fwht", "dense", "kron"):
        for transpose in (False, True):
            x = torch.randn(2, 3, n, dtype=D, requires_grad=True)
            w = torch.randn(2, 3, n, dtype=D)
            (hadamard_transform(x, method=method, transpose=transpose) * w).sum().backward()
            M = H.T if transpose else H
            torch.testing.assert_close(x.grad, w @ M.T, rtol=0, atol=1e-12)

            def f(t: torch.Tensor, m: str = method, tr: bool = transpose) -> torch.Tensor:
                return hadamard_transform(t, method=m, transpose=tr)

            xs = torch.randn(2, n, dtype=D, requires_grad=True)
            assert torch.autograd.gradcheck(f, (xs,))
            if not transpose:  # the double backward runs the transposed transform already
                assert torch.autograd.gradgradcheck(f, (xs,))


def test_backward_saves_no_tensors() -> None:
    packed: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(tuple(t.shape))
        return t

    x = torch.randn(64, 768, dtype=D, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for method in ("fwht", "dense", "kron"):
            y = hadamard_transform(x, method=method, transpose=True)
    assert packed == []
    y.sum().backward()
    assert x.grad is not None


def test_row_chunking_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(37, 96, dtype=D)
    ref = x @ hadamard_matrix(96, dtype=D)
    monkeypatch.setattr(Hm, "CHUNK_ENTRIES", 96 * 5)  # 5 rows per chunk, last chunk ragged
    for method in ("fwht", "kron"):
        torch.testing.assert_close(hadamard_transform(x, method=method), ref, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ mutants
def test_mutant_butterfly_missing_a_stage_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        y = x.reshape(-1, n)
        h = 1
        while 2 * h < n:  # stops one stage early
            y = y.reshape(-1, n // (2 * h), 2, h)
            y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
            h *= 2
        return y.reshape(x.shape) / math.sqrt(n)

    assert _max_err(24, "fwht", False) < 1e-12
    monkeypatch.setattr(Hm, "_fwht_last", broken)
    assert _max_err(24, "fwht", False) > 1e-2
    assert _max_err(64, "fwht", True) > 1e-2


def test_mutant_transposed_paley_core_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    core = Hm._core_matrix

    def transposed(kind: str, q: int, dtype: torch.dtype, device: str) -> torch.Tensor:
        return core(kind, q, dtype, device).T

    monkeypatch.setattr(Hm, "_core_matrix", transposed)
    for method in ("fwht", "kron"):
        assert _max_err(12, method, False) > 1e-2  # Paley I (skew core): caught
        assert _max_err(24, method, True) > 1e-2


def test_mutant_untransposed_backward_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return Hm._HadamardFn.apply(g, ctx.method, ctx.transpose), None, None  # type: ignore[attr-defined]

    monkeypatch.setattr(Hm._HadamardFn, "backward", staticmethod(bad_backward))
    x = torch.randn(2, 12, dtype=D, requires_grad=True)
    with pytest.raises(Exception, match="Jacobian mismatch"):
        torch.autograd.gradcheck(lambda t: hadamard_transform(t, method="kron"), (x,))


# ------------------------------------------------------------------------------------------ CUDA kernel route
def _fake_ext(calls: list[tuple[int, float]]) -> types.ModuleType:
    """Stands in for Dao-AILab's fast_hadamard_transform: unnormalized Sylvester transform times ``scale``."""
    mod = types.ModuleType("fast_hadamard_transform")

    def fht(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        p = x.shape[-1]
        calls.append((p, scale))
        signs = [[-1.0 if bin(i & j).count("1") % 2 else 1.0 for j in range(p)] for i in range(p)]
        return (x.double() @ torch.tensor(signs, dtype=D) * scale).to(x.dtype)

    mod.hadamard_transform = fht  # type: ignore[attr-defined]
    return mod


def test_cuda_kernel_routing_with_fake_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, float]] = []
    monkeypatch.setitem(sys.modules, "fast_hadamard_transform", _fake_ext(calls))
    cuda, f32 = torch.device("cuda"), torch.float32
    assert Hm._auto_method(cuda, 1024, 4096, f32) == "fast_hadamard_transform"
    assert Hm._cuda_ext_usable(cuda, 24, torch.bfloat16)  # Paley core on the side, kernel on the 2^b axis
    assert not Hm._cuda_ext_usable(cuda, 1024, D)  # the kernel has no float64
    assert not Hm._cuda_ext_usable(cuda, 65536, f32)  # > 32768
    assert not Hm._cuda_ext_usable(cuda, 12, f32)  # no power-of-two factor
    assert not Hm._cuda_ext_usable(torch.device("cpu"), 1024, f32)
    for n in (1024, 24):
        x = torch.randn(5, n)
        ref = x.double() @ hadamard_matrix(n, dtype=D)
        out = Hm._apply_kernel(x, "fast_hadamard_transform", False)
        assert (out.double() - ref).abs().max() < 1e-5
    assert calls[-2:] == [(1024, 1 / 32), (2, 1 / math.sqrt(2))]  # 24 = 12·2
    # the whole public path, including the backward, as if on CUDA
    monkeypatch.setattr(Hm, "_cuda_ext_usable", lambda device, n, dtype: True)
    x = torch.randn(3, 40, requires_grad=True)
    w = torch.randn(3, 40)
    (hadamard_transform(x, method="fast_hadamard_transform") * w).sum().backward()
    H = hadamard_matrix(40, dtype=D)
    assert (x.grad.double() - w.double() @ H.T).abs().max() < 1e-5
    assert calls[-1] == (2, 1 / math.sqrt(2))  # 40 = 20·2; the backward ran the kernel too


def test_cuda_kernel_absent_falls_back_and_cpu_never_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fast_hadamard_transform", None)  # import raises ImportError
    assert Hm._cuda_ext() is None
    assert Hm._auto_method(torch.device("cuda"), 1024, 4096, torch.float32) == "kron"
    looked: list[int] = []
    monkeypatch.setattr(Hm, "_cuda_ext", lambda: looked.append(1))
    hadamard_transform(torch.randn(4096, 256))
    assert looked == []  # CPU tensors never look for the CUDA package


def test_large_core_with_short_trailing_axis_uses_one_gemm() -> None:
    """2120 = paley2(q=529) ⊗ S_2: the core factor has trailing size 2, where the batched ``F.T @ Y`` degenerates into
    skinny GEMMs (review rA: 4.49 s vs 0.03 s at n = 11008 with the old prime core). Mutant KRON_EINSUM_MAX_REST = 0
    (batched matmul everywhere): ~0.54 s here vs ~0.02 s."""
    import time

    from orthokit.linalg import hadamard as hm

    assert hm.hadamard_construction(2120) == "paley2(q=529) ⊗ sylvester(2)"
    x = torch.randn(64, 2120, dtype=torch.float32)
    H = hadamard_matrix(2120)

    def best(
        fn: object,
    ) -> float:  # min of 3 (after a warm-up), relative to a dense GEMM: robust to host load
        fn()  # type: ignore[operator]
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            ts.append(time.perf_counter() - t0)
        return min(ts)

    y = hadamard_transform(x, method="kron")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared, loaded host: 2 threads make both timings erratic
    try:
        t_kron, t_dense = best(lambda: hadamard_transform(x, method="kron")), best(lambda: x @ H)
    finally:
        torch.set_num_threads(threads)
    assert t_kron < 2 * t_dense, (t_kron, t_dense)
    xd = x[:4].double()
    ref = xd @ hadamard_matrix(2120, dtype=torch.float64)
    assert (hadamard_transform(xd, method="kron") - ref).abs().max() < 1e-11
    assert (y[:4].double() - ref).abs().max() < 1e-4
