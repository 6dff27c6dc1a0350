"""Sandbox root filesystems: one overlayfs mount per sandbox over a shared, read-only base image.

A root filesystem is never copied.  The base image directory built by :mod:`bolt.host.images` is the
overlay's ``lowerdir``; everything a sandbox writes lands in its own ``upperdir``.

On-disk layout (``sandboxes_dir`` is resolved with ``realpath`` once, so paths match the kernel's view in
``/proc/self/mountinfo``)::

    <sandboxes_dir>/                    0750  created if missing
      <project>/                        0750  removed again when its last sandbox is removed
        <name>/                         0750  "base": everything of one sandbox, nothing else
          upper/                        0755  overlay upperdir: the sandbox's own changes (and whiteouts)
          work/                         0750  overlay workdir (the kernel keeps a mode-000 work/work in it)
          rootfs/                       0750  mount point of the merged tree: the sandbox's /
          lower -> <image>                      symlink to the base image; the overlay's lowerdir

Modes: the base directory is 0750 root-owned, so no unprivileged host user can reach a sandbox's files
(in ``upper/`` or through ``rootfs/``).  ``upper/`` is 0755 because the root directory of the merged tree
takes its owner and mode from the upper directory: the sandbox's ``/`` must look like a normal ``/``
(root:root 0755).  The ``rootfs/`` mount point itself can stay 0750: once mounted, its own inode is hidden
under the overlay's root and nothing ever sees its mode.

Mount options are ``lowerdir=lower,upperdir=upper,workdir=work,index=off,metacopy=off``, relative to
the base directory where ``mount`` runs, so no host path shows in the sandbox's own mountinfo.  The two pinned
features would otherwise follow the host kernel's build options and module parameters, and both make
the upper directory depend on the exact lower one: ``index=on`` records the lower root's file handle and
refuses the next mount once the image was rebuilt or restored (a sandbox that no longer mounts after a
reboot), and ``metacopy=on`` lets a chmod/chown copy up metadata only, leaving the data behind in the
image.  With both off, ``upper/`` is self-contained.  ``xino`` and ``redirect_dir`` are left to the kernel:
they change inode numbering or rename behaviour, not what ``upper/`` needs from the image.  Paths with
``,`` ``:`` ``\\`` ``"`` or control characters are refused: they are option syntax for overlayfs or libmount.

Symlinks: host-side code never follows a symlink inside a sandbox's files.  A sandbox controls everything
below ``upper/`` (and the merged view in ``rootfs/``), so ``upper/etc`` may well be a symlink to a host
directory.  Everything that walks sandbox files (removal, disk usage) goes through
:mod:`bolt.host.safefs`, which works relative to directory descriptors with ``O_NOFOLLOW`` and refuses to
cross into another mount.  The directories from ``sandboxes_dir`` down to ``upper``, ``work`` and
``rootfs`` are created by Bolt and are not reachable from inside a sandbox; nested mount points below
``rootfs/`` are checked component by component for symlinks before ``umount`` is given their path, and a
mount whose path is not clean is detached together with the clean mount above it instead.

Destroying unmounts everything at or below the sandbox's base directory (deepest first, ``umount
--lazy`` only when the kernel says the mount is busy), checks in ``/proc/self/mountinfo`` that nothing is
left, and only then removes the directory tree in a thread.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Iterable, TypeVar

from twisted.internet import defer
from twisted.logger import Logger

from bolt.host import safefs
from bolt.host.process import ProcessFailed, ProcessRunner

T = TypeVar("T")

#: Project and sandbox names accepted here.  The core validates them first; this is the second lock.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

UPPER = "upper"
WORK = "work"
LOWER = "lower"
ROOTFS = "rootfs"

#: Mode of every directory Bolt creates here, except the upper directory.
DIR_MODE = 0o750
#: Mode of the upper directory: the mode the sandbox sees on its own "/".
UPPER_MODE = 0o755

#: Pinned overlay features (see the module docstring for why).
EXTRA_OPTIONS = "index=off,metacopy=off"

#: mount(2) takes its option string in one page.
MAX_OPTIONS = 4000

#: Characters that are syntax in overlayfs or libmount option strings, or that no sane path contains.
_UNSAFE_PATH_RE = re.compile(r'[,:\\"\x00-\x1f\x7f]')

_ESCAPE_RE = re.compile(rb"\\([0-3][0-7]{2})")

#: What the injected ``threads`` callable looks like: ``deferToThread``'s signature.
ThreadRunner = Callable[..., "defer.Deferred[Any]"]


def _link_lower(base_fd: int, lower: str) -> None:
    """Point ``<base>/lower`` at the image (replacing an older link atomically).

    The base directory is not reachable from inside the sandbox, so the link is Bolt's own; the
    kernel resolves it once, at mount time.
    """
    tmp = LOWER + ".new"
    try:
        os.unlink(tmp, dir_fd=base_fd)
    except FileNotFoundError:
        pass
    os.symlink(lower, tmp, dir_fd=base_fd)
    os.replace(tmp, LOWER, src_dir_fd=base_fd, dst_dir_fd=base_fd)


class RootFSError(Exception):
    """A root filesystem operation failed; the message says which sandbox and why."""


class RootFSExistsError(RootFSError):
    """The sandbox's directory already exists on disk (left over, or created concurrently)."""


