"""Generate CustomResourceDefinitions from the API models (``make crds``).

pydantic writes JSON Schema (draft 2020-12) with ``$ref``/``$defs`` and
``anyOf: [T, null]`` for optionals. Kubernetes wants a *structural* OpenAPI v3
schema: every node typed, no references, no nullable unions. This module walks
pydantic's schema once and rewrites it into that shape; CEL rules ride along
from each model's ``json_schema_extra`` as ``x-kubernetes-validations``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from kubecast_api.common import GROUP, VERSION
from kubecast_api.resources import KINDS, Kind

# JSON-Schema keywords that OpenAPI v3 in a CRD accepts and that we keep, in
# the order they are written.
_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one pydantic schema node (and its children) into structural OpenAPI."""
    node = copy.deepcopy(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Sibling keys (description, default) win over the referenced definition's.
        node = {**copy.deepcopy(target), **node}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express union {branches} structurally")
        inner = structural(branches[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", "") is None:
        del node["default"]

    if node.get("type") == "object" and "properties" in node:
        # NB: the API server forbids `additionalProperties: false` next to
        # `properties`; it prunes unknown fields instead, and kubectl's strict
        # field validation reports them to the user.
        node.pop("additionalProperties", None)
        node["properties"] = {
            name: structural(child, defs) for name, child in node["properties"].items()
        }
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    if node.get("type") == "array" and "items" in node:
        node["items"] = structural(node["items"], defs)
    if node.get("format") == "date-time":
        node["type"] = "string"

    if "type" not in node and "enum" in node:
        node["type"] = "string"
    if "type" not in node:
        raise ValueError(f"schema node has no type: {node}")
    # A fixed key order keeps the generated YAML readable and diffs small.
    return {k: node[k] for k in _ORDER if k in node}


def _model_schema(model: type[BaseModel], *, defaults: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = structural(raw, defs)
    if defaults:
        _add_factory_defaults(model, schema)
    else:
        _strip_defaults(schema)
    return schema


def _add_factory_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give fields built by ``default_factory`` a schema default too.

    pydantic leaves them out of JSON Schema, but the API server must default
    nested objects (``outputs: {}``) so that their own defaults apply and CEL
    rules can read them without ``has()`` guards.
    """
    for name, field in model.model_fields.items():
        prop = schema.get("properties", {}).get(field.alias or name)
        if prop is None:
            continue
        if field.default_factory is not None and "default" not in prop:
            value = field.default_factory()  # type: ignore[call-arg]
            prop["default"] = TypeAdapter(field.annotation or Any).dump_python(
                value, mode="json", by_alias=True, exclude_none=True
            )
        for nested in _models_in(field.annotation):
            target = prop["items"] if prop.get("type") == "array" else prop
            _add_factory_defaults(nested, target)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _strip_defaults(schema: dict[str, Any]) -> None:
    """Status is written by the operator only; the API server should not invent any of it."""
    schema.pop("default", None)
    for child in schema.get("properties", {}).values():
        _strip_defaults(child)
    if isinstance(schema.get("items"), dict):
        _strip_defaults(schema["items"])


def crd_for(kind: Kind) -> dict[str, Any]:
    spec = _model_schema(kind.spec, defaults=True)
    status = _model_schema(kind.status, defaults=False)
    spec["description"] = spec.get("description") or f"Desired state of the {kind.kind}."
    status["description"] = f"Observed state of the {kind.kind}, written by the operator only."
    schema = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version: kubecast.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind: {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubecast"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.printer_columns),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


# NB: each file opens with a document marker, so that concatenations of them
# (`cat crds/*.yaml`, `helm show crds`) stay a valid stream of several CRDs.
HEADER = "---\n# Generated by `make crds` from operator/kubecast_api; do not edit by hand.\n"


def render(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd_for(kind), sort_keys=False, width=100)


def filename(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"


# The chart templates its CRDs (cert-manager style), so that `helm upgrade`
# upgrades them: Helm installs a chart's crds/ folder once and never again, and
# the API server then prunes every field added since. Each CRD is two files:
# a template that Helm renders (the `crds.enabled` guard, the chart's labels,
# the `crds.keep` annotation) and the CRD's body, which the template includes
# with `.Files.Get`. NB: `.Files.Get` returns a file's text as it is, never
# parsed as a template, so a description that contains `{{` (a Go template
# in an example, say) is safe as written; escaping it instead would make every
# generated description one more thing Helm's parser could trip on.
CHART_TEMPLATE_DIR = Path("templates") / "crds"
CHART_BODY_DIR = Path("files") / "crds"
# Helm installs a chart's crds/ folder by itself: the chart must not have one
# next to the templated CRDs, or both would claim the same objects.
CHART_LEGACY_CRD_DIR = Path("crds")

TEMPLATE_HEADER = (
    "{{- /* Generated by `make crds` from operator/kubecast_api; do not edit by hand. */}}\n"
)


def chart_body(kind: Kind) -> str:
    """The CRD after its metadata (``spec:`` on), as the chart's template includes it."""
    crd = crd_for(kind)
    return "# Generated by `make crds` from operator/kubecast_api; do not edit by hand.\n" + (
        yaml.safe_dump({"spec": crd["spec"]}, sort_keys=False, width=100)
    )


def chart_template(kind: Kind) -> str:
    """The chart's template of one CRD: its metadata, then its body from files/crds/."""
    crd = crd_for(kind)
    body = (CHART_BODY_DIR / filename(kind)).as_posix()
    return (
        TEMPLATE_HEADER
        + '{{- if include "kubecast.crdsEnabled" . }}\n'
        + "apiVersion: apiextensions.k8s.io/v1\n"
        + "kind: CustomResourceDefinition\n"
        + "metadata:\n"
        + f"  name: {crd['metadata']['name']}\n"
        + "  labels:\n"
        + '    {{- include "kubecast.commonLabels" . | nindent 4 }}\n'
        + '  {{- if include "kubecast.crdsKeep" . }}\n'
        + "  # Uninstalling the chart must not delete the CRDs, and with them\n"
        + "  # every LiveStream, TranscodeProfile and Recording in the cluster.\n"
        + "  annotations:\n"
        + "    helm.sh/resource-policy: keep\n"
        + "  {{- end }}\n"
        + f'{{{{ .Files.Get "{body}" }}}}\n'
        + "{{- end }}\n"
    )


def _outputs(out: Path, chart: Path | None) -> list[tuple[Path, str]]:
    files = [(out / filename(kind), render(kind)) for kind in KINDS]
    if chart is not None:
        files += [(chart / CHART_TEMPLATE_DIR / filename(k), chart_template(k)) for k in KINDS]
        files += [(chart / CHART_BODY_DIR / filename(k), chart_body(k)) for k in KINDS]
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("crds"), help="output directory")
    parser.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="also write the CRDs into this Helm chart as templates (e.g. charts/kubecast)",
    )
    parser.add_argument(
        "--check", action="store_true", help="fail if the files differ from what would be written"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in _outputs(args.out, args.chart):
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if args.chart is not None and (args.chart / CHART_LEGACY_CRD_DIR).exists():
        # Left over from before the CRDs were templated: Helm would install it too.
        stale.append(f"{args.chart / CHART_LEGACY_CRD_DIR} (remove it)")
    if stale:
        print("stale CRDs (run `make crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
