"""orthokit.dictionary (being built for issue #14; the public re-exports are written at integration)."""

from orthokit.dictionary.registry import DICT_LEARNERS

__all__ = ["DICT_LEARNERS"]
