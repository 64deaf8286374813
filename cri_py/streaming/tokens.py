"""One-time tokens for streaming URLs: each names one prepared request, is taken at most once,
and lapses after a TTL. The clock is passed in; the streaming server owns the store."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

TOKEN_TTL_SECONDS = 60.0
MAX_PENDING = 4096


class TokenStore(Generic[T]):
    def __init__(
        self,
        clock: Callable[[], float],
        ttl: float = TOKEN_TTL_SECONDS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max_pending = max_pending
        self._pending: dict[str, tuple[float, T]] = {}

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, (deadline, _) in self._pending.items() if deadline <= now]:
            del self._pending[token]

    def issue(self, request: T) -> str:
        """A new URL-safe token for `request`; the oldest pending one lapses when full."""
        self._expire()
        while len(self._pending) >= self._max_pending:
            del self._pending[next(iter(self._pending))]
        token = secrets.token_urlsafe(24)
        self._pending[token] = (self._clock() + self._ttl, request)
        return token

    def take(self, token: str) -> T | None:
        """The request `token` names, once; None when unknown, already taken or expired."""
        self._expire()
        entry = self._pending.pop(token, None)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        self._expire()
        return len(self._pending)
