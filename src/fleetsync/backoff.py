"""The one retry/backoff helper: exponential, capped, with full jitter (never gives up)."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    def __init__(self, *, initial: float = 0.2, maximum: float = 30.0, factor: float = 2.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempt = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        """Full jitter: uniform in [0, min(max, initial * factor^attempt)] so reconnect storms spread out."""
        ceiling = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    async def sleep(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
