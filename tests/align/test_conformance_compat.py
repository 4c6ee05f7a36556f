"""Conformance of every backward-compatible training method in ``COMPAT_METHODS`` (interface + purpose).

The checks are plain ``check_*`` functions taking the method *class* (default: the registered one), so that
``test_compat_mutants.py`` can run the same checks on broken variants and assert they fail.

Purpose check, on a small synthetic problem: 8 Gaussian classes in R^20; the OLD model is a linear map
R^20 → R^6 trained with its classifier on classes 0–3 only, then frozen; the new backbone is a wider MLP
(20 → 64 → 16) trained 150 Adam steps with the method's loss on all 8 classes. Retrieval (cosine, CMC top-1 via
``orthokit.align.protocol.retrieval_metrics``): old/old = old queries vs old gallery; new/old = the method's
``compatible_features`` vs the same old gallery. Every compatible method must satisfy BCT's empirical criterion
new/old > old/old; ``independent`` must not (its new/old is near chance).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import orthokit.align.bct
import orthokit.align.bt2
import orthokit.align.independent
import orthokit.align.lambda_compat
import orthokit.align.oca  # noqa: F401  (registers every method)
from orthokit.align.bct import synthesize_prototypes
from orthokit.align.protocol import retrieval_metrics
from orthokit.align.registry import COMPAT_METHODS

D, C, OLD_DIM, FEAT_DIM, EXTRA = 20, 8, 6, 16, 4

#: method-specific constructor options used by every check
CFG: dict[str, dict[str, Any]] = {"bt2": {"extra_dims": EXTRA}}

#: extra parameters counted by hand for (feat_dim=16, old_dim=6, n_classes=8, BT² k=4)
HAND_EXTRA = {
    "independent": 0,
    "bct": 0,
    "oca": 16 * 16 + 16,  # orthogonal layer: unconstrained 16×16 'original' + bias
    "bt2": (16 * 6 + 6) + 16 * 16 + 6 * 6,  # old branch A (+bias), O_p, O_old
    "lambda_orthogonal": 6 * 16 + 6,  # affine map W (+c)
}
#: width of new_features
NEW_WIDTH = {"independent": 16, "bct": 16, "oca": 16, "bt2": 16 + EXTRA, "lambda_orthogonal": 16}


def make_problem(seed: int = 0, noise: float = 2.0, n_train: int = 1200) -> dict[str, Any]:
    """Synthetic old/new problem (see module docstring); deterministic in ``seed``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(C, D, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % C
        return means[y] + noise * torch.randn(n, D, generator=g), y

    Xtr, ytr = sample(n_train)
    Xq, yq = sample(300)
    Xg, yg = sample(600)
    old = nn.Linear(D, OLD_DIM)
    clf = nn.Linear(OLD_DIM, C // 2, bias=False)
    half = ytr < C // 2
    opt = torch.optim.Adam([*old.parameters(), *clf.parameters()], lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(clf(old(Xtr[half])), ytr[half]).backward()
        opt.step()
    old.requires_grad_(False)
    with torch.no_grad():
        F_old = old(Xtr)
    # the reference code's pseudo-classifier: class means of old features for every class
    P = synthesize_prototypes(F_old, ytr, None, C)
    return {"Xtr": Xtr, "ytr": ytr, "Xq": Xq, "yq": yq, "Xg": Xg, "yg": yg, "old": old, "P": P}


@pytest.fixture(scope="module")
def problem() -> dict[str, Any]:
    return make_problem(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is faster than two fighting over a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(
    name: str,
    problem: dict[str, Any],
    cls: type | None = None,
    seed: int = 0,
    backbone: nn.Module | None = None,
    old_model: nn.Module | None = None,
    **cfg: Any,
) -> nn.Module:
    torch.manual_seed(seed)
    if backbone is None:
        backbone = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, FEAT_DIM))
    cls = COMPAT_METHODS.get(name) if cls is None else cls
    kw = {**CFG.get(name, {}), **cfg}
    return cls(
        backbone,
        feat_dim=FEAT_DIM,
        n_classes=C,
        old_dim=OLD_DIM,
        old_prototypes=problem["P"],
        old_model=copy.deepcopy(problem["old"]) if old_model is None else old_model,
        **kw,
    )


def with_batchnorm(model: nn.Module, width: int, x: torch.Tensor) -> nn.Module:
    """``model`` followed by a BatchNorm1d whose running stats were set by one train-mode pass; frozen, eval."""
    bn_model = nn.Sequential(copy.deepcopy(model), nn.BatchNorm1d(width))
    with torch.no_grad():
        bn_model.train()(x)
    return bn_model.eval().requires_grad_(False)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module``, cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor], what: str) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys(), f"{what}: state keys changed"
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{what}.{k} changed"


