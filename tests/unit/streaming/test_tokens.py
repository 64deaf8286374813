from __future__ import annotations

from cri_py.streaming.tokens import TokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_taken_once() -> None:
    store: TokenStore[str] = TokenStore(Clock())
    token = store.issue("exec a")
    assert len(token) >= 32 and token.isascii()
    assert store.take(token) == "exec a"
    assert store.take(token) is None


def test_tokens_expire_after_the_ttl() -> None:
    clock = Clock()
    store: TokenStore[str] = TokenStore(clock, ttl=60)
    early, late = store.issue("a"), None
    clock.now += 30
    late = store.issue("b")
    clock.now += 30
    assert store.take(early) is None
    assert store.take(late) == "b"


def test_unknown_tokens_and_a_full_store_drop_the_oldest() -> None:
    store: TokenStore[int] = TokenStore(Clock(), max_pending=2)
    first, second, third = store.issue(1), store.issue(2), store.issue(3)
    assert len(store) == 2
    assert store.take(first) is None
    assert (store.take(second), store.take(third)) == (2, 3)
    assert store.take("not-a-token") is None
