"""SubspaceMemory: layer resolution, GPM energy criterion vs float64 references, conv im2col, state, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from orthokit.projection import SubspaceMemory, energy_rank, sgp_importance


def _mlp(bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Linear(12, 20, bias=bias), nn.ReLU(), nn.Linear(20, 6, bias=bias))


def _low_rank(
    n: int, k: int, samples: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    basis = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))[0]
    x = torch.randn(samples, k, dtype=torch.float64) @ basis.T
    return x.to(dtype), basis


# ---------------------------------------------------------------------------------------------------- layers
def test_layer_selection_by_name_module_type() -> None:
    model = _mlp()
    assert SubspaceMemory(model).layer_names == ["0", "2"]
    assert SubspaceMemory(model, layers="2").layer_names == ["2"]
    assert SubspaceMemory(model, layers=model[0]).layer_names == ["0"]
    assert SubspaceMemory(model, layers=nn.Linear).layer_names == ["0", "2"]
    assert SubspaceMemory(model, layers=["2", model[0]]).layer_names == ["0", "2"]


def test_layer_errors() -> None:
    model = _mlp()
    with pytest.raises(ValueError, match="not in the model"):
        SubspaceMemory(model, layers="3")
    with pytest.raises(ValueError, match="not part of the model"):
        SubspaceMemory(model, layers=nn.Linear(3, 3))
    with pytest.raises(TypeError, match="ReLU"):
        SubspaceMemory(model, layers="1")
    with pytest.raises(ValueError, match="no layer of type"):
        SubspaceMemory(model, layers=nn.Conv2d)
    with pytest.raises(TypeError, match="Module"):
        SubspaceMemory("not a model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grouped"):
        SubspaceMemory(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))


# ---------------------------------------------------------------------------------------------------- criterion
def _gpm_reference(r_list: list[np.ndarray], eps: float) -> np.ndarray:
    """GPM's update_GPM written from the paper's Eq. 5/8/9 with numpy float64 SVDs of R (not covariances)."""
    feat = None
    for i, r in enumerate(r_list):
        if i == 0:
            u, s, _ = np.linalg.svd(r, full_matrices=False)
            ratio = s**2 / (s**2).sum()
            k = int(np.sum(np.cumsum(ratio) < eps))
            feat = u[:, :k]
        else:
            _, s1, _ = np.linalg.svd(r, full_matrices=False)
            total = (s1**2).sum()
            r_hat = r - feat @ feat.T @ r
            u, s, _ = np.linalg.svd(r_hat, full_matrices=False)
            acc = (total - (s**2).sum()) / total
            k = 0
            for v in s**2 / total:
                if acc < eps:
                    acc += v
                    k += 1
                else:
                    break
            feat = np.hstack([feat, u[:, :k]])[:, : r.shape[0]]
    return feat


@pytest.mark.parametrize("eps", [0.5, 0.9, 0.97])
def test_gpm_energy_criterion_matches_float64_reference(eps: float) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 4, bias=False))
    # decaying spectrum so that the thresholds fall between eigenvalues
    scales = torch.tensor([2.0**-i for i in range(10)], dtype=torch.float64)
    xs = [
        (torch.randn(50, 10, dtype=torch.float64) * scales)
        @ torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))[0]
        for _ in range(3)
    ]
    mem = SubspaceMemory(model, dtype=torch.float64)
    for x in xs:
        mem.collect_activations(model.double(), [x], threshold=eps, criterion="gpm_code")
    ref = _gpm_reference([x.numpy().T for x in xs], eps)
    got = mem.basis("0").numpy()
    assert got.shape == ref.shape
    # same subspace: projectors agree
    np.testing.assert_allclose(got @ got.T, ref @ ref.T, atol=1e-8)
    np.testing.assert_allclose(got.T @ got, np.eye(got.shape[1]), atol=1e-12)


def test_minimal_criterion_matches_linalg_subspace() -> None:
    from orthokit.linalg import Subspace

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 4, bias=False)).double()
    scales = torch.tensor([1.5**-i for i in range(16)], dtype=torch.float64)
    xs = [torch.randn(40, 16, dtype=torch.float64) * scales for _ in range(3)]
    mem = SubspaceMemory(model, dtype=torch.float64)
    sub = Subspace.empty(16, dtype=torch.float64)
    for x in xs:
        mem.collect_activations(model, [x], threshold=0.9, criterion="minimal")
        sub = sub.extend(x.T, 0.9)
    b = mem.basis("0")
    assert b.shape == sub.basis.shape
    torch.testing.assert_close(b @ b.T, sub.basis @ sub.basis.T, atol=1e-9, rtol=0)


def test_energy_rank_rules() -> None:
    r = torch.tensor([0.5, 0.3, 0.2])
    assert energy_rank(r, 0.75) == 2
    assert energy_rank(r, 0.75, criterion="gpm_first") == 1
    assert energy_rank(r, 0.8, criterion="gpm_first") == 1  # cumsum 0.8 is not < 0.8
    assert energy_rank(r, 0.4, explained=0.5) == 0
    assert energy_rank(r, 1.0) == 3
    with pytest.raises(ValueError, match="criterion"):
        energy_rank(r, 0.5, criterion="nope")


def test_captures_low_rank_inputs_and_per_layer_thresholds() -> None:
    model = _mlp()
    x, basis = _low_rank(12, 3, 100)
    mem = SubspaceMemory(model)
    added = mem.collect_activations(model, [x], threshold={"0": 0.9999, "2": 0.5}, criterion="minimal")
    assert added["0"] == 3
    b = mem.basis("0").double()
    torch.testing.assert_close(b @ b.T, basis @ basis.T, atol=1e-5, rtol=0)
    assert 1 <= added["2"] < 20
    summ = {s.name: s for s in mem.summary()}
    assert summ["0"].k == 3 and summ["0"].n == 12 and summ["0"].free == 9


def test_threshold_forms_and_errors() -> None:
    model = _mlp()
    x = torch.randn(64, 12)
    seen: list[tuple[int, str]] = []

    def sched(t: int, name: str) -> float:
        seen.append((t, name))
        return 0.9 + 0.01 * t

    mem = SubspaceMemory(model)
    mem.collect_activations(model, [x], threshold=sched)
    mem.collect_activations(model, [x], threshold=[0.9, 0.95])
    mem.collect_activations(model, [x], threshold=sched)
    assert seen == [(0, "0"), (0, "2"), (2, "0"), (2, "2")]
    assert mem.task_count == 3
    with pytest.raises(ValueError, match="2 layers"):
        mem.collect_activations(model, [x], threshold=[0.9])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mem.collect_activations(model, [x], threshold=1.5)
    with pytest.raises(ValueError, match="no entry for layer"):
        mem.collect_activations(model, [x], threshold={"0": 0.9})
    with pytest.raises(TypeError, match="threshold must be"):
        mem.collect_activations(model, [x], threshold="0.9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no batches"):
        mem.collect_activations(model, [], threshold=0.9)
    assert mem.task_count == 3  # failed calls changed nothing


def test_max_samples_truncates() -> None:
    model = nn.Sequential(nn.Linear(8, 2, bias=False))
    x = torch.randn(30, 8)
    mem = SubspaceMemory(model)
    covs, seen = mem.activation_covariances(model, [x[:10], x[10:20], x[20:]], max_samples=15)
    assert seen == 15
    ref = x[:15].double().T @ x[:15].double()
    torch.testing.assert_close(covs["0"], ref)


def test_saturation_warns_and_freezes() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    mem = SubspaceMemory(model)
    with pytest.warns(RuntimeWarning, match="fully protected"):
        mem.collect_activations(model, [torch.randn(50, 4)], threshold=1.0, criterion="minimal")
    assert mem.basis("0").shape == (4, 4)
    g = torch.randn(3, 4)
    w = model[0].weight
    mem.project_({w: g})
    assert float(g.abs().max()) < 1e-5


# ---------------------------------------------------------------------------------------------------- projector
def test_projector_idempotent_and_orthogonal() -> None:
    model = nn.Sequential(nn.Linear(32, 16, bias=False))
    mem = SubspaceMemory(model)
    mem.collect_activations(model, [torch.randn(20, 32)], threshold=0.99)
    m = mem.basis("0")
    w = model[0].weight
    g = torch.randn(16, 32)
    once = g.clone()
    mem.project_({w: once})
    twice = once.clone()
    mem.project_({w: twice})
    assert float((once @ m).abs().max()) < 1e-6 * float(g.abs().max())
    torch.testing.assert_close(twice, once, atol=1e-6, rtol=0)
    # it is the orthogonal projector: residual is in span(M)
    resid = (g - once).double()
    mm = m.double()
    torch.testing.assert_close(resid, resid @ mm @ mm.T, atol=1e-5, rtol=0)


def test_scaled_projection_formula() -> None:
    model = nn.Sequential(nn.Linear(10, 5, bias=False))
    mem = SubspaceMemory(model, importance_alpha=3.0)
    mem.collect_activations(model, [torch.randn(40, 10) * torch.linspace(3, 0.1, 10)], threshold=0.95)
    m, lam, sig = mem.basis("0"), mem.importance("0"), mem.layer("0").sigma
    torch.testing.assert_close(lam, sgp_importance(sig, 3.0))
    assert float(lam[0]) == pytest.approx(1.0) and bool((lam > 0).all()) and bool((lam <= 1).all())
    g = torch.randn(5, 10)
    out = g.clone()
    mem.project_({model[0].weight: out}, mode="scaled")
    torch.testing.assert_close(out, g - g @ m @ torch.diag(lam) @ m.T, atol=1e-5, rtol=0)
    out2 = g.clone()
    mem.project_({model[0].weight: out2}, mode="scaled", scale_alpha=1e12)  # α → ∞ gives λ ≡ 1, i.e. hard
    out3 = g.clone()
    mem.project_({model[0].weight: out3})
    torch.testing.assert_close(out2, out3, atol=1e-6, rtol=0)


def test_sgp_importance_incremental_matches_reference() -> None:
    """Two-task importance update against SGP's update_SGP written in numpy float64."""
    torch.manual_seed(3)
    alpha = 10.0
    model = nn.Sequential(nn.Linear(8, 2, bias=False)).double()
    xs = [
        torch.randn(30, 8, dtype=torch.float64) * torch.linspace(2, 0.2, 8, dtype=torch.float64)
        for _ in range(2)
    ]
    mem = SubspaceMemory(model, importance_alpha=alpha, dtype=torch.float64)
    for x in xs:
        mem.collect_activations(model, [x], threshold=0.8, criterion="gpm_code")
    # reference
    r1, r2 = xs[0].numpy().T, xs[1].numpy().T
    u, s, _ = np.linalg.svd(r1, full_matrices=False)
    k = int(np.sum(np.cumsum(s**2 / (s**2).sum()) < 0.8))
    feat, imp = u[:, :k], (alpha + 1) * s[:k] / (alpha * s[:k] + s[:k].max())
    total = (np.linalg.svd(r2, compute_uv=False) ** 2).sum()
    proj = feat @ feat.T @ r2
    uc, sc, _ = np.linalg.svd(proj, full_matrices=False)
    on_old = np.sqrt(((feat.T @ uc[:, :k]) ** 2) @ sc[:k] ** 2)
    uh, sh, _ = np.linalg.svd(r2 - proj, full_matrices=False)
    acc, r = (total - (sh**2).sum()) / total, 0
    for v in sh**2 / total:
        if acc < 0.8:
            acc, r = acc + v, r + 1
        else:
            break
    cat = np.concatenate([on_old, sh[:r]])
    imp_new = (alpha + 1) * cat / (alpha * cat + cat.max())
    imp_new[:k] = np.clip(imp_new[:k] + imp, 0, 1)
    np.testing.assert_allclose(mem.importance("0").numpy(), imp_new, atol=1e-9)
    assert mem.basis("0").shape[1] == k + r


