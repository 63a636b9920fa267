"""Which store a process uses: the embedded SQLite file (the default) or a Kubernetes API server.

Owns ``StoreSettings`` (what ``--store``, ``--kubeconfig``/``$SPIDER_KUBECONFIG`` and ``--in-cluster`` say)
and ``open_store``, the one place the agent and the CLI turn those settings into a ``Store``.  The Kubernetes
adapter (and with it kubernetes-asyncio and aiohttp) is imported only when a process asks for it, so the
embedded store's commands start as fast as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore, default_store_path

KUBECONFIG_ENV = "SPIDER_KUBECONFIG"


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value in (None, "") else Path(str(value)).expanduser()


@attrs.frozen
class StoreSettings:
    """Where a process keeps its objects."""

    store_path: Path = attrs.field(factory=default_store_path, converter=Path)
    """The embedded store file (used when neither a kubeconfig nor in-cluster is asked for)."""
    kubeconfig: Path | None = attrs.field(default=None, converter=_optional_path)
    """Use the Kubernetes API server this kubeconfig names."""
    in_cluster: bool = False
    """Use the API server of the cluster this pod runs in (its service account)."""
    context: str | None = None
    """The kubeconfig context (default: its current context)."""

    def __attrs_post_init__(self) -> None:
        if self.kubeconfig is not None and self.in_cluster:
            raise ValueError("choose a kubeconfig or in-cluster configuration, not both")

    @property
    def kubernetes(self) -> bool:
        """Whether this is the Kubernetes store."""
        return self.kubeconfig is not None or self.in_cluster

    def describe(self) -> str:
        """For logs: which store, and where."""
        if self.in_cluster:
            return "kubernetes (in-cluster)"
        if self.kubeconfig is not None:
            return f"kubernetes (kubeconfig {self.kubeconfig})"
        return f"embedded ({self.store_path})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> StoreSettings:
        """Settings with ``$SPIDER_KUBECONFIG`` as the default kubeconfig; ``overrides`` win when not None."""
        env = os.environ if environ is None else environ
        values = {k: v for k, v in overrides.items() if v is not None}
        if "kubeconfig" not in values and not values.get("in_cluster"):  # NB: flags beat the environment
            values["kubeconfig"] = env.get(KUBECONFIG_ENV) or None
        return cls(**values)  # type: ignore[arg-type]


async def open_store(settings: StoreSettings, *, create: bool = True) -> Store:
    """Open the store the settings name; the caller closes it (``aclose``).  Without ``create`` a missing
    embedded store file is an error (``StoreUnavailable``) instead of a new, empty store."""
    if settings.kubernetes:
        from actors.stores.kube import KubeStore  # NB: lazily: kubernetes-asyncio is a heavy import

        return await KubeStore.open(settings.kubeconfig, context=settings.context, in_cluster=settings.in_cluster)
    return await SqliteStore.open(settings.store_path, create=create)
