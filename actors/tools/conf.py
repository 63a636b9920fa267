"""``--config-path``: reading Spiderpool's ``conf.yml`` once at start, and the switches it gives defaults to.

Owns where the file is looked for (``/etc/spiderpool/conf.yml``, where both manifests mount ``spiderpool-conf``,
when it exists), reading it, the one log line naming the keys it gives that nothing here honours, and the
``--X``/``--no-X`` switch pairs whose default comes from a key.  The precedence, for every setting a key
drives: an explicit flag, then the setting's environment variable (where Spiderpool has one), then the file,
then the built-in default (Spiderpool's, ``spider.conf``).  ``spider.conf`` parses; this module does the I/O.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from spider.conf import SpiderpoolConf, parse_conf
from spider.errors import InvalidSpec

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/spiderpool/conf.yml")
"""Where the agent's DaemonSet and the controller's Deployment mount ``spiderpool-conf``."""


def add_config_path_argument(p: argparse.ArgumentParser) -> None:
    """``--config-path`` (Spiderpool's flag name)."""
    p.add_argument(
        "--config-path",
        default=None,
        metavar="FILE",
        help=f"Spiderpool's settings file (spiderpool-conf's conf.yml), read once at start; flags and environment "
        f"variables win over it (default: {DEFAULT_CONFIG_PATH} when it exists, else none; '' for none)",
    )


def add_switch(p: argparse.ArgumentParser, name: str, key: str, on: str, off: str) -> None:
    """``--no-NAME`` and ``--NAME``, one destination ``NAME`` (dashes as underscores) that stays ``None`` unless
    a flag is given, so that conf.yml's ``key`` (then the built-in default) decides.  ``--no-NAME`` comes first:
    it is the spelling the manifests and earlier releases use."""
    dest = name.replace("-", "_")
    p.add_argument(
        f"--no-{name}", dest=dest, action="store_const", const=False, default=None, help=f"{off} ({key}: false)"
    )
    p.add_argument(
        f"--{name}",
        dest=dest,
        action="store_const",
        const=True,
        default=None,
        help=f"{on} (default: conf.yml's {key}, else on)",
    )


def resolve_config_path(given: str | None, default: Path = DEFAULT_CONFIG_PATH) -> Path | None:
    """The file to read: ``given`` (``''``: none), else ``default`` when it exists, else none."""
    if given is None:
        return default if default.is_file() else None
    return Path(given) if given else None


def load_conf(given: str | None, component: str, default: Path = DEFAULT_CONFIG_PATH) -> SpiderpoolConf:
    """The settings of ``--config-path`` (``given``; see ``resolve_config_path``), read once; Spiderpool's
    defaults without a file.  Logs one line naming the keys it gives that nothing here honours.

    ``InvalidSpec`` for a file that cannot be read, is not YAML, or has a key of the wrong type.
    """
    path = resolve_config_path(given, default)
    if path is None:
        log.debug("%s: no settings file (no %s): flags, environment variables and defaults only", component, default)
        return SpiderpoolConf()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidSpec(kind="settings file", name=str(path), reason=f"cannot be read: {reason}") from None
    conf = parse_conf(text, str(path))
    log_ignored(conf, component, path)
    return conf


def log_ignored(conf: SpiderpoolConf, component: str, path: Path) -> None:
    """One line naming the keys of ``path`` nothing here honours: a warning when one of them asks for behaviour
    this implementation lacks (or is unknown), else information."""
    ignored = conf.ignored()
    if not ignored:
        log.info("%s: settings from %s", component, path)
        return
    missing = conf.asks_for_missing_behaviour()
    level = logging.WARNING if missing or conf.unknown else logging.INFO
    detail = f"; not the defaults, so not as asked: {', '.join(missing)}" if missing else ""
    unknown = f"; unknown to Spiderpool: {', '.join(conf.unknown)}" if conf.unknown else ""
    log.log(
        level,
        "%s: settings from %s; ignored (not implemented here): %s%s%s",
        component,
        path,
        ", ".join(ignored),
        detail,
        unknown,
    )


def add_static_ip_switches(p: argparse.ArgumentParser) -> None:
    """``--[no-]statefulset-ips`` and ``--[no-]kubevirt-ips`` (conf.yml's ``enableStatefulSet`` and
    ``enableKubevirtStaticIP``): the agent keeps such pods' addresses, and the controller's GC leaves them."""
    add_switch(
        p,
        "statefulset-ips",
        "enableStatefulSet",
        on="StatefulSet pods keep their addresses",
        off="StatefulSet pods do not keep their addresses",
    )
    add_switch(
        p,
        "kubevirt-ips",
        "enableKubevirtStaticIP",
        on="KubeVirt VM pods keep their addresses",
        off="KubeVirt VM pods do not keep their addresses",
    )


def pick(flag: Any, conf: SpiderpoolConf, key: str) -> Any:
    """A setting without an environment variable: the flag when given (not ``None``), else conf.yml's ``key``
    (Spiderpool's default when the file does not give it, which is ours too)."""
    return flag if flag is not None else conf.value(key)