def train(
    m: nn.Module, problem: dict[str, Any], steps: int, lr: float = 3e-3, seed: int = 0, wd: float = 0.0
) -> None:
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, problem["Xtr"].shape[0], (128,), generator=g)
        opt.zero_grad()
        m.loss(problem["Xtr"][idx], problem["ytr"][idx]).backward()
        opt.step()
    m.eval()


# ---------------------------------------------------------------------------------------------- checks
def check_interface(name: str, problem: dict[str, Any], cls: type | None = None) -> None:
    m = build(name, problem, cls)
    x = problem["Xtr"][:10]
    nf, cf = m.new_features(x), m.compatible_features(x)
    assert nf.shape == (10, NEW_WIDTH[name]) and nf.dtype == x.dtype, (
        f"{name}: new_features {tuple(nf.shape)}"
    )
    want = FEAT_DIM if name == "independent" else OLD_DIM
    assert cf.shape == (10, want) and cf.dtype == x.dtype, f"{name}: compatible_features {tuple(cf.shape)}"
    if COMPAT_METHODS.capabilities(name).get("compatible", True):
        # the compatible feature lives in the old space: exactly old_dim wide
        assert cf.shape[1] == OLD_DIM, f"{name}: compatible feature is not old_dim wide"
    extra = m.extra_parameters()
    assert isinstance(extra, int) and extra >= 0
    assert extra == HAND_EXTRA[name], f"{name}: extra_parameters {extra} != hand count {HAND_EXTRA[name]}"
    # float64 end to end
    m64 = build(
        name, {**problem, "P": problem["P"].double(), "old": copy.deepcopy(problem["old"]).double()}, cls
    )
    m64 = m64.double()
    out = m64.compatible_features(x.double())
    assert out.dtype == torch.float64


def check_loss(name: str, problem: dict[str, Any], cls: type | None = None) -> None:
    m = build(name, problem, cls)
    loss = m.loss(problem["Xtr"][:32], problem["ytr"][:32])
    assert loss.ndim == 0 and bool(torch.isfinite(loss)), f"{name}: loss {loss}"
    loss.backward()
    grads = [p.grad for p in m.backbone.parameters()]
    assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads), f"{name}: backbone grads"
    assert any(float(gr.abs().sum()) > 0 for gr in grads), f"{name}: zero backbone gradient"


def check_frozen(name: str, problem: dict[str, Any], cls: type | None = None) -> None:
    """Old prototypes and old model receive no gradient and stay bit-identical through AdamW steps."""
    m = build(name, problem, cls)
    P0 = problem["P"].clone()
    old0 = {k: v.clone() for k, v in problem["old"].state_dict().items()}
    frozen = [t for t in (getattr(m, "old_prototypes", None),) if t is not None]
    assert all(not t.requires_grad for t in frozen), f"{name}: old_prototypes is trainable"
    assert all(not p.requires_grad for p in m.old_model.parameters()), f"{name}: old_model is trainable"
    train(m, problem, steps=5, lr=1e-2, wd=0.1)
    assert m.old_model.training is False, f"{name}: old_model left eval mode"
    m.train()
    assert m.old_model.training is False, f"{name}: train() switched the old model to training mode"
    if getattr(m, "old_prototypes", None) is not None:
        assert torch.equal(m.old_prototypes, P0), f"{name}: old_prototypes changed"
    for k, v in m.old_model.state_dict().items():
        assert torch.equal(v, old0[k]), f"{name}: old_model.{k} changed"
    assert all(p.grad is None for p in m.old_model.parameters()), f"{name}: old_model got a gradient"


def check_bad_batch_untouched(name: str, problem: dict[str, Any], cls: type | None = None) -> None:
    """A bad batch raises a clear error from ``loss`` before any forward: with a BatchNorm backbone in
    ``train()`` every parameter and buffer (running stats, ``num_batches_tracked``) stays bit-identical."""
    backbone = nn.Sequential(nn.Linear(D, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, FEAT_DIM))
    m = build(name, problem, cls, backbone=backbone)
    m.train()
    x, y = problem["Xtr"][:16], problem["ytr"][:16]
    bad: list[tuple[Any, Any, str]] = [
        (x, y[:-1], "labels y has 15 entries for a batch of 16"),
        (x, y.float(), "1-D integer tensor"),
        (x, y.view(-1, 1), "1-D integer tensor"),
        (x, y + C, r"labels y must lie in \[0, 8\)"),
        (x, y - C, r"labels y must lie in \[0, 8\)"),
        (x, [0] * 16, "1-D integer tensor"),
        (x[:0], y[:0], "non-empty batch"),
        (x.tolist(), y, "x must be a torch.Tensor"),
    ]
    before = snapshot(m)
    for xb, yb, msg in bad:
        with pytest.raises((ValueError, TypeError), match=msg):
            m.loss(xb, yb)
        assert_unchanged(m, before, f"{name}: a rejected batch ({msg}) changed")
    assert all(p.grad is None for p in m.parameters()), f"{name}: a rejected batch left gradients"


