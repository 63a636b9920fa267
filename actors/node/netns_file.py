"""What a ``CNI_NETNS`` path must be before anything enters it: a network namespace file.

Owns ``open_netns`` and ``check_netns``.  A runtime's ``CNI_NETNS`` names the pod's network namespace: a
bind mount of an nsfs inode (``/var/run/netns/<name>``) or ``/proc/<pid>/ns/net``, a symlink to
``net:[<inode>]``.  Both ``stat`` as a regular file.  Anything else must be refused *before* it is opened:
opening a FIFO for reading blocks until a writer comes (it would wedge the node's one netlink thread), and
opening a device may do whatever its driver does on open.  So, in this order:

1. ``os.stat`` (no open): a missing path is ``NamespaceGone`` (CNI 3, the sandbox does not exist, which DEL
   tolerates); a directory, FIFO, socket, character or block device is ``InvalidEnvironment`` (CNI 4);
2. ``os.open`` with ``O_RDONLY | O_NONBLOCK | O_CLOEXEC`` (a FIFO swapped in after the ``stat`` still opens
   at once), then ``os.fstat``: still a regular file, the same inode the ``stat`` saw;
3. ``ioctl(NS_GET_NSTYPE)`` (Linux 4.11+): an nsfs file answers its namespace type, anything else
   ``ENOTTY``; only ``CLONE_NEWNET`` is a network namespace (``/proc/self/ns/mnt`` is refused naming its kind).

Everything here is a plain syscall that returns at once on these file types; callers that must never block
(the NodeActor) still run it in a thread they can abandon, under a timeout.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from spider.coordinator.errors import NamespaceGone
from spider.errors import InvalidEnvironment

NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
CLONE_NEWNET = 0x40000000
NAMESPACE_KINDS = {
    0x00000080: "time",
    0x00020000: "mount",
    0x02000000: "cgroup",
    0x04000000: "UTS",
    0x08000000: "IPC",
    0x10000000: "user",
    0x20000000: "PID",
    CLONE_NEWNET: "network",
}
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def _refuse(path: str, what: str) -> InvalidEnvironment:
    return InvalidEnvironment(variable="CNI_NETNS", reason=f"{path!r} is {what}, not a network namespace")


def file_kind(mode: int) -> str | None:
    """What a file of ``mode`` is when it is no kind a namespace can be ("a FIFO (named pipe)", ...), else None."""
    for test, what in _FILE_KINDS:
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_netns(path: str) -> int:
    """A file descriptor (close-on-exec) of the network namespace at ``path``; refuses anything else unopened.

    Raises ``NamespaceGone`` when nothing is at ``path``, ``InvalidEnvironment`` naming ``path`` and what it
    is otherwise.
    """
    try:
        seen = os.stat(path)
    except FileNotFoundError:
        raise NamespaceGone(netns=path) from None
    except OSError as exc:
        raise InvalidEnvironment(variable="CNI_NETNS", reason=f"{path!r} cannot be examined: {exc.strerror}") from None
    except ValueError as exc:  # a NUL in the path
        raise InvalidEnvironment(variable="CNI_NETNS", reason=f"{path!r} cannot be examined: {exc}") from None
    if (kind := file_kind(seen.st_mode)) is not None:
        raise _refuse(path, kind)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise NamespaceGone(netns=path) from None
    except OSError as exc:
        raise InvalidEnvironment(variable="CNI_NETNS", reason=f"{path!r} cannot be opened: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if (kind := file_kind(opened.st_mode)) is not None:
            raise _refuse(path, kind)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            raise InvalidEnvironment(variable="CNI_NETNS", reason=f"{path!r} changed while it was being opened")
        try:
            nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise _refuse(path, "a regular file") from None
            raise InvalidEnvironment(
                variable="CNI_NETNS", reason=f"{path!r} cannot be examined: {exc.strerror}"
            ) from None
        if nstype != CLONE_NEWNET:
            raise _refuse(path, f"a {NAMESPACE_KINDS.get(nstype, hex(nstype))} namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_netns(path: str) -> None:
    """Raise what ``open_netns`` raises when ``path`` is no network namespace; nothing when it is one."""
    os.close(open_netns(path))
