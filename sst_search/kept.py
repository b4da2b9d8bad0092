"""The last few things made, by key, shared by threads: a reader's app threads ask for the
same filter's mask or admitted lists at once, and people page and re-query under one filter,
which should then cost a lookup, not a pass over the collection."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Kept(Generic[T]):
    """At most ``size`` values, the least recently asked for dropped first. Two threads
    asking for a missing key at once may both make it (the last one made is kept): making
    happens outside the lock, so one slow filter does not hold up others."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, T] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            known = self._values.get(key)
            if known is not None:
                self._values.move_to_end(key)
                return known
        made = make()
        with self._lock:
            self._values[key] = made
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return made

    def known(self, key: Hashable) -> T | None:
        """The value kept under ``key``, or None; nothing is made."""
        with self._lock:
            return self._values.get(key)

    def __len__(self) -> int:
        return len(self._values)