def check_old_batchnorm(name: str, problem: dict[str, Any], cls: type | None = None) -> None:
    """An old model with BatchNorm keeps its running stats and parameters through train()/loss/steps."""
    old = with_batchnorm(problem["old"], OLD_DIM, problem["Xtr"][:256])
    m = build(name, problem, cls, old_model=old)
    before = snapshot(old)
    m.train()
    assert old.training is False, f"{name}: train() switched the BatchNorm old model to training mode"
    train(m, problem, steps=5, lr=1e-2, wd=0.1)
    assert old.training is False, f"{name}: old_model left eval mode"
    assert_unchanged(old, before, f"{name}: old_model")
    assert all(p.grad is None for p in old.parameters()), f"{name}: old_model got a gradient"


def check_bt2_independent(problem: dict[str, Any], cls: type | None = None) -> None:
    """BT²'s ``independent_model`` (λ₁ term) is frozen: no grad, always eval, state bit-identical."""
    ind = with_batchnorm(nn.Linear(D, FEAT_DIM), FEAT_DIM, problem["Xtr"][:256])
    m = build("bt2", problem, cls, independent_model=ind)
    assert m.independent_model is ind
    assert all(not p.requires_grad for p in ind.parameters()), "bt2: independent_model is trainable"
    before = snapshot(ind)
    m.train()
    assert ind.training is False, "bt2: train() switched independent_model to training mode"
    train(m, problem, steps=5, lr=1e-2, wd=0.1)
    assert ind.training is False, "bt2: independent_model left eval mode"
    assert_unchanged(ind, before, "bt2: independent_model")
    assert all(p.grad is None for p in ind.parameters()), "bt2: independent_model got a gradient"


def orthogonal_matrices(m: nn.Module) -> list[torch.Tensor]:
    if hasattr(m, "orthogonal_matrices"):
        return list(m.orthogonal_matrices().values())
    return [m.orthogonal_matrix()]


def check_orthogonal_layers(name: str, problem: dict[str, Any], cls: type | None = None) -> None:
    """OCA/BT² orthogonal layers stay orthogonal (max |QQᵀ − I| < 1e-5) after training steps."""
    m = build(name, problem, cls)
    train(m, problem, steps=20, lr=1e-2)
    for Q in orthogonal_matrices(m):
        Q = Q.detach()
        err = float((Q @ Q.T - torch.eye(Q.shape[0])).abs().max())
        assert err < 1e-5, f"{name}: orthogonal layer drifted, max|QQᵀ − I| = {err:.2e}"


def retrieval(m: nn.Module, problem: dict[str, Any]) -> tuple[float, float, float]:
    """(old/old, new/old, new/new) CMC top-1 with cosine distance."""
    with torch.no_grad():
        old = problem["old"]
        gal = old(problem["Xg"])
        oo = retrieval_metrics(old(problem["Xq"]), gal, problem["yq"], problem["yg"])["top1"]
        no = retrieval_metrics(m.compatible_features(problem["Xq"]), gal, problem["yq"], problem["yg"])[
            "top1"
        ]
        nn_ = retrieval_metrics(
            m.new_features(problem["Xq"]), m.new_features(problem["Xg"]), problem["yq"], problem["yg"]
        )["top1"]
    return oo, no, nn_


def check_purpose(
    name: str, problem: dict[str, Any], cls: type | None = None, steps: int = 150
) -> tuple[float, ...]:
    """BCT's empirical criterion: new/old top-1 > old/old top-1 (and the new model still learned: new/new high)."""
    m = build(name, problem, cls)
    train(m, problem, steps=steps)
    oo, no, nn_ = retrieval(m, problem)
    assert nn_ > 0.9, f"{name}: the new model did not learn (new/new top-1 {nn_:.3f})"
    assert no > oo, f"{name}: not backward compatible, new/old {no:.3f} <= old/old {oo:.3f}"
    return oo, no, nn_


