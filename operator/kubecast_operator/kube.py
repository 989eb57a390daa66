"""The few Kubernetes API calls the operator makes, over the official client.

Children are written with server-side apply (field manager
``kubecast-operator``, conflicts forced): applying the same manifest twice, or
after a restart mid-reconcile, converges on one object and never creates a
second. Reads return ``None`` for objects that do not exist, "as detected by
the API server answering 404", so callers branch instead of catching.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubecast_api import GROUP, VERSION

FIELD_MANAGER = "kubecast-operator"

# kind -> (api prefix, plural, namespaced)
_PATHS: dict[str, tuple[str, str, bool]] = {
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Event": ("/api/v1", "events", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "Pod": ("/api/v1", "pods", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "Node": ("/api/v1", "nodes", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "LiveStream": (f"/apis/{GROUP}/{VERSION}", "livestreams", True),
    "TranscodeProfile": (f"/apis/{GROUP}/{VERSION}", "transcodeprofiles", True),
    "Recording": (f"/apis/{GROUP}/{VERSION}", "recordings", True),
}


def _fence_connections(api: client.ApiClient, fence: Callable[[], None]) -> None:
    """Check ``fence`` once more as each write request goes on the wire.

    ``_call`` checks it first, but a process frozen between that check and the
    send would, once it is thawed, send a write it was no longer entitled to.
    Here the check runs in the same thread right before the request's first
    byte, so that window shrinks from the whole request build (milliseconds,
    often behind the GIL) to a few bytecodes.
    """

    class FencedHTTPSConnection(urllib3.connection.HTTPSConnection):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
            if method != "GET":
                fence()
            super().request(method, url, *args, **kwargs)

    class FencedHTTPConnection(urllib3.connection.HTTPConnection):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
            if method != "GET":
                fence()
            super().request(method, url, *args, **kwargs)

    class FencedHTTPSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = FencedHTTPSConnection

    class FencedHTTPPool(urllib3.HTTPConnectionPool):
        ConnectionCls = FencedHTTPConnection

    manager = api.rest_client.pool_manager
    manager.pool_classes_by_scheme = {"http": FencedHTTPPool, "https": FencedHTTPSPool}
    manager.clear()


def load_config() -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    prefix, plural, namespaced = _PATHS[kind]
    parts = [prefix]
    if namespaced and namespace:
        parts += ["namespaces", namespace]
    parts.append(plural)
    if name:
        parts.append(name)
    return "/".join(parts)


class Kube:
    """Thin synchronous client; the async side calls it through ``asyncio.to_thread``."""

    def __init__(
        self,
        api: client.ApiClient | None = None,
        *,
        fence: Callable[[], None] | None = None,
        request_timeout: float = 30,
    ) -> None:
        self.api = api or client.ApiClient()
        #: called before every write; raises when this replica may not write
        #: (``LeaderElector.check``: it no longer leads)
        self.fence = fence
        self.request_timeout = request_timeout
        if fence is not None:
            _fence_connections(self.api, fence)

    def _call(
        self,
        method: str,
        resource_path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if method != "GET" and self.fence is not None:
            self.fence()
        request = self.api.param_serialize(
            method,
            resource_path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=self.request_timeout)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason, body=response.data)
        return json.loads(response.data) if response.data else None

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", path(kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        query += [("fieldSelector", field_selector)] if field_selector else []
        result = self._call("GET", path(kind, namespace), query=query)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``manifest``; the result is the object as stored."""
        meta = manifest["metadata"]
        result: dict[str, Any] = self._call(
            "PATCH",
            path(manifest["kind"], meta.get("namespace"), meta["name"]),
            # NB: JSON is valid YAML, which is what an apply patch is.
            body=manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``manifest``; ``None`` when it already exists (HTTP 409)."""
        meta = manifest["metadata"]
        try:
            result: dict[str, Any] = self._call(
                "POST", path(manifest["kind"], meta.get("namespace")), body=manifest
            )
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        return result

    def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """JSON merge patch; ``None`` when the object is gone (HTTP 404)."""
        target = path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        try:
            result: dict[str, Any] = self._call(
                "PATCH", target, body=patch, content_type="application/merge-patch+json"
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        return self.patch(kind, namespace, name, {"status": status}, subresource="status")

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self._call("DELETE", path(kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def remove_finalizer(self, kind: str, namespace: str, name: str, finalizer: str) -> None:
        current = self.get(kind, namespace, name)
        if current is None:
            return
        finalizers = current["metadata"].get("finalizers") or []
        if finalizer not in finalizers:
            return
        # A JSON patch with a test op: never drops a finalizer someone added meanwhile.
        index = finalizers.index(finalizer)
        self._call(
            "PATCH",
            path(kind, namespace, name),
            body=[
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
            content_type="application/json-patch+json",
        )

    def add_finalizer(self, kind: str, namespace: str, name: str, finalizer: str) -> None:
        """Add ``finalizer`` unless present, without dropping one someone else adds.

        NB: the JSON patch tests the resourceVersion; when the object changed
        between our read and our patch (kopf annotates a new object at the same
        moment), the API server answers a bare 422. That is a conflict, not an
        error: read again and retry.
        """
        for attempt in range(5):
            current = self.get(kind, namespace, name)
            if current is None or finalizer in (current["metadata"].get("finalizers") or []):
                return
            finalizers = [*(current["metadata"].get("finalizers") or []), finalizer]
            try:
                self._call(
                    "PATCH",
                    path(kind, namespace, name),
                    body=[
                        {
                            "op": "test",
                            "path": "/metadata/resourceVersion",
                            "value": current["metadata"]["resourceVersion"],
                        },
                        {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
                    ],
                    content_type="application/json-patch+json",
                )
                return
            except ApiException as error:
                if error.status != 422 or attempt == 4:
                    raise


def describe(error: Exception) -> str:
    """What went wrong, in the API server's own words when it was the API server.

    An ``ApiException`` prints as status line, headers and a JSON body; what a
    user can act on is the body's ``message`` (e.g. "Service \"x\" is invalid:
    spec.ports[0].nodePort: Invalid value: 30080: provided port is already
    allocated", or "failed to allocate a serviceIP: range is full").
    """
    if isinstance(error, ApiException):
        try:
            message = json.loads(error.body or "{}").get("message")
        except (ValueError, AttributeError):
            message = None
        return f"HTTP {error.status}: {message or error.reason}"
    return f"{type(error).__name__}: {error}"
