r"""OstQuant pieces: learnable positive diagonal scalings (log-parametrized) and the KL-Top loss.

OstQuant (Hu et al., *OstQuant: Refining Large Language Model Quantization with Orthogonal and Scaling
Transformations for Better Distribution Fitting*, ICLR 2025, arXiv 2501.13987) learns, besides the residual
rotation ``R1`` (on the Stiefel manifold), diagonal *scalings* fused exactly into the weights:

* norm–linear smoothing: RMSNorm gain ``γ ← γ ⊙ s``, every linear reading that norm ``W ← W diag(1/s)``;
* up/down smoothing: ``W_up`` rows ``× s``, ``W_down`` columns ``÷ s`` (SwiGLU: ``act(g)·(u s) = (act(g)·u) s``);
* value/output smoothing: ``W_v`` rows ``× s``, ``W_o`` columns ``÷ s`` (repeated over the query heads of a kv
  group).

The exact fusion is :func:`orthokit.rotation._functional.rotate_llama_params` (``norm_scales``, ``ffn_scales``,
``ov_scales``); this module holds the learnable parameters ``s = exp(θ)`` (positive by construction, ``θ = 0`` is
the identity) and the loss.

**KL-Top.** For each position, take the indices ``I`` of the ``k`` largest full-precision logits ``z``; with
``p = softmax(z_I)`` and ``q = softmax(ẑ_I)`` (the quantized model's logits at the same indices, both renormalized
over ``I``), the loss is ``KL(p ‖ q) = Σ_{i∈I} p_i (log p_i − log q_i)``, averaged over positions. Restricting to the
top ``k`` drops the long tail of near-zero probabilities whose logits are mostly noise on a small calibration set.

Reconstruction note: the OstQuant code (``BrotherHappy/OSTQuant``) is not in this project's reference store; this
module follows the paper's description. The paper text available here does not fix ``k``; orthokit's default is
``k = 32`` (an orthokit choice, capped at the vocabulary size), and whether the top-``k`` distributions are
renormalized is likewise this reconstruction's choice (they are).

Example:
    >>> import torch
    >>> from orthokit.rotation.ostquant import kl_top
    >>> z = torch.tensor([[4.0, 3.0, 0.0, -9.0]])
    >>> float(kl_top(z, z, k=2))
    0.0
    >>> bool(kl_top(z, z.flip(-1), k=2) > 0)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from orthokit.rotation._functional import LlamaDims

__all__ = ["OstQuantScales", "kl_top"]

#: orthokit's default ``k`` for :func:`kl_top` (the paper text in the store does not fix it)
DEFAULT_TOP_K = 32


def kl_top(fp_logits: Tensor, q_logits: Tensor, *, k: int = DEFAULT_TOP_K) -> Tensor:
    """KL-Top loss (OstQuant): ``KL(p‖q)`` over the ``k`` largest full-precision logits of each position.

    Args:
        fp_logits: full-precision logits ``(..., vocab)`` (treated as a constant target).
        q_logits: the quantized model's logits, same shape (gradients flow into these).
        k: how many top full-precision logits to keep (capped at the vocabulary size).

    Returns:
        the mean over positions, a scalar in ``q_logits``' dtype.
    """
    if not isinstance(fp_logits, Tensor) or not isinstance(q_logits, Tensor):
        raise TypeError("kl_top: fp_logits and q_logits must be tensors")
    if fp_logits.shape != q_logits.shape or fp_logits.dim() < 1:
        raise ValueError(
            f"kl_top: fp_logits {tuple(fp_logits.shape)} and q_logits {tuple(q_logits.shape)} must share a shape"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"kl_top: k must be a positive int, got {k!r}")
    k = min(k, fp_logits.shape[-1])
    fp = fp_logits.detach().to(q_logits.dtype)
    top, idx = fp.topk(k, dim=-1)
    log_p = torch.log_softmax(top, dim=-1)
    log_q = torch.log_softmax(q_logits.gather(-1, idx), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


class OstQuantScales(nn.Module):
    """Log-parametrized positive scalings for a Llama-family model (all start at 1).

    Parameters (``s = exp(θ)``):

    * ``norm.{i}.input`` / ``norm.{i}.post`` — length ``hidden``: the input / post-attention RMSNorm of layer ``i``
      (the final norm is not scaled: the head stays in 16 bits, so there is nothing to smooth);
    * ``ffn.{i}`` — length ``intermediate``;
    * ``ov.{i}`` — length ``head_dim · n_kv_heads``.

    :meth:`as_kwargs` returns the ``norm_scales`` / ``ffn_scales`` / ``ov_scales`` keywords of
    :func:`~orthokit.rotation._functional.rotate_llama_params` (differentiable); :meth:`export` the same, detached,
    in float64 (what :func:`~orthokit.rotation.rewrite.rotate_model` takes as ``scales=``).

    Args:
        dims: the model's :class:`~orthokit.rotation._functional.LlamaDims`.
        sites: which groups to learn, a subset of ``("norm", "ffn", "ov")``.
    """

    def __init__(self, dims: LlamaDims, sites: tuple[str, ...] = ("norm", "ffn", "ov")) -> None:
        super().__init__()
        unknown = set(sites) - {"norm", "ffn", "ov"}
        if unknown:
            raise ValueError(
                f"sites: unknown scale site(s) {sorted(unknown)}; expected a subset of norm, ffn, ov"
            )
        self.dims = dims
        self.sites = tuple(sites)
        self.theta = nn.ParameterDict()
        for i in range(dims.n_layers):
            if "norm" in sites:
                self.theta[f"norm_{i}_input"] = nn.Parameter(torch.zeros(dims.hidden))
                self.theta[f"norm_{i}_post"] = nn.Parameter(torch.zeros(dims.hidden))
            if "ffn" in sites:
                self.theta[f"ffn_{i}"] = nn.Parameter(torch.zeros(dims.intermediate))
            if "ov" in sites:
                self.theta[f"ov_{i}"] = nn.Parameter(torch.zeros(dims.head_dim * dims.n_kv_heads))

    def as_kwargs(self, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """``{"norm_scales": {...}, "ffn_scales": {...}, "ov_scales": {...}}`` with ``s = exp(θ)`` (differentiable)."""
        norm: dict[str, Tensor] = {}
        ffn: dict[int, Tensor] = {}
        ov: dict[int, Tensor] = {}
        for key, th in self.theta.items():
            kind, i = key.split("_")[0], int(key.split("_")[1])
            s = th.to(dtype).exp()
            if kind == "norm":
                which = "input_layernorm" if key.endswith("input") else "post_attention_layernorm"
                norm[f"layers.{i}.{which}"] = s
            elif kind == "ffn":
                ffn[i] = s
            else:
                ov[i] = s
        return {"norm_scales": norm, "ffn_scales": ffn, "ov_scales": ov}

    @torch.no_grad()
    def export(self) -> dict[str, Any]:
        """Detached float64 copy of :meth:`as_kwargs` (for ``rotate_model(scales=...)`` and serialization)."""
        kw = self.as_kwargs(torch.float64)
        return {name: {k: v.detach().clone() for k, v in d.items()} for name, d in kw.items()}
