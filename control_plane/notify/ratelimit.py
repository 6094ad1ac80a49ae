"""Telegram's send limits, kept in this process: about one message a second per chat, 20 a minute per
group, 30 a second overall, and whatever pause a 429's ``retry_after`` asks for."""

from __future__ import annotations

import time
from collections import deque


class TelegramLimits:
    def __init__(self, *, per_chat_per_s: float, per_group_per_min: int, global_per_s: int) -> None:
        self._chat_gap = 1.0 / per_chat_per_s
        self._group_max = per_group_per_min
        self._global_max = global_per_s
        self._last: dict[int, float] = {}
        self._group: dict[int, deque[float]] = {}
        self._global: deque[float] = deque()
        self._paused: dict[int | None, float] = {}

    def wait_s(self, chat_id: int | None, now: float | None = None) -> float:
        """Seconds before a message may go to ``chat_id`` (None: before any message may go)."""
        now = time.monotonic() if now is None else now
        waits = [self._paused.get(None, 0.0) - now]
        _trim(self._global, now - 1.0)
        if len(self._global) >= self._global_max:
            waits.append(self._global[0] + 1.0 - now)
        if chat_id is not None:
            waits.append(self._paused.get(chat_id, 0.0) - now)
            waits.append(self._last.get(chat_id, -1e9) + self._chat_gap - now)
            group = self._group.get(chat_id)
            if group is not None:
                _trim(group, now - 60.0)
                if len(group) >= self._group_max:
                    waits.append(group[0] + 60.0 - now)
        return max(0.0, *waits)

    def sent(self, chat_id: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._last[chat_id] = now
        self._global.append(now)
        if chat_id < 0:  # groups, supergroups and channels have negative ids
            self._group.setdefault(chat_id, deque()).append(now)

    def pause(self, chat_id: int | None, seconds: float, now: float | None = None) -> None:
        """Telegram said 429: nothing more to ``chat_id`` (None: to anyone) for ``seconds``."""
        now = time.monotonic() if now is None else now
        self._paused[chat_id] = max(self._paused.get(chat_id, 0.0), now + seconds)


def _trim(window: deque[float], before: float) -> None:
    while window and window[0] <= before:
        window.popleft()