class RootFSBusyError(RootFSError):
    """Something is still mounted at or below a sandbox's directory after unmounting."""


class UnsafePathError(RootFSError, ValueError):
    """A path cannot be given to overlayfs safely (option syntax characters, relative, not normalized)."""


@dataclass(frozen=True)
class SandboxPaths:
    """Where one sandbox's root filesystem lives (absolute paths)."""

    base: str
    upper: str
    work: str
    rootfs: str


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/<pid>/mountinfo`` (see proc(5)), with escapes decoded."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: str


def _unescape(field: bytes) -> str:
    """Undo the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012`` newline, ``\\134`` backslash).

    Decoded with the filesystem encoding (surrogateescape), so the result compares equal to the ``str``
    paths Python itself builds for the same bytes.
    """
    return os.fsdecode(_ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(data: bytes) -> list[MountEntry]:
    """Parse mountinfo text, in file order (which is mount order: later lines sit on top of earlier ones).

    Fields are separated by single spaces and may be empty (e.g. an empty source), so the line is split
    on exactly one space; optional fields run up to the lone ``-`` separator.
    """
    entries = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            if len(fields) < sep + 4:
                raise ValueError("too few fields after the separator")
            entries.append(MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device=fields[2].decode("ascii"),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=_unescape(fields[5]),
                optional=tuple(_unescape(f) for f in fields[6:sep]),
                fstype=_unescape(fields[sep + 1]),
                source=_unescape(fields[sep + 2]),
                super_options=_unescape(b" ".join(fields[sep + 3:])),
            ))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"mountinfo line {number} unreadable: {line!r}") from exc
    return entries


def check_name(kind: str, value: str) -> str:
    """Refuse a project or sandbox name that could build an unexpected path."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} name: {value!r}")
    return value


def check_option_path(kind: str, path: str) -> str:
    """Refuse a path that overlayfs or mount(8) would read as more than one path."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise UnsafePathError(f"{kind} must be an absolute path: {path!r}")
    if os.path.normpath(path) != path or path.startswith("//"):
        raise UnsafePathError(f"{kind} must be a normalized path: {path!r}")
    if _UNSAFE_PATH_RE.search(path):
        raise UnsafePathError(f"{kind} contains characters that are mount option syntax: {path!r}")
    return path


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


def _is_at_or_below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _output(exc: ProcessFailed) -> str:
    return "\n".join([str(exc), exc.result.stderr.decode("utf-8", "replace"),
                      exc.result.stdout.decode("utf-8", "replace")])