# ---------------------------------------------------------------------------------------------------- conv / layouts
def _patches_loop(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """im2col by explicit loops (GPM's `act[:, :, i:i+k, j:j+k].reshape(-1)`), rows in (C_in, kh, kw) order."""
    ph, pw = conv.padding
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    hout = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wout = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for b in range(x.shape[0]):
        for i in range(hout):
            for j in range(wout):
                patch = xp[
                    b, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw
                ]
                rows.append(patch.reshape(-1))
    return torch.stack(rows)


def test_conv_im2col_rows_match_loops_and_weight_layout() -> None:
    conv = nn.Conv2d(3, 5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), bias=False)
    model = nn.Sequential(conv)
    mem = SubspaceMemory(model)
    x = torch.randn(2, 3, 7, 6)
    rows = mem.layer("0").rows(x)
    ref = _patches_loop(x, conv)
    assert rows.shape == (ref.shape[0], 3 * 3 * 2)
    torch.testing.assert_close(rows, ref)
    # the conv output is weight.view(C_out, -1) @ rows
    out = conv(x).permute(0, 2, 3, 1).reshape(-1, 5)
    torch.testing.assert_close(rows @ conv.weight.reshape(5, -1).T, out, atol=1e-5, rtol=1e-5)


def test_conv_protection_keeps_old_outputs() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
    conv = model[0]
    # old inputs live in a low-dimensional patch space: constant images per channel
    x_old = torch.randn(16, 2, 1, 1).expand(16, 2, 5, 5).contiguous()
    mem = SubspaceMemory(model, layers=nn.Conv2d)
    mem.collect_activations(model, [x_old], threshold=1.0 - 1e-9, criterion="minimal")
    assert 0 < mem.basis("0").shape[1] < 2 * 9 + 1
    with torch.no_grad():
        y0 = conv(x_old).clone()
    dw, db = torch.randn_like(conv.weight), torch.randn_like(conv.bias)
    mem.project_({conv.weight: dw, conv.bias: db})
    with torch.no_grad():
        conv.weight += dw
        conv.bias += db
        y1 = conv(x_old)
    assert float((y1 - y0).norm() / y0.norm()) < 1e-5
    assert float(dw.norm()) > 0.1  # something was left to learn


