# The image of the node agent, the controller and the CLI: `spider` is the entrypoint, the subcommand the
# argument (the manifests in deploy/ pass `agent`, `install-cni ...` or `controller`).
#   docker build -t REGISTRY/spider-ipam:TAG .
# Stage 1 fetches the locked dependencies (deploy/image/requirements.lock: every version pinned, every file
# hashed, wheels only) and builds the wheel of the project; stage 2 installs them without a compiler, build
# tools, an index or the source tree.
# The base is named by tag, not digest: pin it as python:3.11-slim@sha256:... for reproducible builds, see
# docs/operations.md ("Security").

FROM python:3.11-slim AS build
WORKDIR /src
COPY deploy/image/requirements.lock ./
# --require-hashes: a file on the index that differs from the locked one fails the build.
RUN pip download --no-cache-dir --require-hashes --only-binary=:all: --dest /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY spider/ spider/
COPY actors/ actors/
COPY cni/ cni/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="spider-ipam" \
      org.opencontainers.image.description="Spiderpool-compatible underlay IPAM, actor-based, in Python" \
      org.opencontainers.image.licenses="Apache-2.0"
# iproute2: `ip` for looking at a node's links, addresses, routes and rules from inside the agent's container.
# patchelf: points the self-contained CNI runtime's interpreter at its own loader and libraries (below, and at
# install time when a node's CNI bin directory is not /opt/cni/bin).
# ethtool: the RDMA metrics' `ethtool -S` counters (*vport*, pause, discards; actors/node/rdma.py).
# Not pinned: the slim base tracks Debian stable, whose security updates we want at every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 patchelf ethtool \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
COPY --from=build /src/requirements.lock /tmp/requirements.lock
# The dependencies exactly as locked (hashes checked again), then the project alone: nothing unlocked comes in.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels --require-hashes -r /tmp/requirements.lock \
    && pip install --no-cache-dir --no-index --no-deps /wheels/spider_ipam-*.whl \
    && rm -rf /wheels /tmp/requirements.lock
# The self-contained CNI runtime, built now for the nodes' /opt/cni/bin (docs/operations.md): the agent's
# install-cni init container copies it from /opt/spider/cni to the node as is, nothing patched or fetched then.
# Its paths name /opt/cni/bin (where the node runs it), so it cannot be run here; tests/tools runs it in a chroot.
RUN spider install-cni --self-contained --bin-dir /opt/spider/cni --host-bin-dir /opt/cni/bin \
    && ls -d /opt/spider/cni/spider-runtime-*/python3
# The agent's probe (the kubelet cannot speak HTTP over the agent's unix socket).
COPY deploy/image/spider-agent-healthy /usr/local/bin/spider-agent-healthy
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Not root by default: the controller and the CLI need no privilege. The agent and its install-cni init
# container ask for root in deploy/agent.yaml (runAsUser: 0), each saying why.
USER 65532:65532
ENTRYPOINT ["spider"]
CMD ["--help"]
