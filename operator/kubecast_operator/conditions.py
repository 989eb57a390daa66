"""status.conditions, written the way Kubernetes' own controllers write them.

kopf has no built-in conditions (nolar/kopf#796). The rule that matters:
``lastTransitionTime`` changes only when ``status`` changes, so that a user
reading ``kubectl describe`` learns when something really happened, not when
the operator last looked.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(type_: str, status: bool | None, reason: str, message: str = "") -> dict[str, Any]:
    """A condition without times; ``merge`` stamps them."""
    value = "Unknown" if status is None else ("True" if status else "False")
    return {"type": type_, "status": value, "reason": reason, "message": message}


def merge(
    previous: Iterable[dict[str, Any]] | None,
    current: Iterable[dict[str, Any]],
    *,
    generation: int | None,
    at: str | None = None,
) -> list[dict[str, Any]]:
    """New conditions list: keep the old transition time unless the status flipped."""
    old = {c.get("type"): c for c in previous or ()}
    merged = []
    for cond in current:
        before = old.get(cond["type"])
        stamp = (
            before["lastTransitionTime"]
            if before and before.get("status") == cond["status"] and "lastTransitionTime" in before
            else at or now()
        )
        merged.append({**cond, "lastTransitionTime": stamp, "observedGeneration": generation})
    return merged


def find(conditions: Iterable[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)
