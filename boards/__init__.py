"""Board definitions: platform, clocking, link pins and default engine parameters.

``get_board(name)`` returns a :class:`~boards.base.Board`; ``BOARDS`` lists them all.
"""

from __future__ import annotations

from .arty_a7 import ARTY_A7, ARTY_A7_100T
from .base import Board
from .ulx3s import ULX3S

BOARDS: dict[str, Board] = {b.name: b for b in (ARTY_A7, ARTY_A7_100T, ULX3S)}
DEFAULT_BOARD = "arty_a7"


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; choose from {', '.join(BOARDS)}") from None


__all__ = ["BOARDS", "DEFAULT_BOARD", "Board", "get_board"]