class RootFS:
    """Creates, mounts, unmounts and removes sandbox root filesystems (overlayfs over a base image).

    Commands (mount, umount) go through the injected runner; file work goes through ``threads``
    (``deferToThread`` by default; tests inject a synchronous one).  Reading mountinfo is a small procfs
    read and happens on the caller's thread.
    """

    log = Logger()

    def __init__(self, sandboxes_dir: str, runner: ProcessRunner, *, threads: ThreadRunner | None = None,
                 mountinfo_path: str = "/proc/self/mountinfo") -> None:
        if not os.path.isabs(sandboxes_dir):
            raise UnsafePathError(f"sandboxes directory must be absolute: {sandboxes_dir!r}")
        # Resolved once: this is host configuration, and mountinfo reports resolved paths.
        self.sandboxes_dir = check_option_path("sandboxes directory", os.path.realpath(sandboxes_dir))
        self._runner = runner
        if threads is None:
            from twisted.internet.threads import deferToThread
            threads = deferToThread
        self._threads = threads
        self._mountinfo_path = mountinfo_path
        # Serializes "create the project dir + the sandbox dir" against "remove the project dir if empty".
        self._tree_lock = threading.Lock()

    # -- paths and mount table ---------------------------------------------------------------------

    def paths(self, project: str, name: str) -> SandboxPaths:
        """The paths of one sandbox; ValueError unless both names are valid."""
        base = os.path.join(self.sandboxes_dir, check_name("project", project), check_name("sandbox", name))
        return SandboxPaths(base=base, upper=os.path.join(base, UPPER), work=os.path.join(base, WORK),
                            rootfs=os.path.join(base, ROOTFS))

    def mounts(self) -> list[MountEntry]:
        """The current mount table of this process's mount namespace."""
        with open(self._mountinfo_path, "rb") as f:
            return parse_mountinfo(f.read())

    def is_mounted(self, path: str) -> bool:
        """Whether something is mounted exactly at ``path`` (no symlink in ``path`` is resolved)."""
        path = os.path.abspath(path)
        return any(entry.mount_point == path for entry in self.mounts())

    def mounts_below(self, path: str) -> list[MountEntry]:
        """Mounts at or below ``path``, deepest first (and, at one mount point, the topmost first)."""
        path = os.path.abspath(path)
        found = [(i, e) for i, e in enumerate(self.mounts()) if _is_at_or_below(e.mount_point, path)]
        found.sort(key=lambda pair: (_depth(pair[1].mount_point), pair[0]), reverse=True)
        return [entry for _, entry in found]

    def sandbox_of(self, path: str) -> tuple[str, str] | None:
        """The (project, name) whose directory contains ``path``, or None if it is no sandbox's."""
        path = os.path.abspath(path)
        if not _is_at_or_below(path, self.sandboxes_dir) or path == self.sandboxes_dir:
            return None
        parts = os.path.relpath(path, self.sandboxes_dir).split("/")
        if len(parts) < 2 or not NAME_RE.fullmatch(parts[0]) or not NAME_RE.fullmatch(parts[1]):
            return None
        return parts[0], parts[1]

    # -- reconciliation ----------------------------------------------------------------------------

    def list_on_disk(self) -> list[tuple[str, str]]:
        """Every (project, name) that has a sandbox directory, sorted.

        Two small directory listings, used once at start, so done on the caller's thread.  Entries that are
        not real directories with valid names are logged and ignored (never followed).
        """
        found: list[tuple[str, str]] = []
        try:
            projects = list(os.scandir(self.sandboxes_dir))
        except FileNotFoundError:
            return found
        for project in projects:
            if not (NAME_RE.fullmatch(project.name) and project.is_dir(follow_symlinks=False)):
                self.log.warn("ignoring unexpected entry {path} in sandboxes directory", path=project.path)
                continue
            for sandbox in os.scandir(project.path):
                if NAME_RE.fullmatch(sandbox.name) and sandbox.is_dir(follow_symlinks=False):
                    found.append((project.name, sandbox.name))
                else:
                    self.log.warn("ignoring unexpected entry {path} in sandboxes directory", path=sandbox.path)
        return sorted(found)

    def stray_mounts(self, known: Iterable[tuple[str, str]]) -> list[str]:
        """Mount points below the sandboxes directory that belong to no known sandbox, deepest first.

        A mount on the sandboxes directory itself (a dedicated disk) is not stray.  Use :meth:`sandbox_of`
        to map a stray to a sandbox for :meth:`remove_stray`; :meth:`unmount_stray` handles the rest.
        """
        known = set(known)
        strays: list[str] = []
        for entry in self.mounts_below(self.sandboxes_dir):
            if entry.mount_point == self.sandboxes_dir or entry.mount_point in strays:
                continue
            if self.sandbox_of(entry.mount_point) not in known:
                strays.append(entry.mount_point)
        return strays

    def remove_stray(self, project: str, name: str) -> defer.Deferred[None]:
        """Unmount and remove a sandbox directory that no stored sandbox owns."""
        return self._start(self._remove_stray(project, name))

    async def _remove_stray(self, project: str, name: str) -> None:
        paths = self.paths(project, name)
        self.log.warn("removing stray sandbox rootfs {project}/{name} at {path}", project=project, name=name,
                      path=paths.base)
        await self._teardown(paths)

    def unmount_stray(self, mount_point: str) -> defer.Deferred[None]:
        """Unmount everything at or below a stray mount point inside the sandboxes directory (no removal)."""
        return self._start(self._unmount_stray(mount_point))

    async def _unmount_stray(self, mount_point: str) -> None:
        mount_point = os.path.abspath(mount_point)
        if not _is_at_or_below(mount_point, self.sandboxes_dir) or mount_point == self.sandboxes_dir:
            raise ValueError(f"not below the sandboxes directory: {mount_point!r}")
        self.log.warn("unmounting stray mount {path}", path=mount_point)
        await self._unmount_all(mount_point)

    # -- lifecycle ---------------------------------------------------------------------------------

    def create(self, project: str, name: str, lower: str) -> defer.Deferred[SandboxPaths]:
        """Make a new sandbox's directories and mount its overlay over the image at ``lower``.

        Fails with :class:`RootFSExistsError` if the sandbox directory exists.  If mounting fails,
        everything created here is removed again before the failure is passed on.
        """
        return self._start(self._create(project, name, lower))

    async def _create(self, project: str, name: str, lower: str) -> SandboxPaths:
        paths = self.paths(project, name)
        options = self._options(paths, lower)
        await self._threads(self._make_tree, paths, lower)
        try:
            await self._mount(paths, options)
        except BaseException as exc:
            self.log.warn("mounting rootfs of {project}/{name} failed ({error}); removing its directory",
                          project=project, name=name, error=str(exc))
            try:
                await self._teardown(paths)
            except Exception:
                self.log.failure("rollback of rootfs {project}/{name} failed", project=project, name=name)
            raise
        self.log.info("sandbox rootfs {project}/{name} mounted", project=project, name=name, lower=lower,
                      rootfs=paths.rootfs)
        return paths

    def mount(self, project: str, name: str, lower: str) -> defer.Deferred[SandboxPaths]:
        """Mount an existing sandbox's overlay again unless it is mounted (after a reboot, at start).

        The upper directory must exist (it holds the sandbox's data); a missing work directory or mount
        point holds nothing and is recreated.
        """
        return self._start(self._remount(project, name, lower))

    async def _remount(self, project: str, name: str, lower: str) -> SandboxPaths:
        paths = self.paths(project, name)
        options = self._options(paths, lower)
        if self.is_mounted(paths.rootfs):
            self.log.debug("sandbox rootfs {project}/{name} already mounted", project=project, name=name)
            return paths
        recreated = await self._threads(self._check_tree, paths, lower)
        for path in recreated:
            self.log.warn("recreated missing {path}", path=path)
        await self._mount(paths, options)
        self.log.info("sandbox rootfs {project}/{name} mounted again", project=project, name=name,
                      lower=lower, rootfs=paths.rootfs)
        return paths

    def destroy(self, project: str, name: str) -> defer.Deferred[None]:
        """Unmount everything at or below the sandbox's directory, then remove the directory.

        Succeeds if the sandbox has no directory (so it can finish an interrupted destroy).  Never
        deletes through a mount: if something stays mounted, fails with :class:`RootFSBusyError` and leaves
        the files alone.
        """
        return self._start(self._destroy(project, name))

    async def _destroy(self, project: str, name: str) -> None:
        paths = self.paths(project, name)
        if await self._teardown(paths):
            self.log.info("sandbox rootfs {project}/{name} removed", project=project, name=name)
        else:
            self.log.info("sandbox rootfs {project}/{name} had no directory; nothing to remove",
                          project=project, name=name)

    def disk_usage(self, project: str, name: str) -> defer.Deferred[int]:
        """Bytes allocated by the sandbox's own changes (its upper directory), links not followed."""
        return self._start(self._disk_usage(project, name))

    async def _disk_usage(self, project: str, name: str) -> int:
        paths = self.paths(project, name)
        return await self._threads(self._usage, paths)

    # -- internals: commands -----------------------------------------------------------------------

    @staticmethod
    def _start(coro: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
        return defer.Deferred.fromCoroutine(coro)

    def _options(self, paths: SandboxPaths, lower: str) -> str:
        check_option_path("image (lowerdir)", lower)
        check_option_path("upperdir", paths.upper)
        check_option_path("workdir", paths.work)
        if _is_at_or_below(lower, self.sandboxes_dir) or _is_at_or_below(self.sandboxes_dir, lower):
            # Anything below the sandboxes directory is sandbox-controlled: never an image.
            raise UnsafePathError(f"image {lower!r} overlaps the sandboxes directory {self.sandboxes_dir!r}")
        # Relative to the sandbox's base directory (the mount runs there): overlayfs shows its options
        # verbatim in /proc/self/mountinfo, inside the sandbox too, and host paths are none of its
        # business.  ``lower`` is a symlink in the base directory to the image (see _link_lower).
        options = f"lowerdir={LOWER},upperdir={UPPER},workdir={WORK},{EXTRA_OPTIONS}"
        if len(options.encode()) > MAX_OPTIONS:
            raise UnsafePathError("paths too long for one overlay mount")
        return options

    async def _mount(self, paths: SandboxPaths, options: str) -> None:
        argv = ["mount", "-t", "overlay", "overlay", "-o", options, paths.rootfs]
        try:
            await self._runner.run(argv, path=paths.base)
        except ProcessFailed as exc:
            raise RootFSError(f"mounting the overlay at {paths.rootfs} failed: {exc}") from exc

    async def _teardown(self, paths: SandboxPaths) -> bool:
        """Unmount everything below the sandbox's base, verify, then remove its directory (in a thread).

        True if there was a directory to remove.
        """
        await self._unmount_all(paths.base)
        left = self.mounts_below(paths.base)
        if left:
            raise RootFSBusyError(f"still mounted below {paths.base}: {[e.mount_point for e in left]}")
        return await self._threads(self._remove_tree, paths)

    async def _unmount_all(self, top: str) -> None:
        """Unmount every mount at or below ``top``, deepest first, re-reading the table after each.

        Each round must shrink the set of mounts below ``top``; a ``umount`` that reports success but leaves
        the mount in place stops the loop with :class:`RootFSBusyError` instead of spinning.
        """
        mounts = self.mounts_below(top)
        while mounts:
            target = self._unmount_target(mounts, top)
            await self._umount(target)
            after = self.mounts_below(top)
            if len(after) >= len(mounts):
                raise RootFSBusyError(f"{target} is still mounted after umount")
            mounts = after

    def _unmount_target(self, mounts: list[MountEntry], top: str) -> str:
        """The deepest mount point whose path can be handed to umount without resolving a sandbox symlink.

        If the deepest one's path runs through a symlink (or a component vanished), the deepest clean
        mount above it is chosen instead; detaching that one takes the unclean one along.
        """
        deepest = mounts[0].mount_point
        for entry in mounts:
            candidate = entry.mount_point
            if _is_at_or_below(deepest, candidate) and self._clean_path(candidate):
                if candidate != deepest:
                    self.log.warn("mount point {path} is not a clean path; detaching {above} instead",
                                  path=deepest, above=candidate)
                return candidate
        raise RootFSBusyError(f"cannot unmount {deepest}: no mount above it below {top} has a clean path")

    def _clean_path(self, path: str) -> bool:
        """Whether every component of ``path`` below the sandboxes directory is a real directory.

        Checked with lstat one component at a time, shallowest first, so no component is resolved through a
        symlink a sandbox planted.  Paths outside the sandboxes directory are host paths and pass.
        """
        if not _is_at_or_below(path, self.sandboxes_dir):
            return True
        current = self.sandboxes_dir
        for part in os.path.relpath(path, self.sandboxes_dir).split("/"):
            if part == ".":
                continue
            current = os.path.join(current, part)
            try:
                st = os.lstat(current)
            except OSError:
                return False
            if not stat.S_ISDIR(st.st_mode):
                return False
        return True

    async def _umount(self, path: str) -> None:
        """``umount path``; on "target is busy", ``umount --lazy path`` (detach now, free when unused)."""
        try:
            await self._runner.run(["umount", path])
            return
        except ProcessFailed as exc:
            failure = exc
        if not self.is_mounted(path):
            return  # gone meanwhile: nothing left to do
        if "busy" not in _output(failure).lower():
            raise RootFSError(f"unmounting {path} failed: {failure}") from failure
        self.log.warn("{path} is busy; detaching it lazily", path=path)
        try:
            await self._runner.run(["umount", "--lazy", path])
        except ProcessFailed as exc:
            raise RootFSError(f"lazily unmounting {path} failed: {exc}") from exc

    # -- internals: file work (run in a thread) ----------------------------------------------------

    def _make_tree(self, paths: SandboxPaths, lower: str) -> None:
        """Create base, upper, work and rootfs with their modes; undo on failure.  Runs in a thread."""
        if not os.path.isdir(lower):
            raise RootFSError(f"base image {lower} is not a directory")
        project, name = self._names(paths)
        if not os.path.isdir(self.sandboxes_dir):
            os.makedirs(self.sandboxes_dir, exist_ok=True)
            os.chmod(self.sandboxes_dir, DIR_MODE)
        top = safefs.open_dir(self.sandboxes_dir)
        try:
            with self._tree_lock:
                pfd, _ = safefs.make_dir(top, project, DIR_MODE, exist_ok=True)
                try:
                    bfd, _ = safefs.make_dir(pfd, name, DIR_MODE)
                except FileExistsError:
                    raise RootFSExistsError(f"sandbox directory {paths.base} already exists") from None
                except BaseException:
                    safefs.rmdir_if_empty(top, project)
                    raise
                finally:
                    os.close(pfd)
        finally:
            os.close(top)
        # From here on the base directory is ours: a failure removes it (and an empty project directory).
        try:
            try:
                for sub, mode in ((UPPER, UPPER_MODE), (WORK, DIR_MODE), (ROOTFS, DIR_MODE)):
                    fd, _ = safefs.make_dir(bfd, sub, mode)
                    os.close(fd)
                _link_lower(bfd, lower)
            finally:
                os.close(bfd)
        except BaseException as exc:
            try:
                self._remove_tree(paths)
            except Exception as cleanup:  # no logging here: this runs in a thread
                exc.add_note(f"also, removing the half-made {paths.base} failed: {cleanup!r}")
            raise

    def _check_tree(self, paths: SandboxPaths, lower: str) -> list[str]:
        """Before mounting again: the data must be there; empty helpers are recreated (and returned, for
        the caller to log: this runs in a thread)."""
        if not os.path.isdir(lower):
            raise RootFSError(f"base image {lower} is not a directory")
        project, name = self._names(paths)
        try:
            top = safefs.open_dir(self.sandboxes_dir)
        except FileNotFoundError:
            raise RootFSError(f"sandboxes directory {self.sandboxes_dir} is missing") from None
        fds = [top]
        recreated = []
        try:
            fds.append(safefs.open_subdir(top, project))
            fds.append(safefs.open_subdir(fds[-1], name))
            fds.append(safefs.open_subdir(fds[-1], UPPER))
            for sub in (WORK, ROOTFS):
                fd, created = safefs.make_dir(fds[2], sub, DIR_MODE, exist_ok=True)
                fds.append(fd)
                if created:
                    recreated.append(os.path.join(paths.base, sub))
            _link_lower(fds[2], lower)
        except OSError as exc:
            raise RootFSError(f"sandbox directory {paths.base} is incomplete: {exc}") from exc
        finally:
            for fd in fds:
                os.close(fd)
        return recreated

    def _remove_tree(self, paths: SandboxPaths) -> bool:
        """Remove the base directory without following links or crossing mounts, then an empty project
        directory; True if the base directory existed.  Runs in a thread."""
        project, name = self._names(paths)
        try:
            top = safefs.open_dir(self.sandboxes_dir)
        except FileNotFoundError:
            return False
        try:
            try:
                pfd = safefs.open_subdir(top, project)
            except FileNotFoundError:
                return False
            try:
                existed = safefs.remove_tree(pfd, name)
            finally:
                os.close(pfd)
            with self._tree_lock:
                safefs.rmdir_if_empty(top, project)
            return existed
        finally:
            os.close(top)

    def _usage(self, paths: SandboxPaths) -> int:
        project, name = self._names(paths)
        fds: list[int] = []
        try:
            fds.append(safefs.open_dir(self.sandboxes_dir))
            fds.append(safefs.open_subdir(fds[-1], project))
            fds.append(safefs.open_subdir(fds[-1], name))
            return safefs.tree_usage(fds[-1], UPPER)
        except FileNotFoundError:
            raise RootFSError(f"sandbox directory {paths.base} does not exist") from None
        finally:
            for fd in fds:
                os.close(fd)

    def _names(self, paths: SandboxPaths) -> tuple[str, str]:
        project, name = os.path.relpath(paths.base, self.sandboxes_dir).split("/")
        return check_name("project", project), check_name("sandbox", name)


__all__ = [
    "MountEntry", "RootFS", "RootFSBusyError", "RootFSError", "RootFSExistsError", "SandboxPaths",
    "UnsafePathError", "check_name", "check_option_path", "parse_mountinfo",
]
