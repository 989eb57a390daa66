"""Building blocks shared by the three resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubecast.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes object names (RFC 1123 labels), as used by Services and Secrets.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry: a CEL rule the API server enforces.

    ``field_path`` makes the API server's error name the offending field rather
    than the object that carries the rule.
    """
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validated_by(*rules: dict[str, str]) -> ConfigDict:
    """Model config that carries CEL rules into the model's generated schema."""
    return ConfigDict(
        **ApiModel.model_config,
        json_schema_extra={"x-kubernetes-validations": list(rules)},  # type: ignore[arg-type]
    )


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused.

    Unknown fields are refused (not silently dropped) so that a typo such as
    ``segmentSecond`` is reported instead of falling back to a default.

    Integer and boolean fields of the specs say ``strict=True``: the API server
    refuses ``width: "1280"`` or ``loop: "yes"`` (wrong JSON type), and so must
    the models, which would otherwise coerce them (tests/manifests/invalid/).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalObjectReference(ApiModel):
    name: str = Field(
        description="Name of the referenced object in the same namespace.",
        min_length=1,
        max_length=253,
    )


class SecretKeyReference(ApiModel):
    name: str = Field(
        description="Name of a Secret in the same namespace.",
        min_length=1,
        max_length=253,
    )
    key: str = Field(
        default="streamKey",
        description="Key inside the Secret whose value is used.",
        min_length=1,
        max_length=253,
    )


class Condition(ApiModel):
    """A Kubernetes-style condition, as in ``metav1.Condition``."""

    type: str = Field(description="Type of condition, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(
        description="Status of the condition: True, False or Unknown."
    )
    reason: str = Field(
        default="",
        description="Machine-readable CamelCase reason for the last transition.",
        max_length=1024,
    )
    message: str = Field(
        default="",
        description="Human-readable details about the last transition.",
        max_length=32768,
    )
    last_transition_time: datetime | None = Field(
        default=None,
        description="When the condition last changed status (not when it was last checked).",
    )
    observed_generation: int | None = Field(
        default=None,
        description="metadata.generation of the spec this condition was computed from.",
        ge=0,
    )


def describe_error(error: pydantic.ValidationError, *, prefix: str = "") -> str:
    """Render a validation error with the wire (camelCase) path of every field.

    ``spec.renditions[0].width: width must be even`` reads the way the API
    server reports a CEL failure, so a user sees the same words locally
    (``kubecast-worker --profile ...``) as from ``kubectl apply``.
    """
    lines = []
    for err in error.errors():
        path = prefix
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                part = to_camel(str(part)) if "_" in str(part) else str(part)
                path += f".{part}" if path else part
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path or '<root>'}: {message}")
    return "\n".join(lines)
