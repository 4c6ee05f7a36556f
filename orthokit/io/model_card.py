"""Output metadata of a merge: the ``config.json`` fix-ups (dtype, layer count) and a ``README.md`` model card.

* :func:`update_output_config` — the copied ``config.json`` gets the output dtype under both keys transformers
  reads (``torch_dtype``: 4.x; ``dtype``: 5.x), so ``from_pretrained`` loads the merged weights in the dtype
  they were written in, and, for ``slices:`` merges, the new number of layers (``num_hidden_layers`` or the
  architecture's spelling: ``n_layer``, ``num_layers``). mergekit does the same (``_model_out_config``).
* :func:`model_card` — a Markdown card like mergekit's ``README.md``: method, models, parameters, the orthokit
  version and the YAML config.

Example:
    >>> import json, tempfile, pathlib, torch
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text(json.dumps({"torch_dtype": "float32", "num_hidden_layers": 2}))
    >>> update_output_config(d / "config.json", dtype=torch.bfloat16, num_layers=5)
    >>> c = json.loads((d / "config.json").read_text()); (c["torch_dtype"], c["dtype"], c["num_hidden_layers"])
    ('bfloat16', 'bfloat16', 5)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["update_output_config", "model_card", "dtype_name", "LAYER_COUNT_KEYS"]

#: config.json keys that hold the number of transformer layers (first one present is updated).
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (the spelling transformers writes into config.json).

    Example:
        >>> dtype_name(torch.float16)
        'float16'
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    return str(dtype).removeprefix("torch.")


def update_output_config(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = None, num_layers: int | None = None
) -> None:
    """Rewrite a copied ``config.json`` with the output ``dtype`` (``torch_dtype`` and ``dtype``) and layer count.

    Nested ``text_config`` (multimodal wrappers) gets the same dtype. Nothing is changed for ``None`` arguments.

    Raises:
        ValueError: the file is not a JSON object; a ``num_layers`` with no layer-count key in the config.
    """
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: config.json must hold a JSON object")
    if dtype is not None:
        name = dtype_name(dtype)
        targets = [cfg] + [v for k, v in cfg.items() if k == "text_config" and isinstance(v, dict)]
        for c in targets:
            c["torch_dtype"] = name
            c["dtype"] = name
    if num_layers is not None:
        key = next((k for k in LAYER_COUNT_KEYS if k in cfg), None)
        if key is None:
            raise ValueError(
                f"{p}: no layer-count key ({', '.join(LAYER_COUNT_KEYS)}) to set to {num_layers} output layers"
            )
        cfg[key] = int(num_layers)
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def model_card(
    *,
    method: str,
    base: str | None,
    models: Sequence[str],
    parameters: Mapping[str, Any],
    config_yaml: str,
    version: str,
    name: str = "merged model",
    slices: Sequence[str] = (),
    reference: str | None = None,
) -> str:
    """The Markdown ``README.md`` of a merged model (the shape of mergekit's card, written by orthokit).

    Example:
        >>> card = model_card(method="ties", base="b", models=["f1", "f2"], parameters={"lambda": 1},
        ...                   config_yaml="merge_method: ties\\n", version="0.1")
        >>> card.splitlines()[1], "* f2" in card, "```yaml" in card
        ('tags:', True, True)
    """
    lines = ["---", "tags:", "- merge", "- orthokit"]
    lines += [
        "---",
        f"# {name}",
        "",
        f"This model was merged with orthokit {version} (`orthokit merge`).",
        "",
    ]
    lines += ["## Merge details", "", f"* **Method:** `{method}`" + (f" ({reference})" if reference else "")]
    if base:
        lines.append(f"* **Base model:** {base}")
    lines += ["", "### Models merged", ""]
    lines += [f"* {m}" for m in models]
    if slices:
        lines += ["", "### Slices (output layers in order)", ""]
        lines += [f"* {s}" for s in slices]
    if parameters:
        lines += ["", "### Global parameters", ""]
        lines += [f"* `{k}`: `{v}`" for k, v in parameters.items()]
    lines += [
        "",
        "### Configuration",
        "",
        "The YAML configuration used to produce this model:",
        "",
        "```yaml",
    ]
    lines += [config_yaml.rstrip("\n"), "```", ""]
    return "\n".join(lines)
