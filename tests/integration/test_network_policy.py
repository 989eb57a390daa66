"""NetworkPolicy is enforced on the local cluster's real node.

The CNI bridge wires pods but enforces no policy; kube-router's network policy
controller (iptables and ipset, started by hack/cluster-up.sh) does. These tests
send real TCP between real pods on the node and would fail if policies were
accepted by the API server but not enforced, which is what a bridge-only cluster
does silently.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from . import netpol
from .conftest import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT, OTHER_PORT = 8080, 9090
DENIED: set[netpol.Outcome] = {"blocked", "refused"}


def policy(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": name}, "spec": spec}
    )  # fmt: skip


def test_default_deny_ingress_blocks_pods_and_an_allow_rule_lets_one_back_in(
    control_plane: ControlPlane, kubecast_images: dict[str, str], namespace: str
) -> None:
    cp = control_plane
    # A second namespace, as the operator's is to a stream's: its pods are let in
    # by a namespaceSelector and a podSelector together.
    ops = f"{namespace[:50]}-ops"
    cp.kubectl("create", "namespace", ops)
    try:
        cp.wait_for(
            f"ServiceAccount {ops}/default",
            lambda: cp.kubectl("-n", ops, "get", "sa", "default", check=False).returncode == 0,
        )
        server = netpol.Probe.start(
            cp, namespace, "server", labels={"app": "server"}, listen=(PORT, OTHER_PORT)
        )
        client = netpol.Probe.start(cp, namespace, "client", labels={"app": "client"})
        other = netpol.Probe.start(cp, namespace, "other", labels={"app": "other"})
        operator = netpol.Probe.start(cp, ops, "operator", labels={"app": "operator"})
        stranger = netpol.Probe.start(cp, ops, "stranger", labels={"app": "stranger"})
        ip = server.ip()
        assert ip is not None
        everyone = (client, other, operator, stranger)

        # No policy: everyone reaches both ports (the listeners and the probe work).
        assert {p.connect(ip, port) for p in everyone for port in (PORT, OTHER_PORT)} == {"open"}

        cp.kubectl("-n", namespace, "apply", "-f", "-", input=policy(
            "default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]}))  # fmt: skip
        outcome, took = netpol.wait_for(client, ip, PORT, DENIED)
        print(f"default deny enforced after {took:.1f}s ({outcome})")
        # Everyone, on every port; and held, not a blip.
        assert {p.connect(ip, port) for p in everyone for port in (PORT, OTHER_PORT)} == {outcome}
        assert [client.connect(ip, PORT) for _ in range(3)] == [outcome] * 3

        cp.kubectl("-n", namespace, "apply", "-f", "-", input=policy("allow-client", {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                 "ports": [{"protocol": "TCP", "port": PORT}]},
                {"from": [{"namespaceSelector": {
                               "matchLabels": {"kubernetes.io/metadata.name": ops}},
                           "podSelector": {"matchLabels": {"app": "operator"}}}],
                 "ports": [{"protocol": "TCP", "port": OTHER_PORT}]},
            ],
        }))  # fmt: skip
        _, took = netpol.wait_for(client, ip, PORT, "open")
        print(f"allow rule enforced after {took:.1f}s")
        netpol.wait_for(operator, ip, OTHER_PORT, "open")
        # Exactly what the rules name: the pod and its port, the other
        # namespace's pod and its port; nothing else.
        assert client.connect(ip, OTHER_PORT) == outcome
        assert operator.connect(ip, PORT) == outcome
        assert other.connect(ip, PORT) == other.connect(ip, OTHER_PORT) == outcome
        assert stranger.connect(ip, PORT) == stranger.connect(ip, OTHER_PORT) == outcome

        # Policies gone: open again (kube-router removes the pod's firewall chain).
        cp.kubectl("-n", namespace, "delete", "networkpolicy", "--all")
        netpol.wait_for(other, ip, PORT, "open")
        netpol.wait_for(stranger, ip, OTHER_PORT, "open")
    finally:
        cp.kubectl("delete", "namespace", ops, "--wait=false", check=False)


def test_policy_rules_live_in_the_cluster_namespace_only(
    control_plane: ControlPlane, kubecast_images: dict[str, str], namespace: str
) -> None:
    """kube-router's chains and address sets are the cluster's, never the host's:
    cluster-down removes them, and the namespace with them."""
    cp = control_plane
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=policy("deny", {
        "podSelector": {}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "friend"}}}]}],
    }))  # fmt: skip
    netpol.Probe.start(cp, namespace, "target", labels={"app": "target"}, listen=(PORT,))
    netpol.Probe.start(cp, namespace, "friend", labels={"app": "friend"})

    def enforced() -> bool:
        rules, sets = netpol.netns_rules(cp)
        return "KUBE-POD-FW-" in rules and any(s.startswith("KUBE-") for s in sets)

    cp.wait_for("kube-router's pod chain and ipsets in the namespace", enforced, timeout=60)
    host_rules = subprocess.run(
        ["iptables-save"], capture_output=True, text=True, check=True
    ).stdout
    host_sets = subprocess.run(
        ["ipset", "list", "-n"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "kube-router" not in host_rules and "KUBE-ROUTER" not in host_rules
    assert not [s for s in host_sets if s.startswith("KUBE-")], host_sets
