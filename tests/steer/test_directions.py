"""mean_difference (float64 closed form) and collect_residuals (against output_hidden_states)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from orthokit.steer.directions import collect_residuals, mean_difference

from ._models import HIDDEN, tiny_ids, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_model("llama")


def test_mean_difference_closed_form_and_per_layer() -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(3, 10, 6, generator=g)
    neg = torch.randn(3, 4, 6, generator=g) + 1.0
    out = mean_difference(pos, neg)
    ref = pos.double().sum(1) / 10 - neg.double().sum(1) / 4
    assert out.shape == (3, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(mean_difference(pos[1], neg[1]), out[1])
    assert mean_difference(pos.double(), neg).dtype == torch.float64


def test_mean_difference_errors() -> None:
    x = torch.randn(4, 6)
    with pytest.raises(TypeError, match="pos must be a torch.Tensor"):
        mean_difference([[1.0]], x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"neg must be \[n, d\]"):
        mean_difference(x, torch.randn(6))
    with pytest.raises(ValueError, match="rank"):
        mean_difference(x, torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="neg d = 5"):
        mean_difference(x, torch.randn(4, 5))
    with pytest.raises(ValueError, match="neg L = 3"):
        mean_difference(torch.randn(2, 4, 6), torch.randn(3, 4, 6))
    with pytest.raises(ValueError, match="neg has no rows"):
        mean_difference(x, torch.randn(0, 6))
    with pytest.raises(ValueError, match="pos contains NaN"):
        mean_difference(x * float("nan"), x)
    with pytest.raises(TypeError, match="floating point"):
        mean_difference(x.long(), x)


def test_collect_residuals_matches_hidden_states(llama: nn.Module) -> None:
    ids = tiny_ids(3, 6)
    with torch.no_grad():
        hs = llama(ids, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is the output of block i, except the last entry, which has the final norm applied
    allpos = collect_residuals(llama, ids, layers=[0])
    assert allpos.shape == (1, 18, HIDDEN)
    torch.testing.assert_close(allpos[0], hs[1].reshape(-1, HIDDEN), rtol=0, atol=1e-5)
    last = collect_residuals(llama, ids, positions="last", batch_size=2)
    assert last.shape == (2, 3, HIDDEN)
    torch.testing.assert_close(last[0], hs[1][:, -1], rtol=0, atol=1e-5)
    assert not torch.allclose(last[1], hs[2][:, -1])  # raw block output, not the final-normed state


def test_collect_residuals_with_padding(llama: nn.Module) -> None:
    """Masked positions are dropped; "last" takes the last real token with left or right padding."""
    ids = tiny_ids(1, 5)
    ref = collect_residuals(llama, ids, layers=[1], positions="last")
    pad = torch.zeros(1, 2, dtype=torch.long)
    one = torch.ones(1, 5, dtype=torch.long)
    right = collect_residuals(
        llama, torch.cat([ids, pad], 1), layers=[1], positions="last", attention_mask=torch.cat([one, pad], 1)
    )
    torch.testing.assert_close(right, ref, rtol=0, atol=1e-5)
    allpos = collect_residuals(
        llama, torch.cat([ids, pad], 1), layers=[1], attention_mask=torch.cat([one, pad], 1)
    )
    assert allpos.shape == (1, 5, HIDDEN)


def test_collect_residuals_errors(llama: nn.Module) -> None:
    ids = tiny_ids()
    with pytest.raises(TypeError, match="integer"):
        collect_residuals(llama, ids.float())
    with pytest.raises(ValueError, match="positions must be one of"):
        collect_residuals(llama, ids, positions="first")
    with pytest.raises(ValueError, match="attention_mask must be a tensor of shape"):
        collect_residuals(llama, ids, attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="no unmasked position"):
        collect_residuals(llama, ids, attention_mask=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        collect_residuals(llama, ids, batch_size=0)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        collect_residuals(llama, ids, layers=[5])
