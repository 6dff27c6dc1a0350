"""Project and sandbox cgroups, on cgroup v1 and cgroup v2 hosts.

Model: every project is a *parent* cgroup that carries the project's limits -- one pooled budget that
all of its sandboxes share -- and every sandbox is a *child* cgroup of its project with no limits of
its own.  The tree lives at the top of each hierarchy, beside (not under) the server's own service
cgroup::

    <hierarchy root>/<prefix>/<project>/<sandbox>        e.g. /sys/fs/cgroup/memory/bolt/web/dev1

so that systemd stopping or restarting the server (which kills everything in *its* cgroup) leaves
the sandboxes running; the server finds them again through :meth:`Cgroups.list_projects` and
:meth:`Cgroups.list_sandboxes` when it reconciles at start.

Two small backends share one interface (:class:`CgroupBackend`): :class:`CgroupsV1` for separate v1
hierarchies (cpu, memory, pids, and cpuacct for accounting when it is mounted on its own) and
:class:`CgroupsV2` for the unified hierarchy.  :func:`detect` chooses between them from
``/proc/self/mountinfo``; :class:`Cgroups` is the facade the rest of the server uses.

Why these calls are synchronous although everything else in Bolt avoids blocking the reactor: each
operation is a handful of ``open``/``write``/``close`` calls on cgroupfs, an in-memory kernel
filesystem that never touches a disk, so each call returns in microseconds -- cheaper than handing
the work to a thread and back.  Two paths can take longer, and both are bounded:

* waiting for killed processes to leave a cgroup (:meth:`~CgroupBackend.kill_sandbox`) and for a
  cgroup to become removable (:meth:`~CgroupBackend.remove_sandbox`) poll at most
  ``attempts * interval`` seconds (0.5 s by default) and only ever spin when a process is slow to
  die;
* lowering a memory limit makes the kernel reclaim memory inside the ``write`` call (on v2 it may
  even OOM-kill).  A caller that lowers limits drastically may run :meth:`~CgroupBackend.set_limits`
  through ``deferToThread``; the adapter keeps no state between calls, so that is safe.

Safety: the adapter never builds a path from unvalidated input -- project and sandbox names must
match :data:`NAME_PATTERN` (``ValueError`` otherwise) -- and it never follows a symbolic link: every
directory below a hierarchy root is opened component by component with ``O_NOFOLLOW`` and every
control file with ``O_NOFOLLOW``, so a link planted in the tree makes the operation fail instead of
writing somewhere else.  Control files are opened without ``O_CREAT``: on cgroupfs the kernel makes
them, and a missing one is an error, never a new regular file.
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
import signal
import stat
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol, Sequence

from twisted.logger import Logger

#: Project, sandbox and prefix names: the only strings that ever become path components.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: CFS period in microseconds; fixed so that a quota alone states the share of one CPU
#: (quota 50000 = half a CPU, 200000 = two CPUs).
CPU_PERIOD_US = 100_000

#: The pids limit a project gets unless the core says otherwise: enough for real work, small enough
#: that a fork bomb stays a local problem.
DEFAULT_PIDS_MAX = 1024

#: Where a cgroup2 mount must sit for the host to count as a v2 host.
UNIFIED_ROOT = "/sys/fs/cgroup"

#: Controllers Bolt needs, whatever the version.
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")

#: Values at or above this in a v1 ``memory.*limit_in_bytes`` file mean "no limit" (the kernel shows
#: ``PAGE_COUNTER_MAX`` pages, 9223372036854771712 bytes with 4 KiB pages).
_V1_UNLIMITED_FLOOR = 1 << 62

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


class CgroupError(Exception):
    """A cgroup operation failed.  The message names the file and the errno.

    ``path`` and ``errno`` are kept so callers can decide (``errno == errno.EBUSY`` ...) without
    parsing the message.
    """

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class CgroupUnavailable(CgroupError):
    """The host offers no usable cgroup hierarchy for cpu, memory and pids."""


@dataclass(frozen=True)
class Limits:
    """A project's pooled budget.

    ``None`` means "no limit" for that resource.  Ranges and policy are the core's business; this
    class only refuses values that cannot be written to a cgroup file at all.
    """

    cpu_quota_us: int | None
    memory_limit_bytes: int | None
    pids_max: int | None = DEFAULT_PIDS_MAX

    def __post_init__(self) -> None:
        for name in ("cpu_quota_us", "memory_limit_bytes", "pids_max"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int or None, not {value!r}")


@dataclass(frozen=True)
class CgroupLayout:
    """Where the hierarchies are mounted.  Built by :func:`detect`; tests build fake ones.

    Version 2 uses ``unified`` only.  Version 1 uses ``cpu``, ``memory`` and ``pids``, plus
    ``cpuacct`` for CPU usage accounting when it is mounted (it equals ``cpu`` when the two are
    mounted together as ``cpu,cpuacct``).
    """

    version: int
    unified: str | None = None
    cpu: str | None = None
    memory: str | None = None
    pids: str | None = None
    cpuacct: str | None = None

    def __post_init__(self) -> None:
        if self.version == 2:
            if not self.unified:
                raise ValueError("a v2 layout needs the unified mount point")
        elif self.version == 1:
            if not (self.cpu and self.memory and self.pids):
                raise ValueError("a v1 layout needs the cpu, memory and pids mount points")
        else:
            raise ValueError(f"unknown cgroup version {self.version!r}")

    @classmethod
    def v1(cls, cpu: str, memory: str, pids: str, cpuacct: str | None = None) -> "CgroupLayout":
        return cls(version=1, cpu=cpu, memory=memory, pids=pids, cpuacct=cpuacct)

    @classmethod
    def v2(cls, unified: str) -> "CgroupLayout":
        return cls(version=2, unified=unified)


# --------------------------------------------------------------------------------------------------
# Detection (pure: text in, layout out; the one file it may need is read through a callable)


@dataclass(frozen=True)
class _Mount:
    root: str
    mount_point: str
    fstype: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _parse_mountinfo(text: str) -> list[_Mount]:
    """The visible cgroup mounts, in mountinfo order.

    A later mount on the same mount point hides an earlier one, so only the last one per mount
    point counts.  Lines that do not parse are skipped: mountinfo is the kernel's, and a line we do
    not understand is never a cgroup mount we could use.
    """
    visible: dict[str, _Mount] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        before, after = left.split(), right.split()
        if len(before) < 6 or len(after) < 3:
            continue
        mount = _Mount(
            root=_unescape(before[3]),
            mount_point=_unescape(before[4]),
            fstype=after[0],
            super_options=tuple(after[2].split(",")),
        )
        visible.pop(mount.mount_point, None)
        visible[mount.mount_point] = mount
    return [m for m in visible.values() if m.fstype in ("cgroup", "cgroup2")]


def _read_controllers(mount_point: str) -> str:
    try:
        with open(os.path.join(mount_point, "cgroup.controllers"), encoding="ascii") as f:
            return f.read()
    except OSError:
        return ""


def detect(mountinfo_text: str,
           read_controllers: Callable[[str], str] = _read_controllers) -> CgroupLayout:
    """Decide how this host does cgroups, from the text of ``/proc/self/mountinfo``.

    * v2 when a cgroup2 filesystem is mounted at :data:`UNIFIED_ROOT` and its ``cgroup.controllers``
      (read through ``read_controllers(mount_point)``; tests pass a fake) offers cpu, memory and
      pids;
    * otherwise v1 when cgroup v1 hierarchies exist for cpu, memory and pids (each may be
      co-mounted with other controllers, e.g. ``cpu,cpuacct``).  A hybrid host -- v1 controllers
      plus an empty cgroup2 at ``/sys/fs/cgroup/unified`` -- is therefore v1;
    * otherwise :class:`CgroupUnavailable`, saying what was found and what is missing.
    """
    mounts = _parse_mountinfo(mountinfo_text)
    found: list[str] = []

    for mount in mounts:
        if mount.fstype != "cgroup2":
            continue
        if mount.mount_point != UNIFIED_ROOT:
            found.append(f"cgroup2 at {mount.mount_point} (not at {UNIFIED_ROOT}, ignored)")
            continue
        available = set(read_controllers(mount.mount_point).split())
        missing = [c for c in REQUIRED_CONTROLLERS if c not in available]
        if not missing:
            return CgroupLayout.v2(mount.mount_point)
        found.append(f"cgroup2 at {mount.mount_point} without controllers {', '.join(missing)} "
                     f"in its cgroup.controllers")

    v1: dict[str, _Mount] = {}
    for mount in mounts:
        if mount.fstype != "cgroup":
            continue
        for controller in ("cpu", "cpuacct", "memory", "pids"):
            if controller not in mount.super_options:
                continue
            # Prefer a mount of the whole hierarchy over a bind mount of a subtree.
            if controller not in v1 or (v1[controller].root != "/" and mount.root == "/"):
                v1[controller] = mount
    if all(c in v1 for c in REQUIRED_CONTROLLERS):
        return CgroupLayout.v1(
            cpu=v1["cpu"].mount_point,
            memory=v1["memory"].mount_point,
            pids=v1["pids"].mount_point,
            cpuacct=v1["cpuacct"].mount_point if "cpuacct" in v1 else None,
        )
    if v1:
        missing = [c for c in REQUIRED_CONTROLLERS if c not in v1]
        found.append(f"cgroup v1 hierarchies for {', '.join(sorted(v1))} but none for {', '.join(missing)}")
    raise CgroupUnavailable(
        "no usable cgroup hierarchy: Bolt needs either cgroup2 mounted at "
        f"{UNIFIED_ROOT} with the cpu, memory and pids controllers available, or cgroup v1 "
        "hierarchies for cpu, memory and pids; found "
        + ("; ".join(found) if found else "no cgroup mounts at all")
    )


# --------------------------------------------------------------------------------------------------
# Backends


class CgroupBackend(Protocol):
    """What the server needs from cgroups; both backends, the facade and test fakes provide it."""

    def ensure_project(self, project: str, limits: Limits) -> None: ...
    def set_limits(self, project: str, limits: Limits) -> None: ...
    def remove_project(self, project: str) -> None: ...
    def ensure_sandbox(self, project: str, sandbox: str) -> None: ...
    def add_process(self, project: str, sandbox: str, pid: int) -> None: ...
    def procs_files(self, project: str, sandbox: str) -> list[str]: ...
    def pids(self, project: str, sandbox: str) -> list[int]: ...
    def kill_sandbox(self, project: str, sandbox: str) -> None: ...
    def remove_sandbox(self, project: str, sandbox: str) -> None: ...
    def usage(self, project: str) -> dict[str, int | None]: ...
    def list_projects(self) -> list[str]: ...
    def list_sandboxes(self, project: str) -> list[str]: ...
    def remove_root(self) -> None: ...


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a safe cgroup directory name, else raise ``ValueError``."""
    if not isinstance(value, str) or NAME_PATTERN.fullmatch(value) is None:
        raise ValueError(f"invalid {kind} name {value!r}: must match ^{NAME_PATTERN.pattern}$")
    return value