def test_conv1d_and_padding_modes() -> None:
    conv = nn.Conv1d(3, 4, 3, stride=2, padding=1, padding_mode="reflect", bias=False)
    mem = SubspaceMemory(nn.Sequential(conv))
    x = torch.randn(2, 3, 9)
    rows = mem.layer("0").rows(x)
    out = conv(x).permute(0, 2, 1).reshape(-1, 4)
    torch.testing.assert_close(rows @ conv.weight.reshape(4, -1).T, out, atol=1e-5, rtol=1e-5)


def test_hf_conv1d_layout() -> None:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(6, 4)  # y = x @ W + b with W (4, 6)
    model = nn.Sequential(layer)
    mem = SubspaceMemory(model)
    x_old, _ = _low_rank(4, 2, 30)
    mem.collect_activations(model, [x_old], threshold=1.0 - 1e-9, criterion="minimal")
    dw, db = torch.randn_like(layer.weight), torch.randn_like(layer.bias)
    mem.project_({layer.weight: dw, layer.bias: db})
    with torch.no_grad():
        y0 = layer(x_old).clone()
        layer.weight += dw
        layer.bias += db
        y1 = layer(x_old)
    assert float((y1 - y0).norm() / y0.norm()) < 1e-5


# ---------------------------------------------------------------------------------------------------- state / set_basis
def test_state_dict_round_trip_and_mismatch() -> None:
    model = _mlp(bias=True)
    mem = SubspaceMemory(model)
    mem.collect_activations(model, [torch.randn(50, 12)], threshold=0.9)
    sd = mem.state_dict()
    other = SubspaceMemory(_mlp(bias=True))
    other.load_state_dict(sd)
    for n in mem.layer_names:
        torch.testing.assert_close(other.basis(n), mem.basis(n), atol=0, rtol=0)
        torch.testing.assert_close(other.importance(n), mem.importance(n), atol=0, rtol=0)
    assert other.task_count == 1
    wrong = SubspaceMemory(nn.Sequential(nn.Linear(13, 20), nn.ReLU(), nn.Linear(20, 6)))
    before = wrong.state_dict()
    with pytest.raises(ValueError, match="dim"):
        wrong.load_state_dict(sd)
    assert wrong.state_dict()["layers"]["2"]["basis"] is None and before["task_count"] == 0
    with pytest.raises(ValueError, match="not protected"):
        SubspaceMemory(model, layers="0").load_state_dict(sd)


