"""File operations on trees that a sandbox controls: never follow a symlink, never leave the mount.

Why this module exists: a sandbox's upper directory is written by code we do not trust.  A sandbox can
turn its ``/etc`` into a symlink to ``/var/lib/something`` on the host, or leave a bind mount of a host
directory inside its tree.  Host code that later walks that tree by path (``os.walk``, ``rm -rf``, ``du -L``)
would follow the link or descend through the mount and touch host files.  So every operation here:

* opens each path component relative to its parent's descriptor with ``O_NOFOLLOW``: a symlink is
  unlinked or measured as a link, never resolved;
* checks that each directory it enters is still the one it looked at (device and inode), so a rename race
  cannot swap in another directory;
* never crosses into another mount: a directory whose device or mount id (``/proc/self/fdinfo``, which
  also tells bind mounts of the same filesystem apart) differs from its parent's is either refused
  (removal raises :class:`MountBoundaryError`) or skipped (measuring);
* walks iteratively, holding a constant number of descriptors (it climbs back up through ``..`` and checks
  that it arrived where it came from), so a deliberately deep tree cannot exhaust descriptors or Python's
  recursion limit and leave a sandbox impossible to delete.

Only the directory given as the starting point (a host-chosen path, e.g. Bolt's sandboxes directory) is
opened by path; everything below it is reached through descriptors.

These are blocking calls: run them in a thread (``deferToThread``), never on the reactor.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Callable

#: Flags for opening a directory we are about to read or modify: no symlinks, not inherited by children.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeTreeError(OSError):
    """A tree could not be handled without following a link, crossing a mount, or racing a change."""


class MountBoundaryError(UnsafeTreeError):
    """Something is mounted inside a tree being removed; deleting would reach into the mounted filesystem."""


class TreeChangedError(UnsafeTreeError):
    """A directory changed identity while being walked (a concurrent rename or replacement)."""


def _check_name(name: str) -> None:
    """Names passed here are single path components: a slash would make the kernel resolve a path."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a single path component: {name!r}")


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def mount_id(fd: int) -> int | None:
    """The id of the mount an open descriptor lives on, or None when /proc cannot tell.

    The device number alone does not reveal a bind mount of the same filesystem; the mount id does.
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            data = info.read()
    except OSError:
        return None
    for line in data.splitlines():
        if line.startswith(b"mnt_id:"):
            try:
                return int(line.split(b":", 1)[1])
            except ValueError:
                return None
    return None


def open_dir(path: str) -> int:
    """Open a host-chosen directory by path (its last component must not be a symlink)."""
    return os.open(path, DIR_FLAGS)


def open_subdir(parent_fd: int, name: str) -> int:
    """Open the directory ``name`` inside ``parent_fd``; ``OSError(ELOOP/ENOTDIR)`` if it is not one."""
    _check_name(name)
    return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def make_dir(parent_fd: int, name: str, mode: int, *, exist_ok: bool = False) -> tuple[int, bool]:
    """Create directory ``name`` in ``parent_fd`` with exactly ``mode`` and return ``(fd, created)``.

    The mode is set with ``fchmod`` on the opened directory so the process umask cannot narrow it and no
    path is resolved twice.  An existing entry is accepted only with ``exist_ok`` and only if it is a real
    directory (a symlink fails with ``ELOOP``); its mode is then left alone.
    """
    _check_name(name)
    created = True
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        if not exist_ok:
            raise
        created = False
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        if created:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def rmdir_if_empty(parent_fd: int, name: str) -> bool:
    """Remove directory ``name`` if it is empty; True if it was removed."""
    _check_name(name)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            return False
        raise
    return True


@dataclass
class _Frame:
    """One directory on the walk's path: its name in its parent, who it is, and what is left to visit."""

    name: str
    st: os.stat_result
    pending: list[str] = field(default_factory=list)


def _scan(fd: int) -> list[str]:
    """All entry names of an open directory (names only: each is lstat-ed right before it is handled)."""
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries]


FileVisitor = Callable[[int, str, os.stat_result], None]


