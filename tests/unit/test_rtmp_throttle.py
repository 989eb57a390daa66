"""The wrong-key limit per address, on a clock the test moves (the server test runs it live)."""

from __future__ import annotations

import pytest

from kubecast_worker.rtmp import throttle
from kubecast_worker.rtmp.throttle import WrongKeyLimit, WrongKeyThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_nth_wrong_key_within_the_window_starts_the_backoff_and_it_ends() -> None:
    clock = Clock()
    guard = WrongKeyThrottle(WrongKeyLimit(attempts=5, window=60, backoff=60), clock=clock)
    assert [guard.wrong_key("198.51.100.7") for _ in range(5)] == [False] * 4 + [True]
    assert guard.blocked_for("198.51.100.7") == 60
    assert guard.blocked_for("198.51.100.8") == 0
    clock.now += 59.9
    assert guard.blocked_for("198.51.100.7") > 0
    clock.now += 0.1
    assert guard.blocked_for("198.51.100.7") == 0
    # A fresh start: the mistakes before the back-off do not count again.
    assert guard.wrong_key("198.51.100.7") is False


def test_wrong_keys_spread_wider_than_the_window_are_not_limited() -> None:
    clock = Clock()
    guard = WrongKeyThrottle(WrongKeyLimit(attempts=3, window=10, backoff=60), clock=clock)
    for _ in range(10):
        assert guard.wrong_key("192.0.2.1") is False
        clock.now += 5.1  # two in any 10 s


def test_the_right_key_forgives_earlier_mistakes() -> None:
    guard = WrongKeyThrottle(WrongKeyLimit(attempts=3), clock=Clock())
    guard.wrong_key("192.0.2.1")
    guard.wrong_key("192.0.2.1")
    guard.right_key("192.0.2.1")
    assert guard.wrong_key("192.0.2.1") is False
    assert guard.wrong_key("192.0.2.1") is False


def test_an_ipv6_host_is_limited_by_its_64_and_a_mapped_ipv4_as_ipv4() -> None:
    guard = WrongKeyThrottle(WrongKeyLimit(attempts=2), clock=Clock())
    guard.wrong_key("2001:db8:1:2::1")
    assert guard.wrong_key("2001:db8:1:2:ffff::9") is True  # same /64, another host
    assert guard.blocked_for("2001:db8:1:2::abcd") > 0
    assert guard.blocked_for("2001:db8:1:3::1") == 0
    guard.wrong_key("::ffff:192.0.2.9")
    assert guard.wrong_key("192.0.2.9") is True


def test_the_table_of_addresses_is_bounded() -> None:
    guard = WrongKeyThrottle(WrongKeyLimit(attempts=2), clock=Clock())
    for i in range(throttle.MAX_ADDRESSES + 100):
        guard.wrong_key(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(guard._entries) == throttle.MAX_ADDRESSES


def test_zero_attempts_turns_the_limit_off() -> None:
    guard = WrongKeyThrottle(WrongKeyLimit.parse("0"), clock=Clock())
    assert not any(guard.wrong_key("127.0.0.1") for _ in range(1000))
    assert guard.blocked_for("127.0.0.1") == 0


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("5/60/60", WrongKeyLimit(5, 60, 60)),
        ("10", WrongKeyLimit(10, 60, 60)),
        ("3/30", WrongKeyLimit(3, 30, 60)),
        ("0", WrongKeyLimit(0, 60, 60)),
    ],
)
def test_the_limit_reads_as_attempts_window_backoff(text: str, limit: WrongKeyLimit) -> None:
    assert WrongKeyLimit.parse(text) == limit


@pytest.mark.parametrize("text", ["", "x", "5/0", "-1", "5/60/60/1", "5/60/-2"])
def test_a_bad_limit_says_its_form(text: str) -> None:
    with pytest.raises(ValueError, match="wrong key limit"):
        WrongKeyLimit.parse(text)
