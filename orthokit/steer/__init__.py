"""``orthokit.steer`` — activation steering of transformers decoders with removable, composable forward hooks.

A *steerer* edits residual-stream states ``h [..., d]``; :func:`steer` hooks it onto chosen decoder blocks of any
transformers causal LM and returns a :class:`SteeringHandle` (``.remove()``, context manager; handles compose).
Methods (:data:`STEERERS`, capability ``norm_preserving`` tested where promised):

* ``addition`` (:class:`ActivationAddition`) — ``h + α r̂``, the baseline (``docs/steer/design.md``).
* ``ablation`` (:class:`DirectionalAblation`) — ``h − (h·r̂) r̂``; :func:`ablate` applies it at every write into
  the residual stream and :func:`orthogonalize_weights` bakes it into the weights — equal to the hooks to 1e-5
  in float32 (Arditi et al. 2024; ``docs/steer/ablation.md``).
* ``angular`` (:class:`AngularSteering`) — set the state's angle in a 2-D plane, norm unchanged (Vu & Nguyen).
* ``selective`` (:class:`SelectiveSteering`, :func:`selective_steer`) — norm-preserving rotation on the layers
  where the two classes project with opposite signs (Dang & Ngo).
* ``cylindrical`` (:class:`CylindricalSteering`) — a move along the concept axis plus a penalized move in its
  normal plane (the Cylindrical Representation Hypothesis; changes the norm by design).

Directions: :func:`mean_difference` of :func:`collect_residuals`, :func:`function_vector` (Todd et al. 2024).
Readouts: :func:`logit_lens`, :class:`TunedLens`, :func:`decodability` (``docs/steer/lens.md``). Methods and
deviations from the authors' code: ``docs/steer/methods.md``; the benchmark: ``docs/steer/benchmark.md``.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.steer import ablate, orthogonalize_weights
    >>> torch.manual_seed(0) and None
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> r, ids = torch.randn(32), torch.randint(0, 64, (2, 12))
    >>> with torch.no_grad(), ablate(model, r):          # hooks at every residual write
    ...     hooked = model(ids).logits
    >>> _ = orthogonalize_weights(model, r)              # the same edit, baked into the weights
    >>> with torch.no_grad():
    ...     baked = model(ids).logits
    >>> bool((hooked - baked).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

# importing the method modules registers them
from orthokit.steer._hooks import (
    Steerer,
    SteeringHandle,
    as_direction,
    hidden_size,
    num_hidden_layers,
    residual_layers,
    steer,
)
from orthokit.steer.ablation import (
    DirectionalAblation,
    ResidualWriters,
    ablate,
    orthogonalize_weights,
    residual_writers,
)
from orthokit.steer.addition import ActivationAddition
from orthokit.steer.angular import (
    AngularSteering,
    SteeringPlane,
    orthonormal_plane,
    plane_angle,
    steering_plane,
)
from orthokit.steer.cylindrical import CylindricalSteering, cylindrical_coordinates
from orthokit.steer.directions import collect_residuals, mean_difference
from orthokit.steer.function_vectors import (
    FunctionVector,
    attention_out_projections,
    function_vector,
    head_indirect_effects,
    mean_head_activations,
)
from orthokit.steer.lens import TunedLens, decodability, final_norm_and_head, logit_lens, residual_states
from orthokit.steer.registry import STEERERS
from orthokit.steer.selective import (
    SelectivePlan,
    SelectiveSteering,
    class_alignment,
    norm_sites,
    plan_selective,
    select_layers,
    selective_steer,
    steer_norm_sites,
)

__all__ = [
    "STEERERS",
    # hooks
    "Steerer",
    "SteeringHandle",
    "steer",
    "residual_layers",
    "num_hidden_layers",
    "hidden_size",
    "as_direction",
    # methods
    "ActivationAddition",
    "DirectionalAblation",
    "ablate",
    "orthogonalize_weights",
    "residual_writers",
    "ResidualWriters",
    "AngularSteering",
    "SteeringPlane",
    "steering_plane",
    "orthonormal_plane",
    "plane_angle",
    "SelectiveSteering",
    "SelectivePlan",
    "select_layers",
    "class_alignment",
    "plan_selective",
    "selective_steer",
    "norm_sites",
    "steer_norm_sites",
    "CylindricalSteering",
    "cylindrical_coordinates",
    # directions and readouts
    "mean_difference",
    "collect_residuals",
    "FunctionVector",
    "function_vector",
    "mean_head_activations",
    "head_indirect_effects",
    "attention_out_projections",
    "logit_lens",
    "TunedLens",
    "decodability",
    "final_norm_and_head",
    "residual_states",
]
