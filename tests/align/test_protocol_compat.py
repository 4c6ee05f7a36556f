"""compatibility_report with compatible-training methods: new/old reads ``compatible_features``, new/new
``new_features`` (checked against the float64 brute force of ``_protocol_checks``)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from orthokit.align.lambda_compat import LambdaOrthogonal
from orthokit.align.protocol import compatibility_report

from ._protocol_checks import assert_close, ref_metrics


def _data(seed: int = 0, n: int = 90, d: int = 10, n_cls: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_cls
    x = torch.randn(n_cls, d, generator=g)[y] + 1.1 * torch.randn(n, d, generator=g)
    return x, y


class _TwoFeatures(nn.Module):
    """A method whose compatible feature (a 5-d linear view) differs from its new feature (an 8-d MLP with
    dropout, so eval mode matters); ``forward`` is deliberately neither."""

    def __init__(self, d: int = 10) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.new_net = nn.Sequential(nn.Linear(d, 8), nn.Dropout(0.5), nn.Tanh())
        self.compat = nn.Linear(d, 5, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.calls: list[bool] = []  # training flag seen by each call

    def new_features(self, x: Tensor) -> Tensor:
        self.calls.append(self.training)
        return self.new_net(x)

    def compatible_features(self, x: Tensor) -> Tensor:
        self.calls.append(self.training)
        return self.compat(x)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - must not be called
        raise AssertionError("compatibility_report called forward instead of new/compatible_features")


def _eval_feats(m: _TwoFeatures, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        was = m.training
        m.eval()
        out = m.new_net(x), m.compat(x)
        m.train(was)
    return out


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_rows_use_the_right_feature_separate_sets(metric: str) -> None:
    x, y = _data()
    W_old = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    old = lambda t: t @ W_old  # noqa: E731
    m = _TwoFeatures().train()
    xq, yq, xg, yg = x[:30], y[:30], x[30:], y[30:]
    r = compatibility_report(old, m, xq, xg, (yq, yg), metric=metric, include_old_new=True, batch_size=7)
    assert m.training and m.new_net[1].training  # flags restored
    assert m.calls and not any(m.calls)  # every feature computed in eval mode
    new_q, comp_q = _eval_feats(m, xq)
    new_g, comp_g = _eval_feats(m, xg)
    old_q, old_g = old(xq), old(xg)
    want = {
        "old/old": ref_metrics(old_q, old_g, yq, yg, metric),
        "new/old": ref_metrics(comp_q, old_g, yq, yg, metric),
        "new/new": ref_metrics(new_q, new_g, yq, yg, metric),
        "old/new": ref_metrics(old_q, comp_g, yq, yg, metric),
    }
    assert list(r.rows) == list(want)
    for k in want:
        assert_close(r.rows[k], want[k], tol=1e-9)
    # the feature choice matters here: the plain new feature gives a different new/old row
    assert r.rows["new/old"] != ref_metrics(new_q, old_g, yq, yg, metric)
    assert r.dims == {"old": 6, "new": 8, "compatible": 5}
    md = r.to_markdown()
    assert "5-d compatible feature" in md and "first 5 dims" in md


def test_leave_one_out_and_precomputed_keys_agree() -> None:
    x, y = _data(3)
    W_old = torch.randn(10, 5, generator=torch.Generator().manual_seed(4))
    m = _TwoFeatures()
    r = compatibility_report(lambda t: t @ W_old, m, x, x, (y, y))  # query is gallery: embedded once
    assert r.exclude_self
    new_f, comp_f = _eval_feats(m, x)
    old_f = x @ W_old
    assert_close(r.rows["new/old"], ref_metrics(comp_f, old_f, y, y, exclude_self=True), tol=1e-9)
    assert_close(r.rows["new/new"], ref_metrics(new_f, new_f, y, y, exclude_self=True), tol=1e-9)
    pre = compatibility_report(
        {"query": old_f, "gallery": old_f},
        {"query": new_f, "gallery": new_f, "compatible_query": comp_f, "compatible_gallery": comp_f},
        labels=(y, y),
        exclude_self=True,
        include_old_new=True,
    )
    for k in r.rows:
        assert_close(pre.rows[k], r.rows[k], tol=1e-12)
    assert_close(pre.rows["old/new"], ref_metrics(old_f, comp_f, y, y, exclude_self=True), tol=1e-9)
    # without the compatible keys the plain new feature serves every row (the earlier behaviour)
    plain = compatibility_report(
        {"query": old_f, "gallery": old_f},
        {"query": new_f, "gallery": new_f},
        labels=(y, y),
        exclude_self=True,
    )
    assert_close(plain.rows["new/old"], ref_metrics(new_f, old_f, y, y, exclude_self=True), tol=1e-9)
    assert "compatible" not in plain.dims


def test_a_registered_method_maps_its_query_through_its_compatibility_map() -> None:
    x, y = _data(5, d=12)
    torch.manual_seed(0)
    old_model = nn.Linear(12, 4)
    method = LambdaOrthogonal(nn.Linear(12, 9), feat_dim=9, n_classes=4, old_dim=4, old_model=old_model)
    r = compatibility_report(old_model, method, x[:40], x[40:], (y[:40], y[40:]))
    with torch.no_grad():
        comp_q = method.compatible_features(x[:40])
        old_g = old_model(x[40:])
    assert comp_q.shape[1] == 4 and r.dims == {"old": 4, "new": 9, "compatible": 4}
    assert_close(r.rows["new/old"], ref_metrics(comp_q, old_g, y[:40], y[40:]), tol=1e-9)


def test_compatible_feature_errors_name_the_key() -> None:
    x, y = _data(6, n=40)
    old = {"query": x, "gallery": x}
    with pytest.raises(ValueError, match="new compatible_query features have 39 rows but old ones have 40"):
        compatibility_report(old, {**old, "compatible_query": x[:39]}, labels=(y, y))
    with pytest.raises(
        ValueError, match="new compatible_query features are 4-d but new compatible_gallery features are 3-d"
    ):
        compatibility_report(
            old, {**old, "compatible_query": x[:, :4], "compatible_gallery": x[:, :3]}, labels=(y, y)
        )
    bad = x.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"new compatible_query features: non-finite .* first row 2"):
        compatibility_report(old, {**old, "compatible_query": bad}, labels=(y, y))
    with pytest.raises(TypeError, match="new compatible_query features must be a Tensor"):
        compatibility_report(old, {**old, "compatible_query": [1.0]}, labels=(y, y))
    m = _TwoFeatures()
    m.compatible_features = lambda t: (t,)  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="new returned tuple for the compatible_query"):
        compatibility_report(lambda t: t, m, x, x, (y, y))
    assert m.training  # the failed call left the flags as they were
