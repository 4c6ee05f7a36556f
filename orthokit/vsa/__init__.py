"""``orthokit.vsa`` — MBAT vector-symbolic encoding with orthogonal binding matrices.

MBAT (Matrix Binding of Additive Terms; Gallant & Okaywe 2013) represents a structured object as one
fixed-length vector: terms are *bundled* by addition and *bound* to a role by multiplying with that role's
random matrix. With Gaussian matrices norms drift under repeated binding; orthogonal matrices keep them exactly
and unbind by the transpose (Gallant, arXiv 2202.04771). Binders (:data:`BINDERS`, capability ``orthogonal``
tested by the conformance suite):

* ``haar`` (:class:`HaarBinder`) — a dense Haar-random orthogonal matrix per role, O(d²) per bind.
* ``hadamard`` (:class:`HadamardBinder`) — structured ``(H·D)^k`` with seeded Rademacher diagonals, O(d log d)
  per bind, exactly orthogonal (orthokit's named option).
* ``gaussian`` (:class:`GaussianBinder`) — i.i.d. ``N(0, 1/d)`` entries, the paper's baseline.

Operations :func:`bundle`, :func:`bind`, :func:`unbind`, :func:`cleanup` against a seeded :class:`Codebook`;
:class:`JSONEncoder` encodes any JSON value into one vector and decodes queried paths (``"orders[1].sku"``).
Docs: ``docs/vsa/design.md``, ``binding.md``, ``json.md`` (which rules were reconstructed), ``benchmark.md``.

Example:
    >>> import torch
    >>> from orthokit.vsa import make_binder
    >>> b = make_binder("hadamard", 256, seed=0)
    >>> x = torch.randn(256, dtype=torch.float64)
    >>> y = b.bind("color", b.bind("shape", x))                      # nested binding, O(d log d) each
    >>> bool(torch.isclose(y.norm(), x.norm())), bool(torch.allclose(b.unbind("shape", b.unbind("color", y)), x))
    (True, True)
"""

from __future__ import annotations

# importing the binder modules registers them
from orthokit.vsa.binding import Binder, make_binder
from orthokit.vsa.gaussian import GaussianBinder
from orthokit.vsa.haar import HaarBinder
from orthokit.vsa.hadamard import HadamardBinder
from orthokit.vsa.json_codec import JSONEncoder, parse_path
from orthokit.vsa.ops import Codebook, bind, bundle, cleanup, cosine, unbind
from orthokit.vsa.registry import BINDERS

__all__ = [
    "BINDERS",
    "Binder",
    "make_binder",
    "HaarBinder",
    "HadamardBinder",
    "GaussianBinder",
    "bundle",
    "bind",
    "unbind",
    "cleanup",
    "cosine",
    "Codebook",
    "JSONEncoder",
    "parse_path",
]