def test_set_basis_validation() -> None:
    model = _mlp()
    mem = SubspaceMemory(model)
    with pytest.raises(ValueError, match="12 rows"):
        mem.set_basis("0", torch.randn(11, 2))
    with pytest.raises(ValueError, match="not orthonormal"):
        mem.set_basis("0", torch.randn(12, 2), orthonormalize=False)
    with pytest.raises(ValueError, match="non-finite"):
        mem.set_basis("0", torch.full((12, 2), float("nan")))
    mem.set_basis("0", torch.randn(12, 3))
    b = mem.basis("0")
    torch.testing.assert_close(b.T @ b, torch.eye(3), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="already holds"):
        mem.set_basis("0", torch.randn(20 * 12, 1), kind="gradient")


def test_weight_kind_two_sided() -> None:
    model = nn.Sequential(nn.Linear(9, 7, bias=False))
    mem = SubspaceMemory(model)
    mem.collect_weights(rank=3)
    w = model[0].weight.detach().double()
    u, s, vh = torch.linalg.svd(w)
    g = torch.randn(7, 9)
    mem.project_({model[0].weight: g})
    gd = g.double()
    assert float((u[:, :3].T @ gd).abs().max()) < 1e-5
    assert float((gd @ vh[:3].T).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="exactly one"):
        mem.collect_weights()


