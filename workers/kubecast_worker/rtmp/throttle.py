"""Wrong stream keys, counted per source address: a guesser is shut out for a while.

After ``attempts`` wrong keys within ``window`` seconds from one address, that
address's new connections are refused at accept for ``backoff`` seconds; then it may
try again (the right key works at once). A publisher from another address is never
affected, and the right key from an address forgives its earlier mistakes.

An "address" is an IPv4 address, or the /64 prefix of an IPv6 one (a single host is
usually given a whole /64, and would otherwise get 2^64 tries). The table is bounded
(``MAX_ADDRESSES``): a guesser with many addresses cannot grow the worker's memory,
at worst push older entries out.

Hand-written rather than a rate-limit library: what is needed is a fixed back-off
after N failures, on the event loop, with a bounded table; that is a few lines.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

MAX_ADDRESSES = 4096


@dataclass(frozen=True)
class WrongKeyLimit:
    attempts: int = 5  # wrong keys allowed within the window; 0 turns the limit off
    window: float = 60.0  # seconds
    backoff: float = 60.0  # seconds an address is refused for once it is over the limit

    @classmethod
    def parse(cls, text: str) -> WrongKeyLimit:
        """``ATTEMPTS[/WINDOW[/BACKOFF]]`` in seconds, e.g. ``5/60/60``; ``0`` is off."""
        parts = text.split("/")
        try:
            if len(parts) > 3:
                raise ValueError
            attempts = int(parts[0])
            window = float(parts[1]) if len(parts) > 1 else cls.window
            backoff = float(parts[2]) if len(parts) > 2 else cls.backoff
        except ValueError:
            raise ValueError(
                f"wrong key limit must be ATTEMPTS[/WINDOW[/BACKOFF]], e.g. 5/60/60, got {text!r}"
            ) from None
        if attempts < 0 or window <= 0 or backoff <= 0:
            raise ValueError(f"wrong key limit needs attempts >= 0 and positive times: {text!r}")
        return cls(attempts, window, backoff)

    def __str__(self) -> str:
        return f"{self.attempts}/{self.window:g}/{self.backoff:g}"


def address_of(host: str) -> str:
    """The unit a limit applies to: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Entry:
    failures: deque[float]
    blocked_until: float = 0.0


class WrongKeyThrottle:
    """Only the event loop calls it; ``clock`` is for tests."""

    def __init__(self, limit: WrongKeyLimit, *, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def blocked_for(self, host: str) -> float:
        """Seconds ``host`` is still refused for (0: let it in)."""
        entry = self._entries.get(address_of(host))
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - self._clock())

    def wrong_key(self, host: str) -> bool:
        """Count a wrong key from ``host``; True when this one starts a back-off."""
        if self.limit.attempts <= 0:
            return False
        now, address = self._clock(), address_of(host)
        entry = self._entries.pop(address, None) or _Entry(deque())
        self._entries[address] = entry  # the most recent at the end
        failures = entry.failures
        failures.append(now)
        while failures and now - failures[0] > self.limit.window:
            failures.popleft()
        started = False
        if len(failures) >= self.limit.attempts and entry.blocked_until <= now:
            entry.blocked_until = now + self.limit.backoff
            failures.clear()
            started = True
        while len(self._entries) > MAX_ADDRESSES:
            self._entries.popitem(last=False)
        return started

    def right_key(self, host: str) -> None:
        """The right key: forget the address's wrong ones."""
        self._entries.pop(address_of(host), None)
