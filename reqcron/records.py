"""Record: the base of reqcron's plain data classes.

Not dataclasses: importing them (and the inspect module they pull in)
costs every task process ~5 ms before it reaches run().
"""

from __future__ import annotations


class Record:
    """Slots, a readable repr, and equality by value."""

    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))
