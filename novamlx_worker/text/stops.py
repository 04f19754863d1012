"""Stop strings that may span several tokens and several deltas."""
from __future__ import annotations


class StopMatcher:
    """Feeds streamed text; holds back any tail that could still start a stop string."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hold = max((len(s) for s in self.stops), default=0)

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string matched or None)."""
        if not self.stops:
            return text, None
        self.pending += text
        first = None
        for s in self.stops:
            i = self.pending.find(s)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            out = self.pending[: first[0]]
            self.pending = ""
            return out, first[1]
        keep = self._partial_tail()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, None

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _partial_tail(self) -> int:
        """Length of the longest suffix of pending that is a proper prefix of a stop."""
        for n in range(min(self.hold - 1, len(self.pending)), 0, -1):
            tail = self.pending[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
