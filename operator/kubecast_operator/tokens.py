"""Stop tokens: the bearer token a recorder's ``POST /stop`` needs.

The operator holds one signing key and derives each Recording's token as
HMAC-SHA256(key, "<namespace>/<name>/<uid>"). It writes the token into a
Secret owned by the Recording, which the recorder pod mounts, and computes it
again when it stops the recording, so it never has to read a Secret back
(the operator has ``secrets: create`` but not ``get``) and an operator restart
loses nothing. The uid makes a Recording deleted and created again under the
same name a different token. A pod that can read neither that Secret nor the
operator's key cannot end a recording.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kubecast.tokens")

#: Fewer bytes than this is not a key, it is a mistake (a stray newline, a placeholder).
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class Signer:
    key: bytes

    def __repr__(self) -> str:  # never print the key
        return "Signer(key=<redacted>)"

    @classmethod
    def from_file(cls, path: str | None) -> Signer:
        """The key in ``path``; without one, a random key that lives as long as the process.

        NB: a process-only key means a Recording created before an operator
        restart can no longer be stopped by the operator (its schedule, limits
        and idle timeout still end it). The chart always mounts a key.
        """
        if path is None:
            log.warning(
                "KUBECAST_SIGNING_KEY_FILE is not set: recordings started now cannot be"
                " stopped by a restarted operator; mount a key (the Helm chart does)"
            )
            return cls(secrets.token_bytes(32))
        try:
            key = Path(path).read_bytes().strip()
        except OSError as error:
            raise ValueError(
                f"KUBECAST_SIGNING_KEY_FILE {path!r}: {error.strerror}; mount the"
                " signing-key Secret there or unset the variable"
            ) from None
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"KUBECAST_SIGNING_KEY_FILE {path!r} holds {len(key)} bytes; a signing key"
                f" needs at least {MIN_KEY_BYTES}"
            )
        return cls(key)

    def recording_token(self, *, namespace: str, name: str, uid: str) -> str:
        message = f"{namespace}/{name}/{uid}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()
