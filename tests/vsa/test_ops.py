"""bundle / bind / unbind / cleanup / Codebook."""

from __future__ import annotations

import pytest
import torch

from orthokit.vsa.hadamard import HadamardBinder
from orthokit.vsa.ops import Codebook, bind, bundle, cleanup, cosine, unbind


def test_bundle_sum_and_normalize_against_float64_reference() -> None:
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    assert torch.allclose(bundle(x), x.sum(0))
    assert torch.allclose(bundle(list(x)), x.sum(0))
    n = bundle(x, normalize=True)
    assert torch.allclose(n.norm(dim=-1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="zero vector"):
        bundle([torch.ones(4), -torch.ones(4)], normalize=True)
    with pytest.raises(ValueError, match="non-empty"):
        bundle([])
    with pytest.raises(ValueError, match=r"vectors\[1\] has shape"):
        bundle([torch.ones(4), torch.ones(5)])
    with pytest.raises(ValueError, match="NaN or inf"):
        bundle([torch.ones(4), torch.tensor([1.0, float("inf"), 0, 0])])


def test_record_of_many_pairs_cleans_up_with_the_expected_margin() -> None:
    """Key–value record of 12 pairs at d = 1024: every value is recovered by cleanup against 200 atoms."""
    d, n_pairs = 1024, 12
    cb = Codebook(d, seed=0, dtype=torch.float64)
    cb.add([f"v{i}" for i in range(200)])
    b = HadamardBinder(d, seed=0)
    vals = [f"v{3 * i}" for i in range(n_pairs)]
    rec = bundle([bind(b, f"k{i}", cb.atom(v)) for i, v in enumerate(vals)])
    got = [cb.cleanup(unbind(b, f"k{i}", rec)) for i in range(n_pairs)]
    assert [g[0] for g in got] == vals
    # signal 1 over ‖rec‖ ≈ √12: the winning cosine is ≈ 1/√12 ≈ 0.29
    assert all(0.2 < g[1] < 0.4 for g in got)


def test_cleanup_batched_and_codebook_determinism() -> None:
    a, b = Codebook(64, seed=3), Codebook(64, seed=3)
    a.add(["x", "y", "z"])
    b.add(["z", "x"])
    assert torch.equal(a.atom("x"), b.atom("x")) and torch.equal(a.atom("z"), b.atom("z"))
    assert not torch.allclose(Codebook(64, seed=4).atom("x"), a.atom("x"))
    assert abs(float(a.atom("x").norm()) - 1) < 1e-6
    q = torch.stack([a.atom("z"), a.atom("x") * 3])
    idx, cos = cleanup(q, a.matrix())
    assert idx.tolist() == [2, 0] and torch.allclose(cos, torch.ones(2), atol=1e-6)
    c = Codebook.from_state_dict(a.state_dict())
    assert c.symbols == ["x", "y", "z"] and torch.equal(c.matrix(), a.matrix())
    assert "x" in a and 3 not in a and len(a) == 3
    assert float(cosine(torch.zeros(4), torch.ones(4))) == 0.0


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e-40])
def test_cosine_cleanup_and_bundle_are_scale_safe_in_float32(scale: float) -> None:
    """float32 vectors at 1e30 (the norm overflows) and 1e-30 / 1e-40 (it underflows) against a float64 reference."""
    g = torch.Generator().manual_seed(0)
    a64, b64 = (
        torch.randn(3, 16, generator=g, dtype=torch.float64),
        torch.randn(3, 16, generator=g, dtype=torch.float64),
    )
    ref = (a64 * b64).sum(-1) / (a64.norm(dim=-1) * b64.norm(dim=-1))
    a, b = (a64 * scale).float(), (b64 * scale).float()
    tol = 1e-5 if scale >= 1e-30 else 1e-2  # 1e-40 is subnormal in float32: ~3 significant digits left
    assert torch.allclose(cosine(a, b).double(), ref, atol=tol)
    idx, val = cleanup(a[0], torch.cat([b, a[:1]]))
    assert int(idx) == 3 and abs(float(val) - 1) < tol
    assert torch.allclose(
        bundle(a, normalize=True).double().norm(), torch.tensor(1.0, dtype=torch.float64), atol=tol
    )


def test_bad_inputs() -> None:
    cb = Codebook(8)
    with pytest.raises(ValueError, match="empty"):
        cb.matrix()
    with pytest.raises(TypeError, match="symbol must be a str"):
        cb.add(["ok", 3])  # type: ignore[list-item]
    assert len(cb) == 0  # nothing added by the failed call
    with pytest.raises(ValueError, match="codebook must have last dimension 5"):
        cleanup(torch.zeros(5), torch.eye(4))
    with pytest.raises(TypeError, match="binder must be a Binder"):
        bind("haar", "r", torch.zeros(8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d must"):
        Codebook(0)
    with pytest.raises(TypeError, match=r"state\['symbols'\] must be a list of str, got str"):
        Codebook.from_state_dict({"d": 8, "seed": 0, "symbols": "abc"})
