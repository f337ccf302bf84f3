"""What keeps the store's own work from pulling a table out from under a request: gates that
a drop closes, and the versions requests and writers hold, which cleanup leaves alone."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from embedsearch.contract.errors import TableNotFound


class TableGate:
    """Every write to one table passes this gate, many at once; dropping the table closes it
    and waits until the writes inside have left. A write that comes later finds the table
    gone, so nothing writes into a directory that is being removed (which would bring the
    name back as a table without versions)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._inside = 0
        self._closed = False
        self._changed = threading.Condition()

    @contextmanager
    def passing(self) -> Iterator[None]:
        with self._changed:
            if self._closed:
                raise TableNotFound(
                    f"table {self.name!r} does not exist: it was dropped", table=self.name
                )
            self._inside += 1
        try:
            yield
        finally:
            with self._changed:
                self._inside -= 1
                self._changed.notify_all()

    def close(self) -> None:
        """Refuse new writes, then wait for those inside (a compaction finishing, say)."""
        with self._changed:
            self._closed = True
            self._changed.wait_for(lambda: self._inside == 0)


class VersionHolds:
    """The oldest version each table's running requests and writers may still read.

    A request holds the version of the table's shared handle when it starts (the handle it
    reads is that one or newer), or the older version it asked for. Cleanup removes only
    versions below the oldest hold: a reader on a snapshot, or a commit still reading the
    manifests after its read version, never loses a file under it.
    """

    def __init__(self) -> None:
        self._held: dict[str, Counter[int]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def holding(self, name: str, floor: Callable[[], int]) -> Iterator[None]:
        """Hold ``floor()``, computed under the lock so that cleanup, which reads the holds
        under the same lock after publishing the latest handle, sees it or sees a floor that
        is already at that latest version."""
        with self._lock:
            version = floor()
            self._held.setdefault(name, Counter())[version] += 1
        try:
            yield
        finally:
            with self._lock:
                held = self._held[name]
                held[version] -= 1
                if not held[version]:
                    del held[version]
                if not held:
                    del self._held[name]

    def oldest(self, name: str) -> int | None:
        """The oldest version held on ``name`` (0: every version), None when none is held."""
        with self._lock:
            held = self._held.get(name)
            return min(held) if held else None