def _walk(parent_fd: int, name: str, *, on_file: FileVisitor, on_dir_done: FileVisitor,
          mounts: str) -> bool:
    """Post-order walk of ``name`` inside ``parent_fd``; False if ``name`` does not exist.

    ``on_file(dir_fd, entry, lstat)`` is called for every non-directory, ``on_dir_done(dir_fd, entry,
    lstat)`` for every directory after everything inside it was visited, with the descriptor of the
    directory that contains it.  ``mounts`` says what to do on reaching another mount: ``"error"`` raises
    :class:`MountBoundaryError`, ``"skip"`` leaves that directory out.
    """
    _check_name(name)
    try:
        top = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(top.st_mode):
        on_file(parent_fd, name, top)
        return True
    dev = os.fstat(parent_fd).st_dev
    mnt = mount_id(parent_fd)
    frames: list[_Frame] = []

    def enter(dir_fd: int, entry: str, st: os.stat_result) -> int | None:
        """Open a subdirectory after checking it is the one just seen and on our mount."""
        try:
            fd = os.open(entry, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise TreeChangedError(exc.errno, f"{_where(frames, entry)} stopped being a directory") from exc
            raise
        try:
            seen = os.fstat(fd)
            if _identity(seen) != _identity(st):
                raise TreeChangedError(errno.EBUSY, f"{_where(frames, entry)} was replaced while walking")
            other = mount_id(fd)
            if seen.st_dev != dev or (mnt is not None and other is not None and other != mnt):
                if mounts == "error":
                    raise MountBoundaryError(
                        errno.EBUSY, f"{_where(frames, entry)} is a mount point; refusing to cross it")
                os.close(fd)
                return None
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        return fd

    fd = enter(parent_fd, name, top)
    if fd is None:
        return True
    try:
        frames.append(_Frame(name, top, _scan(fd)))
        while True:
            frame = frames[-1]
            if frame.pending:
                entry = frame.pending.pop()
                try:
                    st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    on_file(fd, entry, st)
                    continue
                child = enter(fd, entry, st)
                if child is None:
                    continue
                try:
                    pending = _scan(child)
                except BaseException:
                    os.close(child)
                    raise
                os.close(fd)
                fd = child
                frames.append(_Frame(entry, st, pending))
                continue
            frames.pop()
            if not frames:
                os.close(fd)
                fd = -1
                on_dir_done(parent_fd, name, frame.st)
                return True
            up = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if _identity(os.fstat(fd)) != _identity(frames[-1].st):
                raise TreeChangedError(errno.EBUSY, f"{_where(frames, frame.name)} moved while walking")
            on_dir_done(fd, frame.name, frame.st)
    finally:
        if fd >= 0:
            os.close(fd)


def _where(frames: list[_Frame], entry: str) -> str:
    """A relative path for error messages (never used to open anything)."""
    return "/".join([f.name for f in frames] + [entry])


def remove_tree(parent_fd: int, name: str) -> bool:
    """Delete ``name`` inside ``parent_fd`` and everything below it; False if it did not exist.

    Symlinks are unlinked, not followed; a mount point anywhere inside (or at ``name`` itself) stops the
    removal with :class:`MountBoundaryError` before anything in the mounted filesystem is touched.  The
    removal is not atomic: on an error, part of the tree may already be gone.  Directories without
    permission bits (overlayfs' ``work/work`` is mode 000) need root's CAP_DAC_OVERRIDE, which the server has.
    """

    def unlink(dir_fd: int, entry: str, st: os.stat_result) -> None:
        try:
            os.unlink(entry, dir_fd=dir_fd)
        except FileNotFoundError:
            pass

    def rmdir(dir_fd: int, entry: str, st: os.stat_result) -> None:
        try:
            now = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if _identity(now) != _identity(st):
            raise TreeChangedError(errno.EBUSY, f"{entry} was replaced while being removed")
        os.rmdir(entry, dir_fd=dir_fd)

    return _walk(parent_fd, name, on_file=unlink, on_dir_done=rmdir, mounts="error")


def tree_usage(parent_fd: int, name: str) -> int:
    """Bytes allocated on disk by ``name`` and everything below it (like ``du -s -B1 -x``, no links followed).

    Hard links are counted once; other mounts inside the tree are left out.  0 if ``name`` does not exist.
    """
    seen: set[tuple[int, int]] = set()
    total = 0

    def count(dir_fd: int, entry: str, st: os.stat_result) -> None:
        nonlocal total
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if _identity(st) in seen:
                return
            seen.add(_identity(st))
        total += st.st_blocks * 512

    _walk(parent_fd, name, on_file=count, on_dir_done=count, mounts="skip")
    return total
