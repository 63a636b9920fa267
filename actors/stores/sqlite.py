"""The embedded store: Kubernetes-shaped objects in one SQLite file that every process on the machine shares.

Owns the file (schema, WAL mode, the global resourceVersion counter, the event log that watches replay) and
the API server's write semantics for the ``Store`` port (``actors.stores.port``): uid, creationTimestamp,
generation, the status subresource, finalizers and deletionTimestamp, resourceVersion preconditions, no-op
writes that change nothing, watch history that runs out (``Gone``).  It knows kinds only through
``spider.kinds``; it must not know what a pool is, and it never holds a transaction across an ``await``.

Concurrency.  Several processes (one agent per simulated node, the controller, the CLI) open the same file.
SQLite in WAL mode lets readers run beside one writer; every write is one short ``BEGIN IMMEDIATE``
transaction, so the read-modify-write of the version counter and of the object row is atomic across
processes, and a busy writer makes the others wait (``busy_timeout``) rather than fail.  Writers queue on
an ``flock`` of ``PATH.lock`` first, polled every 0.1 to 2 ms: SQLite's own busy handler sleeps up to
100 ms at a time, and ten agents writing one pool spent most of their waits asleep with the lock free.
``update_status_atomically`` runs a caller's read-modify-write inside one such transaction.  Within a process
the one connection is used one call at a time (a ``CapacityLimiter(1)``), from worker threads, except that a
``get`` of a small object runs in the trio thread (a thread hop costs more than the read).  A call already
running in a thread finishes even when its caller is cancelled (trio's default), so a write is either whole
or absent.

Versions.  ``resourceVersion`` is the decimal string of a counter that every write increments, so versions
are globally ordered as on Kubernetes.  Every write appends one row to ``events``; watches poll that table
(every ``poll_interval`` seconds, backing off to five times that while nothing happens, and woken at once by
writes made through the same ``SqliteStore``).  Only the last ``event_retention`` events are kept, and no
more than ``event_budget`` bytes of them; a watch from before them raises ``Gone``.

Watch filtering follows the API server's watch cache: with a label selector, an object modified so that it
starts matching arrives as ``ADDED`` and one that stops matching arrives as ``DELETED`` (carrying its new
state).  ``resource_version="0"`` starts with a synthetic ``ADDED`` for every current object, as on
Kubernetes; an empty one starts from now (the moment of the first ``__anext__``).

Namespaces: for namespaced kinds an empty namespace means ``default`` in ``get``/``create``/``delete`` and
"every namespace" in ``list``/``watch``; for cluster-scoped kinds the namespace is always ``""`` and any
namespace argument is ignored.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import secrets
import sqlite3
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import attrs
import trio

from actors.stores.port import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    KindLister,
    NotFound,
    Obj,
    ObjectList,
    WatchEvent,
)
from spider import limits
from spider.errors import StoreUnavailable
from spider.fields import parse_field_selector
from spider.kinds import Kind, kind_info
from spider.selector import Selector, label_key_problem, label_value_problem, parse_selector

T = TypeVar("T")

DEFAULT_EVENT_RETENTION = 10_000
"""Events kept for watches to replay; about what the API server's watch cache holds for a busy kind."""
DEFAULT_EVENT_BUDGET = 64 * 1024 * 1024
"""Bytes of event bodies kept for watches, whatever their number (a 20,000-address pool's status is 4 MB)."""
DEFAULT_BUSY_TIMEOUT = 30.0
"""Seconds a write waits for another process's write before ``StoreUnavailable``."""
INLINE_READ_BYTES = 32_768
"""Objects up to this size are read by ``get`` in the trio thread (a fraction of a millisecond at most)."""
DEFAULT_POLL_INTERVAL = 0.02
"""Seconds between watch polls while things happen; idle watches back off to five times this."""
_WATCH_BATCH = 500  # events read per poll; bounds memory for a watch far behind
_SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS objects (
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (kind, namespace, name)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS events (
        rv INTEGER PRIMARY KEY, kind TEXT NOT NULL, namespace TEXT NOT NULL,
        type TEXT NOT NULL, body TEXT NOT NULL, prev_labels TEXT)""",
    "CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind, rv)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # rv: the global version counter; compacted: events up to this version are gone.  NB: the counter starts
    # at 1, so no list ever returns "0", which to a watch means "any version" (synthetic ADDED events).
    f"INSERT OR IGNORE INTO meta (key, value) VALUES ('rv', 1), ('compacted', 0), ('schema', {_SCHEMA_VERSION})",
    # event_bytes: the size of the bodies the events table holds, kept so pruning by size needs no full scan.
    "INSERT OR IGNORE INTO meta (key, value) SELECT 'event_bytes', coalesce(sum(length(body)), 0) FROM events",
)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
_Events = list[WatchEvent]  # NB: spelled here because the class's own ``list`` method shadows the builtin


def default_store_path(environ: Mapping[str, str] | None = None, *, euid: int | None = None) -> Path:
    """Where the embedded store lives unless configured.

    ``$SPIDER_STORE`` when set; otherwise ``/var/lib/spider/store.db`` for root; otherwise
    ``$XDG_STATE_HOME/spider/store.db``, with ``XDG_STATE_HOME`` defaulting to ``~/.local/state``.
    ``environ`` and ``euid`` default to the process's own.
    """
    env = os.environ if environ is None else environ
    if env.get("SPIDER_STORE"):
        return Path(env["SPIDER_STORE"]).expanduser()
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/spider/store.db")
    state = env.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(state) / "spider" / "store.db"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(obj: Obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _loads(text: str) -> Obj:
    result: Obj = json.loads(text)
    return result


def _labels(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _make_file(path: Path) -> None:
    """A new database in WAL mode at ``path``, made under another name and linked into place once it is one: a
    creator killed half-way (``sqlite3.connect`` makes a 0-byte file, the first page comes later) leaves no
    empty file at ``path``, which every later start would refuse."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    temporary.unlink(missing_ok=True)
    conn = sqlite3.connect(temporary, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    try:
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _connect(path: Path, busy_timeout: float, create: bool = True) -> tuple[sqlite3.Connection, int]:
    """Open the file, switch it to WAL and create the schema; safe when processes race on a fresh file.
    Also opens the writers' lock file beside it.  A missing file is an error unless ``create``; an empty
    (0-byte) one always is, unless another process is creating it right now (it holds the lock meanwhile)."""
    path = path.expanduser()
    if not create and not path.exists():
        raise StoreUnavailable(reason=f"no store file at {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    lockfd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # NB: whoever creates the file holds the writers' lock until it is initialised, so a 0-byte file nobody
        # is creating is never a store: it is no file of ours (``_make_file`` never leaves one behind)
        fresh = not path.exists() or path.stat().st_size == 0
        if fresh:
            _flock_within(lockfd, path, busy_timeout)
            if path.exists() and path.stat().st_size == 0:
                raise StoreUnavailable(reason=f"{str(path)!r} is an empty file, not a store (remove it to start anew)")
            if not path.exists():
                if not create:
                    raise StoreUnavailable(reason=f"no store file at {str(path)!r}")
                _make_file(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.  The connection is used from several worker
        # threads, never two at once (the store's limiter).
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    except BaseException:
        os.close(lockfd)
        raise
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        deadline = time.monotonic() + busy_timeout
        while True:
            # NB: switching a fresh file to WAL needs an exclusive lock and can report SQLITE_BUSY without
            # consulting the busy handler when another process is doing the same; retry it ourselves.
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise StoreUnavailable(reason=f"{path}: SQLite refused WAL mode (journal_mode={mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            (schema,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if schema != _SCHEMA_VERSION:
                raise StoreUnavailable(reason=f"{path}: schema version {schema}, this program knows {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        os.close(lockfd)
        raise
    if fresh:
        fcntl.flock(lockfd, fcntl.LOCK_UN)
    return conn, lockfd


def _flock_within(lockfd: int, path: Path, timeout: float) -> None:
    """Take the writers' ``flock`` on ``lockfd`` within ``timeout`` seconds, polling."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"{path}.lock: busy for {timeout} s") from None
            time.sleep(0.002)


def _guards(kind: str, m: Obj) -> tuple[str, str]:
    """The resourceVersion and uid a write names; ``Invalid`` for a version no store could have given (the
    API server cannot parse it either, and answers 500)."""
    sent_rv, sent_uid = str(m.get("resourceVersion") or ""), str(m.get("uid") or "")
    if sent_rv:
        _parse_version(kind, sent_rv)
    return sent_rv, sent_uid


def _prune(conn: sqlite3.Connection, floor: int) -> None:
    """Drop the events up to version ``floor``; watches from before it get ``Gone``."""
    (freed,) = conn.execute("SELECT coalesce(sum(length(body)), 0) FROM events WHERE rv <= ?", (floor,)).fetchone()
    conn.execute("DELETE FROM events WHERE rv <= ?", (floor,))
    conn.execute("UPDATE meta SET value = max(value - ?, 0) WHERE key = 'event_bytes'", (freed,))
    conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'compacted'", (floor,))


def _counter(conn: sqlite3.Connection, key: str) -> int:
    (value,) = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(value)


def _parse_version(kind: str, rv: str) -> int:
    try:
        value = int(rv)
    except ValueError:
        value = -1
    if value < 0:
        raise Invalid(kind=kind, name="", reason=f"resourceVersion {rv!r} is not a non-negative integer")
    return value


def _check_string_map(kind: str, name: str, field: str, value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Invalid(kind=kind, name=name, reason=f"metadata.{field} must be a map of strings")
    return value


def _validate_meta(kind: str, name: str, m: dict[str, Any]) -> None:
    labels = _check_string_map(kind, name, "labels", m.get("labels"))
    for key, value in labels.items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem is not None:
            raise Invalid(kind=kind, name=name, reason=problem)
    _check_string_map(kind, name, "annotations", m.get("annotations"))
    finalizers = m.get("finalizers")
    if finalizers is not None and (
        not isinstance(finalizers, list) or not all(isinstance(f, str) and f for f in finalizers)
    ):
        raise Invalid(kind=kind, name=name, reason="metadata.finalizers must be a list of non-empty strings")
    _check_owners(kind, name, m.get("ownerReferences"))


def _check_owners(kind: str, name: str, refs: object) -> None:
    """As the API server's ValidateOwnerReferences: a list of objects naming apiVersion, kind, name and uid
    (strings), ``controller`` and ``blockOwnerDeletion`` booleans when given, at most one controller."""
    if refs is None:
        return
    if not isinstance(refs, list) or not all(isinstance(ref, dict) and _owner_ok(ref) for ref in refs):
        why = "metadata.ownerReferences must be a list of objects with apiVersion, kind, name and uid"
        raise Invalid(kind=kind, name=name, reason=why)
    if sum(bool(ref.get("controller")) for ref in refs) > 1:
        why = "metadata.ownerReferences: Only one reference can have Controller set to true"
        raise Invalid(kind=kind, name=name, reason=why)


def _owner_ok(ref: dict[str, Any]) -> bool:
    named = all(isinstance(ref.get(f), str) and ref[f] for f in ("apiVersion", "kind", "name", "uid"))
    return named and all(isinstance(ref.get(f, False), bool) for f in ("controller", "blockOwnerDeletion"))


def _without(obj: Obj, *fields: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in fields}


@attrs.define(eq=False)
class _Key:
    """Where an object lives, resolved against the kind table."""

    info: Kind
    namespace: str
    name: str

    @classmethod
    def of(cls, kind: str, name: str, namespace: str | None) -> _Key:
        info = kind_info(kind)
        ns = (namespace or "default") if info.namespaced else ""
        return cls(info, ns, name)

    def not_found(self) -> NotFound:
        return NotFound(kind=self.info.kind, name=self.name, namespace=self.namespace)


@attrs.define(eq=False)
class SqliteStore:
    """The ``Store`` port on one SQLite file; open with ``await SqliteStore.open(path)``."""

    path: Path
    _conn: sqlite3.Connection
    event_retention: int = DEFAULT_EVENT_RETENTION
    poll_interval: float = DEFAULT_POLL_INTERVAL
    event_budget: int = DEFAULT_EVENT_BUDGET
    """Bytes of event bodies kept at most (besides ``event_retention`` events): big pools write big statuses."""
    _limiter: trio.CapacityLimiter = attrs.field(init=False, factory=lambda: trio.CapacityLimiter(1))
    _written: trio.Event = attrs.field(init=False, factory=trio.Event)
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    _lockfd: int = -1
    """The open ``PATH.lock`` that writers ``flock`` (``_lock_writers``)."""
    _closed: bool = attrs.field(init=False, default=False)

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        event_retention: int = DEFAULT_EVENT_RETENTION,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        event_budget: int = DEFAULT_EVENT_BUDGET,
        create: bool = True,
    ) -> SqliteStore:
        """Open the store at ``path``, creating directories, file and schema as needed when ``create``.

        ``StoreUnavailable`` when the file is missing and not ``create``, is empty (0 bytes), or is no store.
        """
        if event_retention < 1:
            raise ValueError("event_retention must be at least 1")
        p = Path(path)
        try:
            conn, lockfd = await trio.to_thread.run_sync(_connect, p, busy_timeout, create)
        except (sqlite3.Error, OSError) as exc:
            # NB: also "file is not a database" and permission trouble: say which file, keep the cause.
            raise StoreUnavailable(reason=f"cannot open {str(p)!r}: {exc}") from exc
        return cls(p, conn, event_retention, poll_interval, event_budget, busy_timeout, lockfd)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- plumbing ----------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a worker thread, alone on the connection; SQLite trouble is transient."""

        def call() -> T:
            if self._closed:  # NB: checked under the limiter, so aclose() cannot slip in between
                raise trio.ClosedResourceError("the store is closed")
            return fn(self._conn)

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(reason=f"{self.path}: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction (the cross-process write lock); wake watches."""

        def txn(conn: sqlite3.Connection) -> T:
            self._lock_writers()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            finally:
                fcntl.flock(self._lockfd, fcntl.LOCK_UN)

        try:
            return await self._run(txn)
        finally:
            self._written.set()
            self._written = trio.Event()

    def _lock_writers(self) -> None:
        """Worker thread: take the writers' ``flock`` (see the module docstring), within ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.0001
        while True:
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(f"{self.path}.lock: busy for {self.busy_timeout} s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.002)
            except OSError as exc:  # NB: ENOLCK on some network file systems: the store's failure, not a crash
                raise sqlite3.OperationalError(f"{self.path}.lock: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction: one consistent snapshot, never blocked by writers (WAL)."""

        def txn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await self._run(txn)

    def _fetch(self, conn: sqlite3.Connection, key: _Key) -> Obj | None:
        row = conn.execute(
            "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (key.info.kind, key.namespace, key.name),
        ).fetchone()
        return None if row is None else _loads(row[0])

    def _commit(self, conn: sqlite3.Connection, key: _Key, event: EventType, obj: Obj, prev: Obj | None = None) -> Obj:
        """Stamp ``obj`` with the next version, store (or remove) its row and log the event."""
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'rv'")
        rv = _counter(conn, "rv")
        obj["metadata"]["resourceVersion"] = str(rv)
        body = _dumps(obj)
        where = (key.info.kind, key.namespace, key.name)
        if event == "DELETED":
            conn.execute("DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", where)
        else:
            conn.execute(
                "INSERT OR REPLACE INTO objects (kind, namespace, name, uid, rv, body) VALUES (?, ?, ?, ?, ?, ?)",
                (*where, obj["metadata"]["uid"], rv, body),
            )
        prev_labels = None if prev is None else _dumps(_labels(prev))
        conn.execute(
            "INSERT INTO events (rv, kind, namespace, type, body, prev_labels) VALUES (?, ?, ?, ?, ?, ?)",
            (rv, key.info.kind, key.namespace, event, body, prev_labels),
        )
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'event_bytes'", (len(body),))
        # Prune on write: versions are dense (one event per write), so this keeps exactly the newest events;
        # and by size, so a /16 pool's 4 MB statuses cannot grow the file by gigabytes (keep the newest one).
        floor = rv - self.event_retention
        if _counter(conn, "event_bytes") > self.event_budget:
            target = _counter(conn, "event_bytes") - self.event_budget * 3 // 4
            freed = 0
            for old_rv, size in conn.execute("SELECT rv, length(body) FROM events WHERE rv < ? ORDER BY rv", (rv,)):
                floor, freed = max(floor, old_rv), freed + size
                if freed >= target:
                    break
        if floor > 0:
            _prune(conn, floor)
        return obj

    @staticmethod
    def _check_preconditions(key: _Key, stored: Obj, resource_version: str, uid: str = "") -> None:
        m = stored["metadata"]
        if resource_version and resource_version != m["resourceVersion"]:
            raise Conflict(kind=key.info.kind, name=key.name, sent_version=resource_version)
        if uid and uid != m["uid"]:
            raise Invalid(kind=key.info.kind, name=key.name, reason=f"metadata.uid is immutable (stored {m['uid']})")

    def _incoming(self, obj: Obj) -> tuple[_Key, Obj]:
        """A private deep copy of a caller's object, with kind and apiVersion checked; ``Invalid``."""
        try:  # NB: also the deep copy that lets the caller keep mutating its dict
            new = _loads(json.dumps(obj, separators=(",", ":"), allow_nan=False))
        except (ValueError, TypeError) as exc:  # NaN, Infinity or a value JSON has not: no API server takes it
            m = obj.get("metadata")
            name = str(m.get("name", "")) if isinstance(m, dict) else ""
            raise Invalid(kind=str(obj.get("kind", "")), name=name, reason=f"not JSON: {exc}") from None
        info = kind_info(str(new.get("kind") or ""))
        m = new.get("metadata")
        if not isinstance(m, dict):
            raise Invalid(kind=info.kind, name="", reason="metadata must be an object")
        name = m.get("name") or ""
        if not isinstance(name, str) or "/" in name or len(name) > 253:
            raise Invalid(kind=info.kind, name=str(name), reason="metadata.name must be a string of at most 253 chars")
        if new.get("apiVersion") and new["apiVersion"] != info.api_version:
            raise Invalid(kind=info.kind, name=name, reason=f"apiVersion must be {info.api_version!r}")
        new["apiVersion"], new["kind"] = info.api_version, info.kind
        namespace = m.get("namespace") or ""
        if not isinstance(namespace, str) or "/" in namespace:
            raise Invalid(kind=info.kind, name=name, reason="metadata.namespace must be a name")
        key = _Key.of(info.kind, name, namespace)
        m["namespace"] = key.namespace
        if not info.namespaced:
            del m["namespace"]
        _validate_meta(info.kind, name, m)
        for field in ("labels", "annotations", "finalizers", "ownerReferences"):
            if field in m and not m[field]:
                del m[field]  # NB: as Go's omitempty does, so {} and absent are the same (no-op updates stay no-ops)
        return key, new

    # --- the Store port ----------------------------------------------------------------------------------

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        """The object, or ``NotFound``.

        A small object (most: pods, namespaces, endpoints) is read in the trio thread, as quick as waking a
        worker thread would be; only one too big for that (a pool holding thousands of records) goes to one.
        """
        key = _Key.of(kind, name, namespace)
        async with self._limiter:
            if self._closed:
                raise trio.ClosedResourceError("the store is closed")
            try:
                row = self._conn.execute(
                    "SELECT CASE WHEN length(body) <= ? THEN body END FROM objects"
                    " WHERE kind = ? AND namespace = ? AND name = ?",
                    (INLINE_READ_BYTES, key.info.kind, key.namespace, key.name),
                ).fetchone()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(reason=f"{self.path}: {exc}") from exc
        if row is None:
            raise key.not_found()
        if row[0] is not None:
            return _loads(row[0])
        found = await self._read(lambda conn: self._fetch(conn, key))
        if found is None:
            raise key.not_found()
        return found

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        """The object's ``metadata``, or ``NotFound``: SQLite takes it out of the stored text, so the rest of a big
        object is never decoded in Python (and, as ``get``, one too big to scan in the trio thread is scanned in a
        worker thread)."""
        key = _Key.of(kind, name, namespace)
        sql = "SELECT {} FROM objects WHERE kind = ? AND namespace = ? AND name = ?"
        where = (key.info.kind, key.namespace, key.name)
        async with self._limiter:
            if self._closed:
                raise trio.ClosedResourceError("the store is closed")
            try:
                row = self._conn.execute(
                    sql.format("CASE WHEN length(body) <= ? THEN json_extract(body, '$.metadata') END"),
                    (INLINE_READ_BYTES, *where),
                ).fetchone()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(reason=f"{self.path}: {exc}") from exc
        if row is not None and row[0] is None:
            row = await self._read(
                lambda conn: conn.execute(sql.format("json_extract(body, '$.metadata')"), where).fetchone()
            )
        if row is None:
            raise key.not_found()
        return _loads(row[0])

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        """Objects of a kind in name order, optionally in one namespace and matching a label and a field selector."""
        info = kind_info(kind)
        selector = parse_selector(label_selector)
        fields = parse_field_selector(field_selector, info.kind, info.namespaced)
        ns = namespace if info.namespaced and namespace else None

        def read(conn: sqlite3.Connection) -> ObjectList:
            sql = "SELECT body FROM objects WHERE kind = ?"
            params: tuple[str, ...] = (info.kind,)
            if ns is not None:
                sql, params = sql + " AND namespace = ?", (*params, ns)
            rows = conn.execute(sql + " ORDER BY namespace, name", params).fetchall()
            items = [obj for (body,) in rows if selector.matches(_labels(obj := _loads(body))) and fields.matches(obj)]
            return ObjectList(items=items, resource_version=str(_counter(conn, "rv")))

        return await self._read(read)

    async def create(self, obj: Obj) -> Obj:
        """Store a new object with uid, creationTimestamp, resourceVersion and generation 1.

        The status of a kind with a status subresource is dropped (as the API server does); set it with
        ``update_status``.  ``metadata.generateName`` is honoured when the name is empty.
        """
        key, new = self._incoming(obj)
        m = new["metadata"]
        if m.get("resourceVersion"):
            raise Invalid(kind=key.info.kind, name=key.name, reason="resourceVersion must not be set on create")
        if not key.name:
            prefix = m.get("generateName") or ""
            if not prefix or not isinstance(prefix, str):
                raise Invalid(kind=key.info.kind, name="", reason="metadata.name or metadata.generateName is required")
            key.name = m["name"] = prefix + "".join(
                secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5)
            )
        if problem := limits.dns_subdomain_problem(key.name):  # NB: as the API server: 422, never stored
            raise Invalid(kind=key.info.kind, name=key.name, reason=f"metadata.name {problem}")
        for gone in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            m.pop(gone, None)
        m.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if key.info.status_subresource:
            new.pop("status", None)

        def write(conn: sqlite3.Connection) -> Obj:
            if self._fetch(conn, key) is not None:
                raise AlreadyExists(kind=key.info.kind, name=key.name, namespace=key.namespace)
            return self._commit(conn, key, "ADDED", new)

        return await self._write(write)

    async def update(self, obj: Obj) -> Obj:
        """Replace metadata and spec (and status, for kinds without a status subresource).

        Guarded by ``metadata.resourceVersion`` when set (``Conflict``).  uid, creationTimestamp,
        deletionTimestamp and generation are the store's: generation grows when anything but metadata (and
        status, for kinds with a status subresource) changes.  Removing the last finalizer of an object being
        deleted removes it.  An update that changes nothing writes nothing and keeps the version.
        """
        key, new = self._incoming(obj)
        m = new["metadata"]
        sent_rv, sent_uid = _guards(key.info.kind, m)

        def write(conn: sqlite3.Connection) -> Obj:
            stored = self._fetch(conn, key)
            if stored is None:
                raise key.not_found()
            self._check_preconditions(key, stored, sent_rv, sent_uid)
            old = stored["metadata"]
            for field in ("uid", "creationTimestamp", "resourceVersion", "generation"):
                m[field] = old[field]
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                m.pop(field, None)
                if field in old:
                    m[field] = old[field]
            if key.info.status_subresource:
                new.pop("status", None)
                if "status" in stored:
                    new["status"] = stored["status"]
            ignored = ("metadata", "status") if key.info.status_subresource else ("metadata",)
            if _without(new, *ignored) != _without(stored, *ignored):
                m["generation"] = old["generation"] + 1
            if new == stored:
                return stored
            finalizers = m.get("finalizers") or []
            if "deletionTimestamp" in old:
                added = set(finalizers) - set(old.get("finalizers") or [])
                if added:
                    reason = f"no new finalizers can be added to an object being deleted: {sorted(added)}"
                    raise Invalid(kind=key.info.kind, name=key.name, reason=reason)
                if not finalizers:  # NB: as the API server: the event carries the last state stored, the answer
                    # is the object as sent, at the version it had (the update itself is never stored)
                    self._commit(conn, key, "DELETED", _loads(_dumps(stored)), stored)
                    return new
            return self._commit(conn, key, "MODIFIED", new, stored)

        return await self._write(write)

    async def update_status(self, obj: Obj) -> Obj:
        """Replace only ``status`` (removing it when absent), guarded like ``update``.

        ``Invalid`` for kinds without a status subresource: they carry status through ``update``.
        """
        key, new = self._incoming(obj)
        if not key.info.status_subresource:
            reason = f"{key.info.kind} has no status subresource; its status is written by update"
            raise Invalid(kind=key.info.kind, name=key.name, reason=reason)
        m = new["metadata"]
        sent_rv, sent_uid = _guards(key.info.kind, m)

        def write(conn: sqlite3.Connection) -> Obj:
            stored = self._fetch(conn, key)
            if stored is None:
                raise key.not_found()
            self._check_preconditions(key, stored, sent_rv, sent_uid)
            result = _without(stored, "status")
            if "status" in new:
                result["status"] = new["status"]
            if result == stored:
                return stored
            return self._commit(conn, key, "MODIFIED", result, stored)

        return await self._write(write)

    async def update_status_atomically(
        self,
        kind: str,
        name: str,
        change: Callable[[Obj], Obj | None],
        namespace: str = "",
        *,
        read_first: Callable[[KindLister], None] | None = None,
    ) -> Obj:
        """Read-modify-write of ``status`` in one write transaction: never a ``Conflict``.

        ``change(stored)`` runs in the store's worker thread while this process holds the write lock; it
        returns the new ``status`` (a dict it owns), or ``None`` to write nothing.  Returns the object as
        stored afterwards.  ``NotFound`` when it does not exist.  Only for callers whose ``change`` is quick
        and pure: every other writer of the file waits for it.  ``read_first`` (as quick) runs just before
        ``change`` in the same transaction, with a function listing every object of a kind.
        """
        key = _Key.of(kind, name, namespace)
        if not key.info.status_subresource:
            raise Invalid(kind=key.info.kind, name=key.name, reason=f"{key.info.kind} has no status subresource")

        def every(conn: sqlite3.Connection, of: str) -> list[Obj]:
            sql = "SELECT body FROM objects WHERE kind = ? ORDER BY namespace, name"
            return [_loads(body) for (body,) in conn.execute(sql, (kind_info(of).kind,)).fetchall()]

        def write(conn: sqlite3.Connection) -> Obj:
            if read_first is not None:
                read_first(functools.partial(every, conn))
            stored = self._fetch(conn, key)
            if stored is None:
                raise key.not_found()
            status = change(stored)
            if status is None or status == stored.get("status"):
                return stored
            return self._commit(conn, key, "MODIFIED", {**stored, "status": status}, stored)

        return await self._write(write)

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        """Delete, or set ``deletionTimestamp`` (once) while finalizers remain; ``NotFound``, ``Conflict``."""
        key = _Key.of(kind, name, namespace)

        def write(conn: sqlite3.Connection) -> None:
            stored = self._fetch(conn, key)
            if stored is None:
                raise key.not_found()
            self._check_preconditions(key, stored, resource_version)
            m = stored["metadata"]
            if not m.get("finalizers"):
                self._commit(conn, key, "DELETED", stored, stored)
            elif "deletionTimestamp" not in m:
                prev = _loads(_dumps(stored))
                m.update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0, generation=m["generation"] + 1)
                self._commit(conn, key, "MODIFIED", stored, prev)

        await self._write(write)

    def watch(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", resource_version: str = ""
    ) -> AsyncIterator[WatchEvent]:
        """Changes after ``resource_version`` in order, until the caller stops iterating.

        Empty: from now; ``"0"``: a synthetic ``ADDED`` per current object first.  ``Gone`` when the events
        after that version were pruned.  Kind, selector and version are checked here, before iterating.
        """
        info = kind_info(kind)
        selector = parse_selector(label_selector)
        start = _parse_version(info.kind, resource_version) if resource_version else None
        ns = namespace if info.namespaced and namespace else None
        return self._watch(info, ns, selector, label_selector, start)

    async def _watch(
        self, info: Kind, namespace: str | None, selector: Selector, label_selector: str, start: int | None
    ) -> AsyncIterator[WatchEvent]:
        if start is None:
            cursor = await self._read(lambda conn: _counter(conn, "rv"))
        elif start == 0:
            listing = await self.list(info.kind, namespace=namespace, label_selector=label_selector)
            for item in listing.items:
                yield WatchEvent("ADDED", item)
            cursor = int(listing.resource_version)
        else:
            cursor = start
        interval = self.poll_interval
        while True:
            # NB: take the wake-up event before polling, so a write landing during the poll is not missed.
            written = self._written
            events, cursor, moved = await self._read(
                functools.partial(self._poll, info=info, namespace=namespace, selector=selector, after=cursor)
            )
            for event in events:
                yield event  # NB: never inside a cancel scope of ours (trio forbids yielding across one)
            if moved:
                interval = self.poll_interval
            else:
                await self._wait_for_write(written, interval)
                interval = min(interval * 1.5, self.poll_interval * 5)

    @staticmethod
    async def _wait_for_write(written: trio.Event, patience: float) -> None:
        with trio.move_on_after(patience):
            await written.wait()

    def _poll(
        self, conn: sqlite3.Connection, info: Kind, namespace: str | None, selector: Selector, after: int
    ) -> tuple[_Events, int, bool]:
        """A watch's events after version ``after``, the version to continue from, and whether it moved."""
        if after < _counter(conn, "compacted"):
            raise Gone(resource_version=str(after))
        head = _counter(conn, "rv")
        if head <= after:
            return [], after, False
        sql = "SELECT rv, type, body, prev_labels FROM events WHERE kind = ? AND rv > ?"
        params: tuple[str | int, ...] = (info.kind, after)
        if namespace is not None:
            sql, params = sql + " AND namespace = ?", (*params, namespace)
        rows = conn.execute(sql + " ORDER BY rv LIMIT ?", (*params, _WATCH_BATCH)).fetchall()
        events: _Events = []
        for _rv, type_, body, prev_labels in rows:
            obj = _loads(body)
            now = selector.matches(_labels(obj))
            before = prev_labels is not None and selector.matches(json.loads(prev_labels))
            if type_ == "MODIFIED" and now != before:
                # The object entered or left the selection: the API server reports that as ADDED/DELETED.
                events.append(WatchEvent("ADDED" if now else "DELETED", obj))
            elif now if type_ != "DELETED" else before:
                events.append(WatchEvent(type_, obj))
        cursor = rows[-1][0] if len(rows) == _WATCH_BATCH else head
        return events, cursor, True

    async def aclose(self) -> None:
        """Close the connection; later calls and running watches raise ``trio.ClosedResourceError``."""
        if self._closed:
            return

        def close(conn: sqlite3.Connection) -> None:
            self._closed = True
            conn.close()
            os.close(self._lockfd)

        with trio.CancelScope(shield=True):  # NB: cleanup; must not be abandoned half way
            await trio.to_thread.run_sync(close, self._conn, limiter=self._limiter)
        self._written.set()

    async def compact(self, keep: int = 0) -> None:
        """Drop all but the newest ``keep`` events now; watches from before them get ``Gone``."""

        def write(conn: sqlite3.Connection) -> None:
            _prune(conn, _counter(conn, "rv") - keep)

        await self._write(write)
