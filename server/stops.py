"""Stop strings cut from streamed text exactly: never emitted, also when split across tokens."""

from __future__ import annotations


class StopCutter:
    """Feeds on text pieces; returns what may be sent now and whether a stop string was reached.

    Text that could be the start of a stop string is held back until the next piece settles it, so a stop
    string split over two tokens is still caught and nothing of it reaches the client."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = self._partial(text)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """What was held back when the text ended without completing a stop string."""
        text, self.held = self.held, ""
        return text

    def _partial(self, text: str) -> int:
        """The longest suffix of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
