"""``RotationReport``: what :func:`orthokit.rotation.rotate_model` rotated offline, online, or could not, and the proof.

Example:
    >>> from orthokit.rotation.report import RotationReport
    >>> from orthokit.rotation.registry import make_rotation
    >>> rep = RotationReport("llama", offline=["embed_tokens [R1]"], online=["layers.0.mlp.down_proj [R4]"],
    ...                      skipped={"R3": "not requested"}, rotations={"R1": make_rotation("hadamard", 8)},
    ...                      max_rel_error=3e-7, checked=True)
    >>> print(rep.summary().splitlines()[0])
    RotationReport(llama): 1 offline, 1 online, 1 skipped; proof: max rel error 3e-07 (checked)
    >>> import json
    >>> json.loads(json.dumps(rep.to_dict()))["rotations"]["R1"]["n"]
    8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from orthokit.rotation.base import Rotation

__all__ = ["RotationReport"]


def _json_safe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


@dataclass
class RotationReport:
    """Outcome of a model rewrite.

    Attributes:
        family: ``"llama"`` or ``"bert"``.
        offline: sites whose weights were rewritten (fused), e.g. ``"model.layers.0.self_attn.o_proj [R1ᵀ out, R2 in]"``.
        online: sites that now rotate at run time (R3 on q/k, R4 before down_proj, BERT online input rotations).
        skipped: site → reason it was not rotated (e.g. ``"R1"`` on a post-LN encoder, ``"R3"`` with
            flash attention).
        rotations: the rotations used, by key (``"R1"``, ``"R2"``, ``"R3"``, ``"R4"``, per-site keys).
        max_rel_error: the proof, ``max|y' − y| / max|y|`` over the compared outputs (``None`` if not checked).
        checked: whether the proof ran.
        notes: free-form remarks (e.g. the Hadamard block structure used for a non-Hadamard order).
    """

    family: str
    offline: list[str] = field(default_factory=list)
    online: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    rotations: dict[str, Rotation] = field(default_factory=dict)
    max_rel_error: float | None = None
    checked: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A short human-readable table: counts and proof on the first line, then one line per site."""
        proof = (
            f"max rel error {self.max_rel_error:.3g} (checked)"
            if self.checked and self.max_rel_error is not None
            else "not checked"
        )
        lines = [
            f"RotationReport({self.family}): {len(self.offline)} offline, {len(self.online)} online, "
            f"{len(self.skipped)} skipped; proof: {proof}"
        ]
        for key, rot in self.rotations.items():
            lines.append(f"  rotation {key:<8} {rot!r}")
        lines += [f"  offline  {s}" for s in self.offline]
        lines += [f"  online   {s}" for s in self.online]
        lines += [f"  skipped  {k}: {v}" for k, v in self.skipped.items()]
        lines += [f"  note     {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; each rotation as its ``state_dict()`` (tensors as nested lists)."""
        return {
            "family": self.family,
            "offline": list(self.offline),
            "online": list(self.online),
            "skipped": dict(self.skipped),
            "rotations": {k: _json_safe(r.state_dict()) for k, r in self.rotations.items()},
            "max_rel_error": self.max_rel_error,
            "checked": self.checked,
            "notes": list(self.notes),
        }
