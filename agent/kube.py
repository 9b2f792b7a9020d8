"""
The Kubernetes API client: in-cluster config inside a pod, a kubeconfig otherwise.

kubernetes-asyncio opens its aiohttp session with ``trust_env=True``, which
makes aiohttp look up the proxy environment (and read ``~/.netrc``) in a
thread on every API call: ~5% of the agent's CPU in the webhook bench, for an
answer that cannot change while the process runs. So the proxy for the API
server is looked up once here, with the same rules (``HTTPS_PROXY``,
``NO_PROXY``, …), set on the client's configuration, and the per-call lookup
is switched off.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from kubernetes_asyncio import client, config


async def make_api_client(*, kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and kubeconfig is None and context is None
    configuration = client.Configuration()
    if in_pod:
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    if not configuration.proxy:
        configuration.proxy = proxy_for(configuration.host)
    api = client.ApiClient(configuration)
    session = getattr(api.rest_client, "pool_manager", None)
    if session is not None and hasattr(session, "_trust_env"):
        session._trust_env = False
    return api


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``, as aiohttp's trust_env would pick it; None for none."""
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if not proxy or proxy_bypass(parts.hostname or ""):
        return None
    return proxy
