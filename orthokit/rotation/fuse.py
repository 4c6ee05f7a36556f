"""Norm-fusion primitives of computational invariance (in place, float64, cast back).

- :func:`fold_norm` — ``norm(x) = γ ⊙ x̂ + β`` read by linears ``W``: ``W ← W diag(γ)``, ``b ← b + W β``, then
  ``γ := 1``, ``β := 0`` (QuaRot ``fuse_ln_linear``; SpinQuant ``fuse_norm_utils``). Works for RMSNorm (no ``β``)
  and LayerNorm.
- :func:`bake_mean` — for a *pre-LN LayerNorm* model the LayerNorm's centering ``x − mean(x)`` must be moved
  out of the norm before the residual can be rotated (``LN(x) = RMSNorm(x − μ(x))``; the mean is not
  rotation-invariant). A linear writing into the residual gets ``W ← W − 1·mean_rows(W)``, ``b ← b − mean(b)``, so
  everything it writes has zero mean across the hidden dimension (QuaRot ``bake_mean_into_linear``).
- :func:`center_embedding` — the same for the rows of an embedding.
- :func:`untie_head` — give a head tied to the input embedding its own weight.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.rotation.fuse import fold_norm
    >>> ln, lin = nn.LayerNorm(6), nn.Linear(6, 3)
    >>> with torch.no_grad():
    ...     _ = ln.weight.uniform_(0.5, 2.0), ln.bias.normal_()
    >>> x = torch.randn(4, 6)
    >>> ref = lin(ln(x))
    >>> fold_norm(ln, [lin])
    >>> torch.allclose(lin(ln(x)), ref, atol=1e-6), bool(ln.weight.eq(1).all()), bool(ln.bias.eq(0).all())
    (True, True, True)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["bake_mean", "center_embedding", "fold_norm", "untie_head"]


@torch.no_grad()
def fold_norm(norm: nn.Module, linears: Iterable[nn.Linear]) -> None:
    """Fold ``norm``'s gain (and bias) into every linear reading it; the norm then has gain 1 (and bias 0).

    Raises:
        TypeError: ``norm`` has no ``weight`` or a reader is not an ``nn.Linear``.
        ValueError: a reader's ``in_features`` differs from the norm's size (nothing is modified).
    """
    linears = list(linears)
    gamma = getattr(norm, "weight", None)
    if not isinstance(gamma, torch.Tensor):
        raise TypeError(f"norm: {type(norm).__name__} has no weight to fold")
    for lin in linears:
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"linears: expected nn.Linear, got {type(lin).__name__}")
        if lin.in_features != gamma.numel():
            raise ValueError(f"linears: in_features {lin.in_features} != norm size {gamma.numel()}")
    beta = getattr(norm, "bias", None)
    g64 = gamma.detach().to(torch.float64)
    b64 = beta.detach().to(torch.float64) if isinstance(beta, torch.Tensor) else None
    new = []
    for lin in linears:
        w64 = lin.weight.detach().to(torch.float64)
        bias = None
        if b64 is not None and bool(b64.ne(0).any()):
            bias = w64 @ b64 + (lin.bias.detach().to(torch.float64) if lin.bias is not None else 0.0)
        new.append((lin, w64 * g64, bias))
    for lin, w, b in new:
        lin.weight.copy_(w)
        if b is not None:
            if lin.bias is None:
                lin.bias = nn.Parameter(b.to(lin.weight.dtype), requires_grad=lin.weight.requires_grad)
            else:
                lin.bias.copy_(b)
    gamma.fill_(1.0)
    if isinstance(beta, torch.Tensor):
        beta.zero_()


@torch.no_grad()
def bake_mean(linear: nn.Linear) -> None:
    """Make every output of a residual-writing ``linear`` zero-mean across its features (``W ← W − mean_rows(W)``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> lin = nn.Linear(4, 6)
        >>> bake_mean(lin)
        >>> float(lin(torch.randn(3, 4)).detach().mean(-1).abs().max()) < 1e-6
        True
    """
    w = linear.weight.detach().to(torch.float64)
    linear.weight.copy_(w - w.mean(dim=0, keepdim=True))
    if linear.bias is not None:
        b = linear.bias.detach().to(torch.float64)
        linear.bias.copy_(b - b.mean())


@torch.no_grad()
def center_embedding(embedding: nn.Embedding) -> None:
    """Subtract from each embedding row its mean over the hidden dimension."""
    w = embedding.weight.detach().to(torch.float64)
    embedding.weight.copy_(w - w.mean(dim=-1, keepdim=True))


def untie_head(model: nn.Module, head: nn.Linear, embedding: nn.Embedding) -> bool:
    """Give ``head`` its own copy of ``embedding.weight`` if the two share it; clear the config's tying flags.

    Returns whether the weights were tied.

    Example:
        >>> from torch import nn
        >>> emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
        >>> head.weight = emb.weight
        >>> untie_head(nn.Module(), head, emb), head.weight is emb.weight
        (True, False)
    """
    if head.weight is not embedding.weight:
        return False
    head.weight = nn.Parameter(
        embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad
    )
    config = getattr(model, "config", None)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else None
        for cfg in {id(c): c for c in (config, text) if c is not None}.values():
            cfg.tie_word_embeddings = False
    if isinstance(getattr(model, "all_tied_weights_keys", None), dict):
        model.all_tied_weights_keys = {}
    return True
