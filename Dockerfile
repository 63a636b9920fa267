# The image of the node agent, the controller and the CLI: `spider` is the entrypoint, the subcommand the
# argument (the manifests in deploy/ pass `agent`, `install-cni ...` or `controller`).
#   docker build -t REGISTRY/spider-ipam:TAG .
# Stage 1 builds wheels of the project (from this repository) and of its dependencies; stage 2 installs them
# without a compiler, build tools or the source tree.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY spider/ spider/
COPY actors/ actors/
COPY cni/ cni/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="spider-ipam" \
      org.opencontainers.image.description="Spiderpool-compatible underlay IPAM, actor-based, in Python" \
      org.opencontainers.image.licenses="Apache-2.0"
# iproute2: `ip` for looking at a node's links, addresses, routes and rules from inside the agent's container.
# Not pinned: the slim base tracks Debian stable, whose security updates we want at every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels spider-ipam \
    && rm -rf /wheels
# The agent's probe (the kubelet cannot speak HTTP over the agent's unix socket).
COPY deploy/image/spider-agent-healthy /usr/local/bin/spider-agent-healthy
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["spider"]
CMD ["--help"]
