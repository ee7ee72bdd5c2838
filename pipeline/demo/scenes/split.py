"""The train / held-out split: for every (concept, colour) pair exactly one of the four
background kinds is held out (:data:`HELDOUT_COMBOS`, a quarter of all triples, fixed by a
hash).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Final

from pipeline.demo.scenes.specs import BACKGROUNDS, COLOURS, CONCEPTS, BackgroundKind
from pipeline.errors import ConfigError

__all__ = [
    "HELDOUT_COMBOS",
    "heldout_background",
    "is_heldout",
]


@lru_cache(maxsize=1)
def _heldout_table() -> Mapping[tuple[str, str], BackgroundKind]:
    # For each concept, order the colours by a fixed hash and hold out background i % 4 for
    # the i-th: every concept loses each background for exactly two colours, and every
    # (concept, colour) pair keeps three training backgrounds.
    table: dict[tuple[str, str], BackgroundKind] = {}
    for concept in CONCEPTS:
        order = sorted(
            COLOURS,
            key=lambda c: hashlib.sha256(f"clipguard-heldout|{concept}|{c}".encode()).digest(),
        )
        for i, colour in enumerate(order):
            table[concept, colour] = BACKGROUNDS[i % len(BACKGROUNDS)]
    return MappingProxyType(table)


#: (concept, colour, background kind) triples that only the held-out split shows.
HELDOUT_COMBOS: Final[frozenset[tuple[str, str, str]]] = frozenset(
    (concept, colour, bg) for (concept, colour), bg in _heldout_table().items()
)
_HELDOUT_LIST: Final[tuple[tuple[str, str, BackgroundKind], ...]] = tuple(
    sorted((concept, colour, bg) for (concept, colour), bg in _heldout_table().items())
)


def heldout_background(concept: str, colour: str) -> BackgroundKind:
    """The one background kind on which ``concept`` in ``colour`` is held out."""
    try:
        return _heldout_table()[concept, colour]
    except KeyError:
        raise ConfigError(f"unknown concept/colour pair {(concept, colour)!r}") from None


def is_heldout(concept: str, colour: str, background: str) -> bool:
    """Whether the triple (concept, colour, background kind) belongs to the held-out split."""
    return (concept, colour, background) in HELDOUT_COMBOS
