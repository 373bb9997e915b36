"""Rate and connection limits, driven by a clock the test moves."""

from __future__ import annotations

import sys

import pytest

from autopm_realtime.ratelimit import (TOO_MANY_CONNECTIONS, TOO_MANY_FROM_ADDRESS, ConnectionLimiter,
                                       KeyedBuckets, MessageRateGuard, RateLimitStats, TokenBucket,
                                       Verdict)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- TokenBucket --------------------------------------------------------------------------------

def test_a_bucket_starts_full_and_allows_a_burst_then_refuses():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.tokens == pytest.approx(0)


def test_a_bucket_refills_at_its_rate_and_never_beyond_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=4, burst=3, clock=clock)
    assert all(bucket.take() for _ in range(3))
    clock.advance(0.5)                      # 2 tokens back
    assert bucket.tokens == pytest.approx(2)
    assert bucket.take() and bucket.take() and not bucket.take()
    clock.advance(3600)                     # an hour idle: still only `burst`
    assert bucket.tokens == pytest.approx(3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_a_refused_take_takes_nothing():
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    assert bucket.take(2)
    assert not bucket.take(2)               # only 1 left
    assert bucket.take(1)
    assert not bucket.take(4)               # more than the burst: never


@pytest.mark.parametrize("rate,burst", [(3, 1), (10, 4), (7, 2.5), (0.3, 1)])
def test_waiting_exactly_retry_after_is_enough_and_a_moment_less_is_not(rate, burst):
    clock = Clock(123456.789)
    bucket = TokenBucket(rate, burst, clock)
    while bucket.take():
        pass
    for _ in range(5):
        wait = bucket.retry_after()
        assert 0 < wait <= 1 / rate + 1e-9
        clock.advance(wait * 0.999)
        assert not bucket.take()
        clock.advance(bucket.retry_after())
        assert bucket.retry_after() == 0.0
        assert bucket.take()
        assert not bucket.take()


def test_retry_after_is_exact():
    clock = Clock(0.0)
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    assert bucket.retry_after() == 0.0
    bucket.take(), bucket.take()
    assert bucket.retry_after() == 0.25
    clock.advance(0.125)
    assert bucket.retry_after() == 0.125


def test_rate_zero_is_no_limit():
    bucket = TokenBucket(0, 0, Clock())
    assert all(bucket.take() for _ in range(10_000))
    assert bucket.retry_after() == 0.0


@pytest.mark.parametrize("rate,burst", [(-1, 1), (1, -1), (1, 0), (1, 0.5), (float("nan"), 1),
                                        (float("inf"), 1), (1, float("inf"))])
def test_bad_rates_and_bursts_are_refused(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_a_bucket_is_small():
    """One per WebSocket connection: slots, no __dict__."""
    bucket = TokenBucket(5, 10)
    assert not hasattr(bucket, "__dict__")
    assert sys.getsizeof(bucket) <= 72


# --- KeyedBuckets -------------------------------------------------------------------------------

def test_keys_have_separate_buckets():
    clock = Clock()
    stats = RateLimitStats()
    buckets = KeyedBuckets(rate=1, burst=2, max_keys=10, clock=clock, stats=stats)
    assert buckets.take("alice") and buckets.take("alice") and not buckets.take("alice")
    assert buckets.take("bob")
    assert buckets.retry_after("alice") == pytest.approx(1.0)
    assert buckets.retry_after("bob") == 0.0
    assert buckets.retry_after("carol") == 0.0 and "carol" not in buckets._full_at
    clock.advance(1)
    assert buckets.take("alice") and not buckets.take("alice")
    assert stats.publishes_rejected == 2


def test_keyed_buckets_never_hold_more_than_max_keys():
    clock = Clock()
    stats = RateLimitStats()
    buckets = KeyedBuckets(rate=1, burst=1, max_keys=3, clock=clock, stats=stats)
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
        assert len(buckets) <= 3
    assert len(buckets) == 3
    assert stats.publish_keys_evicted == 997


def test_the_least_recently_used_key_is_evicted_and_comes_back_full():
    clock = Clock()
    buckets = KeyedBuckets(rate=1, burst=1, max_keys=2, clock=clock)
    assert buckets.take("a") and buckets.take("b")
    assert not buckets.take("a")            # a is used again (refused), so b is now the oldest
    assert buckets.take("c")                # evicts b
    assert set(buckets._full_at) == {"a", "c"}
    assert not buckets.take("a")            # a kept its empty bucket
    assert buckets.take("b")                # b was forgotten: the trade for the bound
    assert set(buckets._full_at) == {"a", "b"}


@pytest.mark.parametrize("max_keys", [0, -1, 1.5, True])
def test_max_keys_must_be_positive(max_keys):
    with pytest.raises(ValueError):
        KeyedBuckets(1, 1, max_keys)


def test_keyed_rate_zero_stores_nothing():
    buckets = KeyedBuckets(0, 0, 1)
    assert all(buckets.take(i) for i in range(100))
    assert len(buckets) == 0


# --- MessageRateGuard ---------------------------------------------------------------------------

def test_guard_allows_rejects_then_closes_a_client_that_ignores_the_errors():
    clock = Clock()
    stats = RateLimitStats()
    guard = MessageRateGuard(rate=10, burst=3, max_violations=2, clock=clock, stats=stats)
    verdicts = [guard.check() for _ in range(6)]
    assert verdicts == [Verdict.ALLOW] * 3 + [Verdict.REJECT, Verdict.REJECT, Verdict.CLOSE]
    assert stats.ws_messages_rejected == 3
    assert stats.ws_closed_for_rate == 1
    assert guard.retry_after() == pytest.approx(0.1)


def test_an_allowed_message_starts_the_violation_count_again():
    clock = Clock()
    guard = MessageRateGuard(rate=10, burst=1, max_violations=2, clock=clock)
    assert guard.check() is Verdict.ALLOW
    assert [guard.check(), guard.check()] == [Verdict.REJECT, Verdict.REJECT]
    assert guard.violations == 2
    clock.advance(guard.retry_after())      # the client slowed down
    assert guard.check() is Verdict.ALLOW
    assert guard.violations == 0
    assert [guard.check(), guard.check(), guard.check()] == [Verdict.REJECT, Verdict.REJECT, Verdict.CLOSE]


def test_a_client_just_over_the_rate_is_served_at_the_rate_and_not_closed():
    clock = Clock()
    guard = MessageRateGuard(rate=10, burst=1, max_violations=1, clock=clock)
    verdicts = []
    for _ in range(100):                    # 20 messages a second
        verdicts.append(guard.check())
        clock.advance(0.05)
    assert Verdict.CLOSE not in verdicts
    assert verdicts.count(Verdict.ALLOW) == 50


def test_max_violations_zero_closes_on_the_first_message_over_the_rate():
    guard = MessageRateGuard(rate=1, burst=1, max_violations=0, clock=Clock())
    assert [guard.check(), guard.check()] == [Verdict.ALLOW, Verdict.CLOSE]


def test_guard_without_a_rate_allows_everything():
    guard = MessageRateGuard(rate=0, burst=0, max_violations=0)
    assert all(guard.check() is Verdict.ALLOW for _ in range(1000))


def test_guard_validates_its_limits():
    with pytest.raises(ValueError):
        MessageRateGuard(rate=1, burst=1, max_violations=-1)
    with pytest.raises(ValueError):
        MessageRateGuard(rate=-1, burst=1, max_violations=1)
    assert not hasattr(MessageRateGuard(1, 1, 1), "__dict__")


# --- ConnectionLimiter --------------------------------------------------------------------------

def test_connection_limiter_bounds_the_total():
    stats = RateLimitStats()
    limiter = ConnectionLimiter(max_total=3, max_per_address=0, stats=stats)
    assert [limiter.acquire(f"10.0.0.{i}") for i in range(3)] == [None] * 3
    assert limiter.acquire("10.0.0.9") == TOO_MANY_CONNECTIONS
    assert limiter.total == 3 and stats.connections_refused == 1
    limiter.release("10.0.0.1")
    assert limiter.acquire("10.0.0.9") is None


def test_connection_limiter_bounds_each_address():
    stats = RateLimitStats()
    limiter = ConnectionLimiter(max_total=0, max_per_address=2, stats=stats)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    assert limiter.acquire("a") == TOO_MANY_FROM_ADDRESS
    assert limiter.acquire("b") is None
    assert (limiter.count("a"), limiter.count("b"), limiter.total) == (2, 1, 3)
    assert stats.connections_refused == 1
    assert stats.by_kind()["connection"] == 1


def test_releases_mirror_acquires_and_never_go_negative():
    limiter = ConnectionLimiter(max_total=10, max_per_address=5)
    admitted = [address for address in ["a", "b", "a", "c", "a"] if limiter.acquire(address) is None]
    assert limiter.total == 5 and len(limiter) == 3
    for address in admitted:
        limiter.release(address)
    assert limiter.total == 0 and len(limiter) == 0 and limiter._by_address == {}
    limiter.release("a")                    # a release too many
    limiter.release("never-seen")
    assert limiter.total == 0 and limiter.count("a") == 0 and len(limiter) == 0
    assert limiter.acquire("a") is None and limiter.total == 1


def test_a_refused_acquire_counts_nothing():
    limiter = ConnectionLimiter(max_total=1, max_per_address=1)
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == TOO_MANY_CONNECTIONS
    assert limiter.acquire("b") == TOO_MANY_CONNECTIONS
    assert limiter.total == 1 and limiter.count("b") == 0 and len(limiter) == 1


@pytest.mark.parametrize("max_total,max_per_address", [(-1, 0), (0, -1), (1.5, 1), (None, 1)])
def test_connection_limits_are_validated(max_total, max_per_address):
    with pytest.raises(ValueError):
        ConnectionLimiter(max_total, max_per_address)
