"""orthokit.rotation — rotations that make quantization easy.

An orthogonal change of basis inside a network leaves its function unchanged but spreads outliers, so weights,
activations and KV caches quantize with far less damage (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al. 2024;
OstQuant, Hu et al. 2025). This family builds it once for transformers Llama-family decoders and BERT-family
encoders, on CPU, with a proof of equivalence every time:

* rotations (:data:`ROTATIONS`, :func:`make_rotation`): ``identity``, randomized ``hadamard`` (any order: Paley ⊗
  Sylvester, block-diagonal fallback, never zero-padding), ``haar``, ``two_block_hadamard`` (Zilca & Mendelson);
  stored as signs/seeds, never generator state; :mod:`~orthokit.rotation.metrics` (kurtosis, max/RMS, QSUR, ...);
* :func:`rotate_model` — the computational-invariance rewriter (norm fusion, untying, R1 residual, R2 per-head V/O,
  online R3 q/k and R4 ``down_proj`` Hadamards; post-LN BERT gets exact online per-linear rotations), returning a
  :class:`RotationReport` after checking the rotated model against the original;
* :func:`learn_rotation` — SpinQuant (Cayley SGD on the Stiefel manifold, :class:`CayleySGD`) and OstQuant
  (rotation + scaling, KL-Top) through a fake-quantized straight-through forward;
* :func:`quantize_model` — fake quantization (per-channel/group weights, per-token activations, per-head KV) with
  RTN, GPTQ (:func:`gptq_quantize`) or RSQ token-weighted GPTQ;
* :class:`RotatedQuantizedCache` — a 3-bit rotated KV cache (TurboESM-style Lloyd–Max codes + 1-bit residual
  correction) usable in ``generate``.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.rotation import rotate_model
    >>> _ = torch.manual_seed(0)
    >>> cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    ...                   num_key_value_heads=2, vocab_size=128)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> rotated, report = rotate_model(model, "hadamard", seed=0)      # checks equivalence itself (1e-4)
    >>> report.checked and report.max_rel_error < 1e-4
    True
"""

from __future__ import annotations

from orthokit.rotation._functional import fuse_llama_norms, rotate_llama_params
from orthokit.rotation.attention import install_attention, uninstall_attention
from orthokit.rotation.base import (
    DenseRotation,
    IdentityRotation,
    Rotation,
    check_orthogonal,
    orthogonality_error,
)
from orthokit.rotation.bert import rotate_bert
from orthokit.rotation.cayley_sgd import CayleySGD
from orthokit.rotation.gptq import HessianAccumulator, gptq_quantize
from orthokit.rotation.haar import HaarRotation
from orthokit.rotation.hadamard import HadamardRotation
from orthokit.rotation.kv_cache import (
    KVCalibration,
    RotatedQuantizedCache,
    calibrate_kv_rotation,
    decode_fidelity,
)
from orthokit.rotation.learn import LearnedRotation, learn_rotation
from orthokit.rotation.llama import rotate_llama
from orthokit.rotation.lloyd_max import LloydMaxQuantizer, fit_lloyd_max, lloyd_max_gaussian, lloyd_max_sphere
from orthokit.rotation.metrics import (
    angular_error,
    kurtosis,
    log_qsur,
    log_qsur_max,
    outlier_ratio,
    relative_error,
)
from orthokit.rotation.online import OnlineRotatedLinear, unwrap_all, wrap_linear
from orthokit.rotation.ostquant import kl_top
from orthokit.rotation.quant import quantize_activation, quantize_kv, quantize_weight, ste
from orthokit.rotation.quantize_model import KVQuantizer, QuantReport, quantize_model
from orthokit.rotation.registry import ROTATIONS, RotationSpec, make_rotation
from orthokit.rotation.report import RotationReport
from orthokit.rotation.rewrite import rewriter_for, rotate_model
from orthokit.rotation.rsq import attention_concentration, rsq_token_weights
from orthokit.rotation.two_block import TwoBlockHadamard

__all__ = [
    "CayleySGD",
    "DenseRotation",
    "HaarRotation",
    "HadamardRotation",
    "HessianAccumulator",
    "IdentityRotation",
    "KVCalibration",
    "KVQuantizer",
    "LearnedRotation",
    "LloydMaxQuantizer",
    "OnlineRotatedLinear",
    "QuantReport",
    "ROTATIONS",
    "RotatedQuantizedCache",
    "Rotation",
    "RotationReport",
    "RotationSpec",
    "TwoBlockHadamard",
    "angular_error",
    "attention_concentration",
    "calibrate_kv_rotation",
    "check_orthogonal",
    "decode_fidelity",
    "fit_lloyd_max",
    "fuse_llama_norms",
    "gptq_quantize",
    "install_attention",
    "kl_top",
    "kurtosis",
    "learn_rotation",
    "lloyd_max_gaussian",
    "lloyd_max_sphere",
    "log_qsur",
    "log_qsur_max",
    "make_rotation",
    "orthogonality_error",
    "outlier_ratio",
    "quantize_activation",
    "quantize_kv",
    "quantize_model",
    "quantize_weight",
    "relative_error",
    "rewriter_for",
    "rotate_bert",
    "rotate_llama",
    "rotate_llama_params",
    "rotate_model",
    "rsq_token_weights",
    "ste",
    "uninstall_attention",
    "unwrap_all",
    "wrap_linear",
]
