"""
The Kubernetes API client: in-cluster config inside a pod, a kubeconfig otherwise.
"""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config


async def make_api_client(*, kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and kubeconfig is None and context is None
    configuration = client.Configuration()
    if in_pod:
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return client.ApiClient(configuration)
