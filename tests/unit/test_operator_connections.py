"""kopf's client to the API server has a limit on its connections that fits its watches.

Without one, kopf opened a TLS connection per concurrent request and kept it: 964
connections at 500 streams created at once, 120 MB of TLS read buffers
(bench/operator.py --heap). The limit must leave a connection to every watch,
which holds its own for as long as it runs, or the watches would starve.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kopf
import kubernetes.client
import pytest

from kubecast_operator import handlers


def test_the_limit_leaves_every_watch_its_connection_and_requests_some_more() -> None:
    clusterwide = handlers.kopf_connections([])
    three = handlers.kopf_connections(["a", "b", "c"])
    assert clusterwide == handlers.KOPF_REQUEST_CONNECTIONS + handlers.KOPF_WATCHES_PER_NAMESPACE
    assert three == handlers.KOPF_REQUEST_CONNECTIONS + 3 * handlers.KOPF_WATCHES_PER_NAMESPACE


def test_every_watch_of_the_operator_is_counted_in_the_limit() -> None:
    # NB: kopf's registry is private; if it moves, this test says so. kopf runs one
    # watch per selected resource and namespace, whatever its handlers.
    registry = kopf.get_default_registry()
    watched = {
        handler.selector
        for kind in (registry._watching, registry._spawning, registry._indexing)
        for handler in kind.get_all_handlers()
    }
    assert len(watched) == 6  # 3 of ours, and the Deployments, Services, Pods they own
    assert len(watched) < handlers.KOPF_WATCHES_PER_NAMESPACE


@pytest.mark.parametrize("pattern", ["team-*", "live-?", "[ab]-live", "!kube-system"])
def test_a_namespace_pattern_has_no_limit_rather_than_starved_watches(pattern: str) -> None:
    assert handlers.kopf_connections(["live", pattern]) == 0


def test_the_login_gives_kopf_a_session_with_that_limit(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443',"
        " insecure-skip-tls-verify: true}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: secret-token}}]\n"
    )
    # NB: the Kubernetes client reads $KUBECONFIG once, when it is imported.
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def login() -> tuple[Any, int, str | None]:
        info = await handlers.login(
            memo=kopf.Memo(kopf_connections=39),
            logger=kopf.LocalObjectLogger(body={}, settings=kopf.OperatorSettings()),
            settings=kopf.OperatorSettings(),
        )
        assert isinstance(info, kopf.AiohttpSession)
        session = info.aiohttp_session
        try:
            assert isinstance(session.connector, aiohttp.TCPConnector)
            return info.server, session.connector.limit, session.headers.get("Authorization")
        finally:
            await session.close()

    # The login loads the kubeconfig into the client's default configuration: put it back.
    default = kubernetes.client.Configuration.get_default_copy()
    try:
        server, limit, authorization = asyncio.run(login())
    finally:
        kubernetes.client.Configuration.set_default(default)
    assert (server, limit) == ("https://127.0.0.1:6443", 39)
    assert authorization == "Bearer secret-token"