def check_lambda_tolerance(problem: dict[str, Any], cls: type | None = None, lam: float = 0.1) -> float:
    """λ-orthogonal: with a strong penalty the trained map ends within λ of (semi-)orthogonal.

    ``‖WWᵀ − I‖_F`` is recomputed here from the singular values in float64; without the penalty the same
    training ends near 1.1–1.5 (measured), so a penalty that does not act is caught.
    """
    m = build("lambda_orthogonal", problem, cls, lam=lam, penalty_weight=100.0)
    train(m, problem, steps=150)
    s = torch.linalg.svdvals(m.map.weight.detach().double())
    gap = float(((s**2 - 1) ** 2).sum().sqrt())
    assert gap <= lam + 0.02, f"lambda_orthogonal: map left the λ-ball, ‖WWᵀ − I‖_F = {gap:.3f} > λ = {lam}"
    return gap


# ---------------------------------------------------------------------------------------------- tests
NAMES = COMPAT_METHODS.names()
COMPATIBLE = [n for n in NAMES if COMPAT_METHODS.capabilities(n).get("compatible", True)]
ORTHO = [n for n in NAMES if COMPAT_METHODS.capabilities(n).get("orthogonal_layers", False)]


def test_registry_lists_the_five_methods() -> None:
    assert set(NAMES) >= {"independent", "bct", "oca", "bt2", "lambda_orthogonal"}
    assert set(ORTHO) == {"oca", "bt2"}
    assert "independent" not in COMPATIBLE


@pytest.mark.parametrize("name", NAMES)
def test_interface(name: str, problem: dict[str, Any]) -> None:
    check_interface(name, problem)


@pytest.mark.parametrize("name", NAMES)
def test_loss_finite_and_differentiable(name: str, problem: dict[str, Any]) -> None:
    check_loss(name, problem)


@pytest.mark.parametrize("name", NAMES)
def test_frozen_parts(name: str, problem: dict[str, Any]) -> None:
    check_frozen(name, problem)


@pytest.mark.parametrize("name", ORTHO)
def test_orthogonal_layers_stay_orthogonal(name: str, problem: dict[str, Any]) -> None:
    check_orthogonal_layers(name, problem)


@pytest.mark.parametrize("name", COMPATIBLE)
def test_purpose_new_old_beats_old_old(name: str, problem: dict[str, Any]) -> None:
    check_purpose(name, problem)


def test_lambda_orthogonal_map_stays_within_tolerance(problem: dict[str, Any]) -> None:
    check_lambda_tolerance(problem)


def test_independent_is_not_compatible(problem: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="not backward compatible"):
        check_purpose("independent", problem)


@pytest.mark.parametrize("name", NAMES)
def test_bad_batch_leaves_state_untouched(name: str, problem: dict[str, Any]) -> None:
    check_bad_batch_untouched(name, problem)


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_old_model_untouched(name: str, problem: dict[str, Any]) -> None:
    check_old_batchnorm(name, problem)


def test_bt2_independent_model_frozen(problem: dict[str, Any]) -> None:
    check_bt2_independent(problem)


def test_extra_parameters_exclude_frozen_models_by_identity(problem: dict[str, Any]) -> None:
    """Even a frozen model made trainable afterwards is not counted: exclusion is by module identity."""
    ind = nn.Linear(D, FEAT_DIM)
    m = build("bt2", problem, independent_model=ind)
    ind.requires_grad_(True)
    m.old_model.requires_grad_(True)
    assert m.extra_parameters() == HAND_EXTRA["bt2"]


def test_state_dict_loads_into_a_method_built_without_the_frozen_models(problem: dict[str, Any]) -> None:
    """As docs/align/compat.md says: the state dict holds old_model.* / independent_model.*; strict=False loads
    the rest into a method built without them, and the two give the same features."""
    m = build("bt2", problem, independent_model=nn.Linear(D, FEAT_DIM))
    train(m, problem, steps=3)
    sd = m.state_dict()
    assert any(k.startswith("old_model.") for k in sd) and any(k.startswith("independent_model.") for k in sd)
    torch.manual_seed(1)
    bare = COMPAT_METHODS.get("bt2")(
        nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, FEAT_DIM)),
        feat_dim=FEAT_DIM,
        n_classes=C,
        old_dim=OLD_DIM,
        old_prototypes=torch.zeros_like(problem["P"]),
        extra_dims=EXTRA,
    )
    with pytest.raises(RuntimeError, match="Unexpected key"):
        bare.load_state_dict(sd)
    out = bare.load_state_dict(sd, strict=False)
    assert out.missing_keys == []
    assert all(k.startswith(("old_model.", "independent_model.")) for k in out.unexpected_keys)
    x = problem["Xq"][:20]
    with torch.no_grad():
        assert torch.equal(bare.eval().compatible_features(x), m.eval().compatible_features(x))
    assert torch.equal(bare.old_prototypes, problem["P"])