def test_subspace_view_and_repr() -> None:
    from orthokit.linalg import Subspace

    model = _mlp()
    mem = SubspaceMemory(model)
    assert mem.subspace("0").dim == 0 and mem.is_empty
    x, basis = _low_rank(12, 3, 50)
    mem.collect_activations(model, [x], threshold=0.9999, criterion="minimal")
    sub = mem.subspace("0")
    assert isinstance(sub, Subspace) and sub.dim == 3 and sub.ambient_dim == 12
    xp = sub.complement_project(x)
    assert float(xp.abs().max()) < 1e-5 * float(x.abs().max())
    text = repr(mem)
    assert "3/12" in text and "free 9" in text
    assert mem.num_floats() >= 12 * 3


def test_interference_ratio() -> None:
    model = nn.Sequential(nn.Linear(8, 4, bias=False))
    mem = SubspaceMemory(model)
    basis = torch.linalg.qr(torch.randn(8, 3))[0]
    mem.set_basis("0", basis)
    w = model[0].weight
    inside = torch.randn(4, 3) @ basis.T
    outside = torch.randn(4, 8)
    outside = outside - outside @ basis @ basis.T
    assert mem.interference({w: inside})["0"] == pytest.approx(1.0, abs=1e-5)
    assert mem.interference({w: outside})["0"] == pytest.approx(0.0, abs=1e-5)
    mixed = inside + outside
    expected = float(inside.norm() / mixed.norm())
    w.grad = mixed.clone()
    assert mem.interference()["0"] == pytest.approx(expected, rel=1e-4)
    assert torch.equal(w.grad, mixed)  # diagnostics never modify gradients


def test_gradient_collection_layer_scope_and_kind_conflicts() -> None:
    model = _mlp()
    x, y = torch.randn(6, 12), torch.randint(0, 6, (6,))
    out = lambda m, b: m(b[0]).gather(1, b[1][:, None]).squeeze(1)  # noqa: E731
    mem = SubspaceMemory(model)
    added = mem.collect_gradients(model, out, [(x, y)], scope="layer")
    assert added["0"] == 6 and added["2"] == 6
    assert mem.layer("0").kind == "gradient" and mem.basis("0").shape == (12 * 20, 6)
    with pytest.raises(ValueError, match="cannot be mixed"):
        mem.collect_gradients(model, out, [(x, y)], scope="model")
    mem2 = SubspaceMemory(model)
    mem2.collect_activations(model, [x], threshold=0.9)
    before = mem2.state_dict()
    with pytest.raises(ValueError, match="cannot add gradients"):
        mem2.collect_gradients(model, out, [(x, y)], scope="layer")
    for n in mem2.layer_names:
        assert torch.equal(mem2.basis(n), before["layers"][n]["basis"])


def test_per_layer_sample_budgets_match_float64_reference() -> None:
    """GPM's CNN code uses one example budget per layer: layer l's basis must come from its first b_l examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 20, bias=False), nn.Tanh(), nn.Linear(20, 3, bias=False)).double()
    x = torch.randn(30, 6, dtype=torch.float64)
    mem = SubspaceMemory(model, dtype=torch.float64)
    added = mem.collect_activations(model, [x[:7], x[7:]], threshold=0.999, max_samples={"0": 4, "2": 25})
    for name, inputs in (("0", x[:4]), ("2", torch.tanh(model[0](x[:25])).detach())):
        r = inputs.numpy().T
        u, s, _ = np.linalg.svd(r, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / (s**2).sum(), 0.999) + 1)
        assert added[name] == k, name
        got = mem.basis(name).numpy()
        np.testing.assert_allclose(got @ got.T, u[:, :k] @ u[:, :k].T, atol=1e-8)
    with pytest.raises(ValueError, match="max_samples"):
        mem.collect_activations(model, [x], max_samples=[3])
    with pytest.raises(ValueError, match="max_samples"):
        mem.collect_activations(model, [x], max_samples={"0": 3})
    with pytest.raises(ValueError, match="max_samples"):
        mem.collect_activations(model, [x], max_samples=0)
