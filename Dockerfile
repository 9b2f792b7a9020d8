# syntax=docker/dockerfile:1
# mcp-scaling-agent's container image: `scaling-agent run`, as a non-root user, with only the runtime
# dependencies (no dev or demo extras). The config and the credentials are mounted at run time, not baked in:
#   /etc/scaling-agent/agent.yaml            the config (a ConfigMap in deploy/base; $SCALING_AGENT_CONFIG)
#   /var/run/secrets/scaling-agent/…         the secrets the config names as {file: …} (a Secret)
#   /var/lib/scaling-agent                   the sqlite ledger (a PersistentVolume)
#
#   docker build -t scaling-agent:0.1.0 .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/config/agent.yaml:/etc/scaling-agent/agent.yaml:ro" -e SCALING_AGENT_WEBHOOK_TOKEN=… \
#     -v "$HOME/.kube/config:/kube/config:ro" scaling-agent:0.1.0 run --kubeconfig /kube/config

# --- builder: the project's wheel and the wheels of its runtime dependencies ---------------------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent/ agent/
# `.` without extras: the [dev] and [demo] extras (kmock, pytest, ruff, …) are never built or installed.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SCALING_AGENT_CONFIG=/etc/scaling-agent/agent.yaml

# Install from the builder's wheels only (no index): the wheels come in through a bind mount, so they are
# not left in a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/mcp_scaling_agent-*.whl

# The user the Deployment's securityContext names (runAsUser/runAsGroup 10001); numeric in USER so the
# kubelet can verify runAsNonRoot.
RUN groupadd --system --gid 10001 scaling-agent \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin scaling-agent \
 && mkdir -p /etc/scaling-agent /var/lib/scaling-agent \
 && chown 10001:10001 /var/lib/scaling-agent

USER 10001:10001
WORKDIR /var/lib/scaling-agent
VOLUME ["/var/lib/scaling-agent"]
# The webhook, /healthz, /readyz and /metrics (webhook.port).
EXPOSE 8080

ENTRYPOINT ["scaling-agent"]
CMD ["run"]
