"""YAML loading for orthokit's tools, with errors that point at the problem.

:func:`load_yaml` reads a YAML file (or string) with PyYAML's safe loader, **rejects duplicate keys** (PyYAML
silently keeps the last one, which hides typos such as two ``parameters:`` blocks), reports syntax errors with
file, line and column, and checks the top level is a mapping. It is bounded against hostile input: anchors and
aliases (``&a`` / ``*a``, the "billion laughs" expansion) are refused, the file may hold at most
:data:`MAX_BYTES` bytes and nest at most :data:`MAX_DEPTH` levels; every error names the file.

Example:
    >>> from orthokit.io.config import load_yaml
    >>> load_yaml("merge_method: ties\\nparameters: {lambda: 0.5}\\n", from_string=True)
    {'merge_method': 'ties', 'parameters': {'lambda': 0.5}}

Reference: YAML 1.1 as implemented by PyYAML (https://pyyaml.org/wiki/PyYAMLDocumentation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "load_yaml", "MAX_BYTES", "MAX_DEPTH"]

#: Largest config accepted (bytes); merge configs are a few hundred bytes.
MAX_BYTES = 1 << 20
#: Deepest nesting of mappings/sequences accepted.
MAX_DEPTH = 64


class ConfigError(ValueError):
    """A configuration file is unreadable, malformed, or fails validation (the message names the key)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses anchors/aliases and bounds the nesting depth (checked while composing)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML hook
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else "?"
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"line {line}: YAML aliases (*{event.anchor}) are not allowed in orthokit configs; "
                "write the value out"
            )
        if getattr(event, "anchor", None) is not None:
            raise ConfigError(
                f"line {line}: YAML anchors (&{event.anchor}) are not allowed in orthokit configs; "
                "write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"line {line}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: unhashable mapping key {key!r}"
            ) from None
        if key in out:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first given earlier in the same mapping)"
            )
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(source: str | os.PathLike[str], *, from_string: bool = False) -> dict[str, Any]:
    """Load a YAML mapping from a file path (or from a string with ``from_string=True``).

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: YAML syntax error (with line/column), duplicate key, an anchor/alias, a file over
        :data:`MAX_BYTES` or nesting over :data:`MAX_DEPTH`, or a top level that is not a mapping.

    Example:
        >>> load_yaml("a: &x [1, 2]\\nb: *x\\n", from_string=True)
        Traceback (most recent call last):
        ...
        orthokit.io.config.ConfigError: <string>: line 1: YAML anchors (&x) are not allowed in orthokit configs; write the value out
    """
    if from_string:
        text, where = str(source), "<string>"
    else:
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        where = str(p)
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{where}: the config is {size} bytes; at most {MAX_BYTES} are accepted")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(f"{where}: the config is larger than {MAX_BYTES} bytes")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML{loc}: {problem}") from None
    if data is None:
        raise ConfigError(f"{where}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data