def _check_pid(pid: object) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"invalid pid {pid!r}")
    return pid


#: Per-errno explanations added to an error message (key 0: any errno).
Hints = Optional[Mapping[int, str]]

_CPU_HINTS = {errno_mod.EINVAL: "the quota must be at least 1000 microseconds"}
_MEMORY_HINTS = {errno_mod.EBUSY: "the new memory limit is below what the project's processes use now "
                                  "and the kernel could not reclaim enough"}
_BUSY_DIR_HINTS = {errno_mod.EBUSY: "it still has processes or child cgroups",
                   errno_mod.ENOTEMPTY: "it still has processes or child cgroups"}


def _v1_bytes(value: int | None) -> float:
    """A v1 memory limit as a number to compare, with "unlimited" as infinity."""
    return float("inf") if value is None or value >= _V1_UNLIMITED_FLOOR else value


def _describe(err: OSError) -> str:
    code = err.errno or 0
    return f"{errno_mod.errorcode.get(code, 'errno ' + str(code))} ({os.strerror(code)})"


class _Backend:
    """What both versions share: safe file access below the hierarchy roots, names, kill and rmdir.

    Filesystem effects that differ between a real cgroupfs and a test tree are injected: ``mkdir``
    and ``rmdir`` take a full path (on cgroupfs the kernel fills a new directory with control files
    and removes them on rmdir; a fake tree does that itself), ``kill`` is ``os.kill`` and ``sleep``
    is ``time.sleep``, used only between bounded retries.
    """

    log = Logger()
    version: int = 0

    def __init__(
        self,
        layout: CgroupLayout,
        prefix: str = "bolt",
        *,
        mkdir: Callable[[str], None] = os.mkdir,
        rmdir: Callable[[str], None] = os.rmdir,
        kill: Callable[[int, int], None] = os.kill,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = 50,
        interval: float = 0.01,
    ) -> None:
        if layout.version != self.version:
            raise ValueError(f"{type(self).__name__} needs a v{self.version} layout, got v{layout.version}")
        self.layout = layout
        self.prefix = check_name("prefix", prefix)
        self._mkdir = mkdir
        self._rmdir = rmdir
        self._kill = kill
        self._sleep = sleep
        self.attempts = attempts
        self.interval = interval

    # -- hierarchies ------------------------------------------------------------------------------

    def _roots(self) -> tuple[str, ...]:
        """Every hierarchy root in which projects and sandboxes get a directory."""
        raise NotImplementedError

    # -- paths and files --------------------------------------------------------------------------

    def _parts(self, *names: str) -> tuple[str, ...]:
        return (self.prefix, *names)

    @staticmethod
    def _join(root: str, parts: Sequence[str], name: str | None = None) -> str:
        return os.path.join(root, *parts, *([name] if name else []))

    def _open_dir(self, root: str, parts: Sequence[str]) -> int:
        """Open ``root/parts...`` one component at a time, refusing symbolic links.

        The root itself comes from mountinfo (a mount point, not user input); everything below it
        is opened with ``O_NOFOLLOW`` relative to its parent's descriptor.
        """
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _error(self, action: str, path: str, err: OSError, hints: Hints = None) -> CgroupError:
        """A :class:`CgroupError` naming the file and the errno, plus the hint for that errno
        (key 0: for any errno) when the caller knows what it means there."""
        message = f"cannot {action} {path}: {_describe(err)}"
        if err.errno == errno_mod.ELOOP:
            message += "; refusing to follow a symbolic link"
        hint = (hints or {}).get(err.errno or 0) or (hints or {}).get(0)
        if hint:
            message += f"; {hint}"
        return CgroupError(message, path=path, errno=err.errno)

    def _write(self, root: str, parts: Sequence[str], name: str, value: str, hints: Hints = None) -> None:
        """Write ``value`` to one control file in a single ``write`` call, as cgroupfs expects."""
        path = self._join(root, parts, name)
        data = value.encode("ascii")
        try:
            dfd = self._open_dir(root, parts)
            try:
                fd = os.open(name, _WRITE_FLAGS, dir_fd=dfd)
            finally:
                os.close(dfd)
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as err:
            raise self._error("write", path, err, hints) from err
        if written != len(data):
            raise CgroupError(f"short write to {path}: {written} of {len(data)} bytes", path=path)
        self.log.debug("wrote {value!r} to {path}", value=value, path=path)

    def _read(self, root: str, parts: Sequence[str], name: str) -> str:
        path = self._join(root, parts, name)
        try:
            dfd = self._open_dir(root, parts)
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
            finally:
                os.close(dfd)
            with os.fdopen(fd, "rb", buffering=0) as f:
                chunks = []
                while chunk := f.read(65536):
                    chunks.append(chunk)
        except OSError as err:
            raise self._error("read", path, err) from err
        return b"".join(chunks).decode("ascii", "replace")

    def _read_int(self, root: str, parts: Sequence[str], name: str) -> int | None:
        """An integer control file, or None when the file does not exist on this kernel."""
        try:
            text = self._read(root, parts, name).strip()
        except CgroupError as err:
            if err.errno == errno_mod.ENOENT and self._exists(root, parts):
                return None
            raise
        try:
            return int(text)
        except ValueError:
            raise CgroupError(f"unexpected content {text!r} in {self._join(root, parts, name)}") from None

    def _has(self, root: str, parts: Sequence[str], name: str) -> bool:
        """Whether the cgroup directory has this control file (a kernel feature test)."""
        try:
            dfd = self._open_dir(root, parts)
        except OSError as err:
            raise self._error("open", self._join(root, parts), err) from err
        try:
            os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise self._error("stat", self._join(root, parts, name), err) from err
        finally:
            os.close(dfd)
        return True

    def _exists(self, root: str, parts: Sequence[str]) -> bool:
        try:
            os.close(self._open_dir(root, parts))
        except FileNotFoundError:
            return False
        except OSError as err:
            raise self._error("open", self._join(root, parts), err) from err
        return True

    def _subdirs(self, root: str, parts: Sequence[str]) -> list[str]:
        """Names of child cgroups (directories) that Bolt could have made; others are ignored."""
        try:
            dfd = self._open_dir(root, parts)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise self._error("open", self._join(root, parts), err) from err
        try:
            names = []
            for name in os.listdir(dfd):
                if NAME_PATTERN.fullmatch(name) is None:
                    continue
                if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    names.append(name)
            return names
        except OSError as err:
            raise self._error("list", self._join(root, parts), err) from err
        finally:
            os.close(dfd)

    def _make(self, root: str, parts: Sequence[str]) -> bool:
        """Create one cgroup directory (its parent must exist); False if it already existed."""
        path = self._join(root, parts)
        try:
            os.close(self._open_dir(root, parts[:-1]))  # the parent, walked without following links
            self._mkdir(path)
        except FileExistsError:
            if not self._exists(root, parts):  # pragma: no cover - raced away
                raise CgroupError(f"cannot create {path}: it vanished", path=path) from None
            return False
        except OSError as err:
            raise self._error("create", path, err) from err
        self.log.debug("created cgroup {path}", path=path)
        return True

    def _remove(self, root: str, parts: Sequence[str]) -> bool:
        """rmdir one cgroup directory, retrying briefly while it is busy; False if it was absent.

        A cgroup can only be removed once it has no processes and no children.  Processes that were
        just killed leave within moments, hence the short bounded retry on EBUSY.
        """
        path = self._join(root, parts)
        for attempt in range(self.attempts + 1):
            try:
                os.close(self._open_dir(root, parts[:-1]))
                if not self._exists(root, parts):
                    return False
                self._rmdir(path)
            except FileNotFoundError:
                return False
            except OSError as err:
                if err.errno == errno_mod.EBUSY and attempt < self.attempts:
                    self._sleep(self.interval)
                    continue
                raise self._error("remove", path, err, _BUSY_DIR_HINTS) from err
            self.log.debug("removed cgroup {path}", path=path)
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    # -- operations shared by both versions -----------------------------------------------------

    def _ensure_root(self) -> None:
        for root in self._roots():
            self._make(root, self._parts())

    def ensure_project(self, project: str, limits: Limits) -> None:
        """Create the project's cgroup (idempotent) and apply its limits.

        Limits go on before any sandbox can exist below, so no sandbox ever runs unbounded.  If this
        call created the project and its limits cannot be applied, the directories are removed
        again rather than left behind without limits.
        """
        check_name("project", project)
        self._ensure_root()
        created = False
        try:
            for root in self._roots():
                created |= self._make(root, self._parts(project))
            self._prepare_project(project)
            self.set_limits(project, limits)
        except CgroupError:
            if created:
                try:
                    self.remove_project(project)
                except CgroupError as err:
                    self.log.warn("could not undo cgroup of project {project}: {error}",
                                  project=project, error=str(err))
            raise
        self.log.info("cgroup for project {project} {what} with {limits}", project=project,
                      what="created" if created else "ready", limits=limits)

    def _prepare_project(self, project: str) -> None:
        """Version-specific setup of a fresh project directory, before limits."""

    def set_limits(self, project: str, limits: Limits) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def ensure_sandbox(self, project: str, sandbox: str) -> None:
        """Create the sandbox's child cgroup in every hierarchy (idempotent)."""
        check_name("project", project)
        check_name("sandbox", sandbox)
        for root in self._roots():  # all checked before any is made: no half-made sandbox
            self._require_project(root, project, "; ensure_project first")
        created = False
        for root in self._roots():
            created |= self._make(root, self._parts(project, sandbox))
        if created:
            self.log.info("cgroup for sandbox {project}/{sandbox} created", project=project, sandbox=sandbox)

    def procs_files(self, project: str, sandbox: str) -> list[str]:
        """The ``cgroup.procs`` paths a process must be written to in order to join the sandbox.

        For a launcher that moves *itself* in before it execs (``echo $$ > file; exec ...``), so
        that not even its first fork escapes the limits.  Paths are built from validated names only.
        """
        check_name("project", project)
        check_name("sandbox", sandbox)
        return [self._join(root, self._parts(project, sandbox), "cgroup.procs") for root in self._roots()]

    def add_process(self, project: str, sandbox: str, pid: int) -> None:
        """Move a process (all its threads) into the sandbox, in every hierarchy."""
        check_name("project", project)
        check_name("sandbox", sandbox)
        _check_pid(pid)
        for root in self._roots():
            self._write(root, self._parts(project, sandbox), "cgroup.procs", str(pid),
                        {errno_mod.ESRCH: f"no process {pid} (it has exited?)"})
        self.log.debug("pid {pid} joined sandbox {project}/{sandbox}", pid=pid, project=project, sandbox=sandbox)

    def _read_pids(self, project: str, sandbox: str, missing_ok: bool = False) -> list[int]:
        found: set[int] = set()
        for root in self._roots():
            parts = self._parts(project, sandbox)
            try:
                text = self._read(root, parts, "cgroup.procs")
            except CgroupError as err:
                if missing_ok and err.errno == errno_mod.ENOENT:
                    continue
                raise
            found.update(int(word) for word in text.split())
        return sorted(found)

    def pids(self, project: str, sandbox: str) -> list[int]:
        """Processes in the sandbox (the union over hierarchies, so a half-joined one shows too)."""
        check_name("project", project)
        check_name("sandbox", sandbox)
        return self._read_pids(project, sandbox)

    def _signal_sandbox(self, project: str, sandbox: str, pids: list[int]) -> None:
        """SIGKILL every listed process.

        A pid read from cgroup.procs could in theory be reused between the read and the kill; the
        window is microseconds and every process in the sandbox is being killed anyway.  v2's
        cgroup.kill (see :class:`CgroupsV2`) has no such window.
        """
        for pid in pids:
            try:
                self._kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except OSError as err:
                raise CgroupError(f"cannot kill pid {pid} of sandbox {project}/{sandbox}: {_describe(err)}",
                                  errno=err.errno) from err

    def kill_sandbox(self, project: str, sandbox: str) -> None:
        """SIGKILL everything in the sandbox and wait (bounded) until the cgroup is empty.

        Repeats because a process may fork between our read of cgroup.procs and its death.  A
        sandbox that does not exist has nothing to kill.
        """
        check_name("project", project)
        check_name("sandbox", sandbox)
        killed: set[int] = set()
        for attempt in range(self.attempts + 1):
            pids = self._read_pids(project, sandbox, missing_ok=True)
            if not pids:
                if killed:
                    self.log.info("killed {count} processes of sandbox {project}/{sandbox}",
                                  count=len(killed), project=project, sandbox=sandbox)
                return
            if attempt == self.attempts:
                break
            killed.update(pids)
            self._signal_sandbox(project, sandbox, pids)
            self._sleep(self.interval)
        raise CgroupError(
            f"sandbox {project}/{sandbox} still has processes {pids} after {self.attempts} kill "
            f"attempts (stuck in uninterruptible sleep?)",
            path=self._join(self._roots()[0], self._parts(project, sandbox)), errno=errno_mod.EBUSY)

    def remove_sandbox(self, project: str, sandbox: str) -> None:
        """Remove the sandbox's cgroup (idempotent).  It must be empty: kill it first."""
        check_name("project", project)
        check_name("sandbox", sandbox)
        removed = False
        for root in self._roots():
            removed |= self._remove(root, self._parts(project, sandbox))
        if removed:
            self.log.info("cgroup for sandbox {project}/{sandbox} removed", project=project, sandbox=sandbox)

    def remove_project(self, project: str) -> None:
        """Remove the project's cgroup (idempotent).  Its sandboxes must be removed first."""
        check_name("project", project)
        left = self.list_sandboxes(project)
        if left:
            raise CgroupError(f"cannot remove cgroup of project {project!r}: sandboxes {left} remain",
                              path=self._join(self._roots()[0], self._parts(project)), errno=errno_mod.EBUSY)
        removed = False
        for root in self._roots():
            removed |= self._remove(root, self._parts(project))
        if removed:
            self.log.info("cgroup for project {project} removed", project=project)

    def remove_root(self) -> None:
        """Remove the ``<prefix>`` directories if no project is left (uninstall, tests)."""
        for root in self._roots():
            if not self._subdirs(root, self._parts()):
                self._remove(root, self._parts())

    def list_projects(self) -> list[str]:
        """Projects with a cgroup in any hierarchy, for reconciliation at start."""
        names: set[str] = set()
        for root in self._roots():
            names.update(self._subdirs(root, self._parts()))
        return sorted(names)

    def list_sandboxes(self, project: str) -> list[str]:
        """Sandboxes of a project with a cgroup in any hierarchy, for reconciliation at start."""
        check_name("project", project)
        names: set[str] = set()
        for root in self._roots():
            names.update(self._subdirs(root, self._parts(project)))
        return sorted(names)

    def usage(self, project: str) -> dict[str, int | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _require_project(self, root: str, project: str, advice: str = "") -> None:
        if not self._exists(root, self._parts(project)):
            path = self._join(root, self._parts(project))
            raise CgroupError(f"no cgroup for project {project!r} at {path}{advice}",
                              path=path, errno=errno_mod.ENOENT)


class CgroupsV1(_Backend):
    """cgroup v1: one directory per project and sandbox in each of the cpu, memory, pids (and
    cpuacct) hierarchies.

    Files written on the project directory: ``cpu.cfs_period_us`` (100000) and ``cpu.cfs_quota_us``,
    ``memory.limit_in_bytes`` and, when swap accounting exists, ``memory.memsw.limit_in_bytes``
    set to the same value so swap cannot be used to get around the limit, and ``pids.max``.
    ``memory.oom_control`` is left alone.
    """

    version = 1

    def _roots(self) -> tuple[str, ...]:
        layout = self.layout
        roots: list[str] = []
        for root in (layout.cpu, layout.cpuacct, layout.memory, layout.pids):
            if root and root not in roots:
                roots.append(root)
        return tuple(roots)

    def _ensure_root(self) -> None:
        super()._ensure_root()
        # Without use_hierarchy a v1 memory child is not charged to its parent, and the project's
        # pooled budget would not bound its sandboxes.  Modern kernels force 1; old ones default to
        # it only if the mount root says so, and it can only be changed while there are no children.
        memory, parts = self.layout.memory, self._parts()
        assert memory is not None
        if self._has(memory, parts, "memory.use_hierarchy") and \
                self._read(memory, parts, "memory.use_hierarchy").strip() == "0":
            self._write(memory, parts, "memory.use_hierarchy", "1",
                        {0: "hierarchical memory accounting is required for pooled project limits"})

    def set_limits(self, project: str, limits: Limits) -> None:
        """Apply a project's limits.

        Lowering the memory limit below what the project uses now fails with EBUSY after the kernel
        tried to reclaim; that surfaces as a :class:`CgroupError`.  Memory is written first, so
        that refusal leaves every limit as it was.
        """
        check_name("project", project)
        layout, parts = self.layout, self._parts(project)
        assert layout.cpu and layout.memory and layout.pids
        for root in self._roots():
            self._require_project(root, project)

        self._set_memory(layout.memory, parts, limits.memory_limit_bytes)
        self._write(layout.cpu, parts, "cpu.cfs_period_us", str(CPU_PERIOD_US))
        self._write(layout.cpu, parts, "cpu.cfs_quota_us",
                    "-1" if limits.cpu_quota_us is None else str(limits.cpu_quota_us),
                    _CPU_HINTS)
        self._write(layout.pids, parts, "pids.max", "max" if limits.pids_max is None else str(limits.pids_max))
        self.log.debug("limits of project {project} set to {limits}", project=project, limits=limits)

    def _set_memory(self, root: str, parts: Sequence[str], limit: int | None) -> None:
        """Write memory and memory+swap limits in an order the kernel accepts.

        The kernel insists that memsw >= memory at every moment: raising writes memsw first,
        lowering writes memory first.  If the second write fails, the first is put back.
        """
        busy = _MEMORY_HINTS
        value = "-1" if limit is None else str(limit)
        mem = "memory.limit_in_bytes"
        memsw = "memory.memsw.limit_in_bytes"
        if not self._has(root, parts, memsw):
            self._write(root, parts, mem, value, busy)
            return
        current = {name: self._read_int(root, parts, name) for name in (mem, memsw)}
        raising = _v1_bytes(limit) >= _v1_bytes(current[mem])
        first, second = (memsw, mem) if raising else (mem, memsw)
        self._write(root, parts, first, value, busy)
        try:
            self._write(root, parts, second, value, busy)
        except CgroupError:
            old = current[first]
            restore = "-1" if _v1_bytes(old) == float("inf") else str(old)
            try:
                self._write(root, parts, first, restore)
            except CgroupError as err:  # pragma: no cover - best effort
                self.log.warn("could not restore {file}: {error}", file=first, error=str(err))
            raise

    def usage(self, project: str) -> dict[str, int | None]:
        """Current totals of the project: memory bytes (incl. page cache), CPU µs, processes."""
        check_name("project", project)
        layout, parts = self.layout, self._parts(project)
        assert layout.memory and layout.pids
        self._require_project(layout.memory, project)
        cpu_ns = self._read_int(layout.cpuacct, parts, "cpuacct.usage") if layout.cpuacct else None
        return {
            "memory_current_bytes": self._read_int(layout.memory, parts, "memory.usage_in_bytes"),
            "cpu_usage_usec": None if cpu_ns is None else cpu_ns // 1000,
            "pids_current": self._read_int(layout.pids, parts, "pids.current"),
        }


class CgroupsV2(_Backend):
    """cgroup v2: one tree in the unified hierarchy.

    ``+cpu +memory +pids`` are enabled in ``cgroup.subtree_control`` of the hierarchy root (when not
    already), of ``<prefix>`` and of each project, so limits can sit on projects and usage is
    visible per sandbox.  v2's "no internal processes" rule fits the model: processes only ever
    live in sandbox (leaf) cgroups.

    Files written on the project directory: ``cpu.max`` ("<quota> 100000"), ``memory.max``,
    ``memory.swap.max`` = 0 when the kernel has it (the limit then bounds RAM *and* swap use,
    matching v1's memsw setting), ``pids.max``.  ``memory.oom.group`` is deliberately left at 0: one
    runaway process should be OOM-killed alone, not together with the sandbox's pid 1.

    On systemd hosts ``/sys/fs/cgroup/<prefix>`` is a foreign top-level cgroup: systemd leaves it
    alone (which is what lets sandboxes outlive a restart of the service), and once ``<prefix>``
    has the controllers enabled the kernel refuses to disable them at the root under it.
    """

    version = 2

    def _roots(self) -> tuple[str, ...]:
        assert self.layout.unified is not None
        return (self.layout.unified,)

    def _enable_controllers(self, parts: Sequence[str], where: str) -> None:
        root = self._roots()[0]
        enabled = {word.lstrip("+") for word in self._read(root, parts, "cgroup.subtree_control").split()}
        missing = [c for c in REQUIRED_CONTROLLERS if c not in enabled]
        if not missing:
            return
        if not parts:
            available = set(self._read(root, parts, "cgroup.controllers").split())
            absent = [c for c in missing if c not in available]
            if absent:
                raise CgroupUnavailable(
                    f"controllers {', '.join(absent)} are not available in {root}/cgroup.controllers "
                    "(bound to a cgroup v1 hierarchy, or disabled on the kernel command line?)",
                    path=self._join(root, parts, "cgroup.controllers"))
        self._write(root, parts, "cgroup.subtree_control", " ".join("+" + c for c in missing),
                    {0: f"could not enable {', '.join(missing)} for {where}"})

    def _ensure_root(self) -> None:
        self._enable_controllers((), "the hierarchy root")
        super()._ensure_root()
        self._enable_controllers(self._parts(), "the bolt root")

    def _prepare_project(self, project: str) -> None:
        self._enable_controllers(self._parts(project), f"project {project}")

    def set_limits(self, project: str, limits: Limits) -> None:
        """Apply a project's limits.

        Unlike v1, lowering ``memory.max`` below current usage does not fail: the kernel reclaims
        and, if that is not enough, OOM-kills inside the project.
        """
        check_name("project", project)
        root, parts = self._roots()[0], self._parts(project)
        self._require_project(root, project)
        quota = "max" if limits.cpu_quota_us is None else str(limits.cpu_quota_us)
        self._write(root, parts, "cpu.max", f"{quota} {CPU_PERIOD_US}",
                    _CPU_HINTS)
        self._write(root, parts, "memory.max",
                    "max" if limits.memory_limit_bytes is None else str(limits.memory_limit_bytes))
        if self._has(root, parts, "memory.swap.max"):
            self._write(root, parts, "memory.swap.max", "0")
        self._write(root, parts, "pids.max", "max" if limits.pids_max is None else str(limits.pids_max))
        self.log.debug("limits of project {project} set to {limits}", project=project, limits=limits)

    def _signal_sandbox(self, project: str, sandbox: str, pids: list[int]) -> None:
        """Use cgroup.kill (Linux 5.14+) when there is one: it kills atomically, forks included."""
        root, parts = self._roots()[0], self._parts(project, sandbox)
        if self._has(root, parts, "cgroup.kill"):
            self._write(root, parts, "cgroup.kill", "1")
        else:
            super()._signal_sandbox(project, sandbox, pids)

    def usage(self, project: str) -> dict[str, int | None]:
        """Current totals of the project: memory bytes (incl. page cache), CPU µs, processes."""
        check_name("project", project)
        root, parts = self._roots()[0], self._parts(project)
        self._require_project(root, project)
        cpu_usec = None
        if self._has(root, parts, "cpu.stat"):
            for line in self._read(root, parts, "cpu.stat").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    cpu_usec = int(value)
        return {
            "memory_current_bytes": self._read_int(root, parts, "memory.current"),
            "cpu_usage_usec": cpu_usec,
            "pids_current": self._read_int(root, parts, "pids.current"),
        }


# --------------------------------------------------------------------------------------------------
# Facade


class Cgroups:
    """The server's cgroups adapter: picks the backend for the layout and delegates to it.

    Keyword arguments (``mkdir``, ``rmdir``, ``kill``, ``sleep``, ``attempts``, ``interval``) go to
    the backend; tests use them to run against a fake tree in a temporary directory.
    """

    log = Logger()

    def __init__(self, layout: CgroupLayout, prefix: str = "bolt", **kwargs) -> None:
        backend_class = CgroupsV2 if layout.version == 2 else CgroupsV1
        self.backend: CgroupsV1 | CgroupsV2 = backend_class(layout, prefix, **kwargs)
        self.layout = layout
        self.prefix = self.backend.prefix

    @classmethod
    def from_host(cls, prefix: str = "bolt", *, mountinfo: str = "/proc/self/mountinfo", **kwargs) -> "Cgroups":
        """Detect the host's layout from ``/proc/self/mountinfo`` and build the adapter."""
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            layout = detect(f.read())
        cls.log.info("cgroup v{version} detected: {layout}", version=layout.version, layout=layout)
        return cls(layout, prefix, **kwargs)

    @property
    def version(self) -> int:
        return self.layout.version

    def ensure_project(self, project: str, limits: Limits) -> None:
        self.backend.ensure_project(project, limits)

    def set_limits(self, project: str, limits: Limits) -> None:
        self.backend.set_limits(project, limits)

    def remove_project(self, project: str) -> None:
        self.backend.remove_project(project)

    def ensure_sandbox(self, project: str, sandbox: str) -> None:
        self.backend.ensure_sandbox(project, sandbox)

    def add_process(self, project: str, sandbox: str, pid: int) -> None:
        self.backend.add_process(project, sandbox, pid)

    def procs_files(self, project: str, sandbox: str) -> list[str]:
        return self.backend.procs_files(project, sandbox)

    def pids(self, project: str, sandbox: str) -> list[int]:
        return self.backend.pids(project, sandbox)

    def kill_sandbox(self, project: str, sandbox: str) -> None:
        self.backend.kill_sandbox(project, sandbox)

    def remove_sandbox(self, project: str, sandbox: str) -> None:
        self.backend.remove_sandbox(project, sandbox)

    def usage(self, project: str) -> dict[str, int | None]:
        return self.backend.usage(project)

    def list_projects(self) -> list[str]:
        return self.backend.list_projects()

    def list_sandboxes(self, project: str) -> list[str]:
        return self.backend.list_sandboxes(project)

    def remove_root(self) -> None:
        self.backend.remove_root()


__all__ = [
    "CPU_PERIOD_US", "DEFAULT_PIDS_MAX", "NAME_PATTERN", "CgroupBackend", "CgroupError", "CgroupLayout",
    "CgroupUnavailable", "Cgroups", "CgroupsV1", "CgroupsV2", "Limits", "check_name", "detect",
]
