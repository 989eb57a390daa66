"""What a push front (RTMP, SRT, WHIP) counts of the publishers that knock.

One set of names for every front, so that /status and /metrics read the same
whichever protocol a publisher speaks (``kubecast_api.worker_status.IngestCounters``
is the contract). Plain ints: only the front's event loop writes them, and a
reader that sees a count one late loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IngestCounters:
    accepted: int = 0
    refused_wrong_key: int = 0
    refused_unknown_app: int = 0
    refused_busy: int = 0
    refused_rate_limited: int = 0  # refused at accept: too many wrong keys (RTMP, WHIP)
    protocol_errors: int = 0
