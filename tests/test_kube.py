"""The Kubernetes client: proxies from the environment are honoured, looked up once rather than per call."""

from __future__ import annotations

import pytest
import yaml

from agent.devcluster import kubeconfig_for
from agent.kube import make_api_client, proxy_for


def test_proxy_comes_from_the_environment_unless_the_host_is_excluded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://api.example.test:6443") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    assert proxy_for("https://api.example.test:6443") == "http://proxy.example.test:3128"
    assert proxy_for("http://api.example.test:6443") is None  # no HTTP_PROXY
    monkeypatch.setenv("NO_PROXY", "api.example.test")
    assert proxy_for("https://api.example.test:6443") is None


async def test_client_does_not_look_up_the_environment_on_every_call(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for("https://api.example.test:6443")))
    api = await make_api_client(kubeconfig=str(kubeconfig))
    try:
        assert api.configuration.proxy == "http://proxy.example.test:3128"
        assert api.rest_client.pool_manager.trust_env is False
    finally:
        await api.close()
