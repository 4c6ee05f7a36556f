"""OstQuant pieces: KL-Top against a float64 loop reference (+ a no-renormalization mutant), log-scales start at
the identity and fuse exactly through rotate_llama_params."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.rotation._functional import fuse_llama_norms, llama_dims, rotate_llama_params
from orthokit.rotation.ostquant import OstQuantScales, kl_top
from tests.rotation._models import tiny_model


def _kl_top_reference(fp: list[list[float]], q: list[list[float]], k: int) -> float:
    total = 0.0
    for zf, zq in zip(fp, q):
        idx = sorted(range(len(zf)), key=lambda i: -zf[i])[:k]
        mf, mq = max(zf[i] for i in idx), max(zq[i] for i in idx)
        lf = math.log(sum(math.exp(zf[i] - mf) for i in idx)) + mf
        lq = math.log(sum(math.exp(zq[i] - mq) for i in idx)) + mq
        total += sum(math.exp(zf[i] - lf) * ((zf[i] - lf) - (zq[i] - lq)) for i in idx)
    return total / len(fp)


@pytest.mark.parametrize("k", [1, 3, 7, 50])
def test_kl_top_matches_float64_reference(k: int) -> None:
    g = torch.Generator().manual_seed(0)
    fp = torch.randn(5, 9, generator=g, dtype=torch.float64) * 3
    q = fp + 0.5 * torch.randn(5, 9, generator=g, dtype=torch.float64)
    ref = _kl_top_reference(fp.tolist(), q.tolist(), min(k, 9))
    assert abs(float(kl_top(fp, q, k=k)) - ref) < 1e-12
    if k == 1:
        assert ref == 0.0  # one logit: both renormalize to probability 1


def test_kl_top_mutant_without_renormalization_differs() -> None:
    g = torch.Generator().manual_seed(1)
    fp = torch.randn(4, 12, generator=g, dtype=torch.float64)
    q = fp + torch.randn(4, 12, generator=g, dtype=torch.float64)
    top, idx = fp.topk(3, dim=-1)
    p_full = torch.log_softmax(fp, -1).gather(-1, idx)  # full-vocab log-probs, not renormalized
    q_full = torch.log_softmax(q, -1).gather(-1, idx)
    mutant = float((p_full.exp() * (p_full - q_full)).sum(-1).mean())
    ref = _kl_top_reference(fp.tolist(), q.tolist(), 3)
    assert abs(mutant - ref) > 1e-3 and abs(float(kl_top(fp, q, k=3)) - ref) < 1e-12


def test_kl_top_gradient_flows_to_quantized_logits_only() -> None:
    fp = torch.randn(3, 6, requires_grad=True)
    q = torch.randn(3, 6, requires_grad=True)
    kl_top(fp, q, k=4).backward()
    assert fp.grad is None and q.grad is not None and float(q.grad.abs().sum()) > 0


def test_kl_top_errors() -> None:
    with pytest.raises(ValueError, match="share a shape"):
        kl_top(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="k must be"):
        kl_top(torch.zeros(2, 3), torch.zeros(2, 3), k=0)
    with pytest.raises(ValueError, match="sites"):
        OstQuantScales(llama_dims(tiny_model("llama").config), sites=("qk",))


def test_scales_start_at_identity_and_fuse_exactly() -> None:
    m = tiny_model("llama_gqa")
    dims = llama_dims(m.config)
    sc = OstQuantScales(dims)
    kw = sc.as_kwargs()
    assert all(bool((v == 1).all()) for d in kw.values() for v in d.values())
    assert len(kw["norm_scales"]) == 2 * dims.n_layers and set(kw["ffn_scales"]) == set(range(dims.n_layers))
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(2))
    m.double()
    with torch.no_grad():
        ref = m(ids).logits  # float64 reference
        for p in sc.parameters():
            p.uniform_(-0.5, 0.5)  # non-trivial scales
    fuse_llama_norms(m)
    eye = torch.eye(dims.hidden, dtype=torch.float64)
    new = rotate_llama_params(m.state_dict(), m.config, eye, None, **sc.export())
    m.load_state_dict(new)
    with torch.no_grad():
        out = m(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 1e-10
    exported = sc.export()
    assert exported["ffn_scales"][0].dtype == torch.float64
    assert torch.allclose(exported["ffn_scales"][0], sc.theta["ffn_0"].detach().double().exp())
