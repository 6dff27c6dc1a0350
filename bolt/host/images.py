"""Base images: one debootstrapped root filesystem per distro, built once and shared read-only.

Layout under ``base_dir`` (everything bolt creates there, and nothing else)::

    <base_dir>/<family>/<suite>/         the image root filesystem (overlayfs lower dir)
    <base_dir>/<family>/<suite>.json     ready marker: build metadata, written last
    <base_dir>/.build-<family>-<suite>-<hex>/   a build (or a removal) in progress

A build runs debootstrap into a ``.build-*`` directory next to the images, so a crash never leaves a
half-built tree under an image's name.  When debootstrap succeeds the directory is renamed into
place (same filesystem, atomic) and only then is the sidecar ``<suite>.json`` written atomically
(temp file, fsync, rename, fsync the directory).  **An image is ready exactly when its sidecar parses
and its directory is a real directory.**  Everything else is debris that :meth:`ImageStore.recover`
removes at start: ``.build-*`` directories, image directories without a sidecar (a crash between the
rename and the marker), sidecars without a directory, and temporary sidecars.

Accepted distros are ``debian:<suite>`` and ``ubuntu:<suite>``.  The name is first checked against a
strict pattern, and only then looked up in debootstrap's scripts directory; the suite's script must
resolve (following symlinks, without leaving that directory) to the script that family's suites share
in the installed debootstrap: ``sid`` for Debian, ``gutsy`` for Ubuntu.  That keeps out helper files
(``debian-common``), other distributions (Kali, PureOS, Tanglu) and archived Debian releases whose
scripts are ``etch``/``sarge``/``woody`` and whose packages the default mirror no longer carries.  It
cannot tell Devuan code names (``ascii``, ``beowulf``, ``ceres``) from Debian ones, because Debian's
debootstrap links them to ``sid`` too; such a build fails at debootstrap time against the Debian mirror.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from bolt.host.process import KILL_GRACE, ProcessFailed, ProcessRunner

DEFAULT_SCRIPTS_DIR = "/usr/share/debootstrap/scripts"

#: The script every supported suite of a family resolves to in debootstrap's scripts directory.
FAMILY_SCRIPTS = {"debian": "sid", "ubuntu": "gutsy"}

#: Variants that make sense for a root-run build (``None`` means debootstrap's own default).
VARIANTS = ("minbase", "buildd")

_DISTRO = re.compile(r"(debian|ubuntu):([a-z][a-z0-9-]{0,31})")
# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alphanumeric.
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_MARKER_SUFFIX = ".json"
_MARKER_TMP_SUFFIX = ".json.tmp"
_BUILD_PREFIX = ".build-"

DISTRO_FORM = ('distro must be "debian:<suite>" or "ubuntu:<suite>" with a suite debootstrap knows, '
               'e.g. "debian:bookworm"')


class InvalidDistro(ValueError):
    """The distro name is malformed or names a suite the installed debootstrap cannot build."""


class ImageBuildFailed(Exception):
    """A build did not produce an image; ``tail`` holds debootstrap's last output lines."""

    def __init__(self, distro: str, reason: str, tail: Sequence[str] = ()) -> None:
        super().__init__(distro, reason, list(tail))
        self.distro = distro
        self.reason = reason
        self.tail = list(tail)

    def __str__(self) -> str:
        text = f"building {self.distro} failed: {self.reason}"
        if self.tail:
            text += "\n" + "\n".join(self.tail)
        return text


class ImageNotFound(LookupError):
    """No ready image (and no build) for this distro."""


class ImageInUse(Exception):
    """The image still backs sandboxes, so it cannot be removed."""


class ImageBusy(Exception):
    """The image is being built, so it cannot be removed now."""


@dataclass(frozen=True)
class Distro:
    family: str
    suite: str

    def __str__(self) -> str:
        return f"{self.family}:{self.suite}"


@dataclass(frozen=True)
class ImageInfo:
    """What the API shows about one image.  Fields that do not apply to ``state`` are ``None``."""

    distro: str
    state: str  # "building" | "ready" | "failed"
    path: str | None = None  # host path of a ready image; internal, not in to_json()
    stage: str | None = None
    elapsed_seconds: float | None = None
    size_bytes: int | None = None
    build_seconds: float | None = None
    built_at: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"distro": self.distro, "state": self.state}
        for key in ("stage", "elapsed_seconds", "size_bytes", "build_seconds", "built_at", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def parse_distro(distro: object) -> Distro:
    """Check the form only (no filesystem): enough for looking up or removing existing images."""
    match = _DISTRO.fullmatch(distro) if isinstance(distro, str) else None
    if match is None:
        raise InvalidDistro(DISTRO_FORM)
    return Distro(match.group(1), match.group(2))


def validate_distro(distro: object, scripts_dir: str = DEFAULT_SCRIPTS_DIR) -> Distro:
    """Check the form, then that debootstrap has a script of the right family for the suite."""
    parsed = parse_distro(distro)
    root = os.path.realpath(scripts_dir)
    script = os.path.realpath(os.path.join(root, parsed.suite))
    if (os.path.dirname(script) != root or not os.path.isfile(script)
            or os.path.basename(script) != FAMILY_SCRIPTS[parsed.family]):
        raise InvalidDistro(f"{DISTRO_FORM}; {distro!r} is not one")
    return parsed


def validate_options(variant: str | None, include: Iterable[str], mirror: str | None) -> tuple[str, ...]:
    """Check debootstrap options once, at construction, so every build's command line is safe."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)} (or None), not {variant!r}")
    if isinstance(include, str):
        raise ValueError("include must be a list of package names, not a string")
    packages = tuple(include)
    for name in packages:
        if not isinstance(name, str) or not _PACKAGE.fullmatch(name):
            raise ValueError(f"include: {name!r} is not a Debian package name "
                             "(lower case letters, digits, '+', '-', '.'; at least 2 characters)")
    if mirror is not None:
        parts = urlsplit(mirror) if isinstance(mirror, str) else None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or any(ch.isspace() or not ch.isprintable() for ch in mirror)):
            raise ValueError(f"mirror must be an http:// or https:// URL, not {mirror!r}")
    return packages


def debootstrap_argv(suite: str, target: str, *, variant: str | None = "minbase",
                     include: Sequence[str] = (), mirror: str | None = None) -> list[str]:
    argv = ["debootstrap"]
    if variant is not None:
        argv.append(f"--variant={variant}")
    if include:
        argv.append("--include=" + ",".join(include))
    argv += [suite, target]
    if mirror is not None:
        argv.append(mirror)
    return argv


def stage_of(line: str) -> str | None:
    """debootstrap's ``I: Extracting base-files...`` lines name what it is doing now."""
    if not line.startswith("I: "):
        return None
    return line[3:].strip().rstrip(".").rstrip() or None


# --- blocking helpers: run in a thread -------------------------------------------------------


def clean_package_cache(root: str) -> None:
    """Drop the .deb files debootstrap leaves in the image's apt cache (~30 MB nobody reads again).

    Only regular files directly in ``var/cache/apt/archives`` are removed, through a directory
    descriptor opened without following links: the tree was just built by debootstrap, but a mirror's
    packages are not to be trusted with where host-side code writes.
    """
    try:
        fd = os.open(os.path.join(root, "var", "cache", "apt", "archives"),
                     os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for entry in os.scandir(fd):
            if entry.name.endswith(".deb") and entry.is_file(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)


def tree_size(top: str) -> int:
    """Apparent size of a tree: lstat sizes, symlinks not followed, hard-linked inodes counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path: str, mountinfo: str) -> list[str]:
    """Mount points at or below ``path``, read from a mountinfo file, in mount order."""
    found = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                point = _unescape_mountinfo(fields[4])
                if point == path or point.startswith(path + "/"):
                    found.append(point)
    return found


def outermost(paths: Iterable[str]) -> list[str]:
    """Drop paths that lie under another listed path (``umount --recursive`` takes care of them)."""
    result: list[str] = []
    for p in sorted(set(paths)):
        if not any(p == q or p.startswith(q + "/") for q in result):
            result.append(p)
    return result


def processes_using(path: str, proc_dir: str = "/proc") -> list[int]:
    """Processes chrooted into, working in, or naming ``path`` on their command line."""
    inside = lambda p: p == path or p.startswith(path + "/")  # noqa: E731
    pids = []
    for name in os.listdir(proc_dir):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        base = os.path.join(proc_dir, name)
        try:
            links = [os.readlink(os.path.join(base, link)) for link in ("root", "cwd")]
            with open(os.path.join(base, "cmdline"), "rb") as f:
                args = f.read().decode("utf-8", "surrogateescape").split("\0")
        except OSError:
            continue
        if any(inside(p) for p in links) or any(inside(a) for a in args):
            pids.append(int(name))
    return pids


def settle_processes(path: str, proc_dir: str = "/proc", grace: float = KILL_GRACE + 2) -> list[int]:
    """Wait for processes still busy in a dying build dir; SIGKILL what outlives the grace.

    A cancelled debootstrap is only signalled; a child it started (a dpkg chrooted into the target)
    can outlive it.  Everything found here works inside bolt's private, randomly named build
    directory, so it is ours to end.  Returns the pids that had to be killed.
    """
    deadline = time.monotonic() + grace
    while (pids := processes_using(path, proc_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2
    while pids and processes_using(path, proc_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def file_tail(path: str, lines: int = 30) -> list[str]:
    """The last lines of a file (not followed if it is a symlink); [] if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, os.fstat(fd).st_size - 16384))
        return f.read().decode("utf-8", "replace").splitlines()[-lines:]


def _remove_tree(path: str) -> None:
    """rmtree (which never follows symlinks on Linux) for a tree; plain unlink for anything else."""
    if _is_real_dir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path[: -len(_MARKER_SUFFIX)] + _MARKER_TMP_SUFFIX
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# --- the store --------------------------------------------------------------------------------


def _random_token() -> str:
    return secrets.token_hex(8)


class _Build:
    """One running build: the state the API shows, and the callers waiting for it."""

    def __init__(self, distro: Distro, started: float) -> None:
        self.distro = distro
        self.started = started
        self.stage = "Queued"
        self.waiters: list[defer.Deferred[str]] = []
        self.deferred: defer.Deferred[str] | None = None
        self.step: defer.Deferred[Any] | None = None
        self.cancelled = False


Threads = Callable[..., "defer.Deferred[Any]"]


class ImageStore:
    """Builds, caches, lists and removes base images.

    ``threads(f, *args)`` runs blocking file work and returns a Deferred; by default the reactor's
    thread pool.  Unit tests pass a synchronous one.  ``proc_dir`` is where mounts and leftover
    processes are looked up (``<proc_dir>/self/mountinfo``, ``<proc_dir>/<pid>/...``).
    """

    log = Logger()

    def __init__(
        self,
        base_dir: str,
        runner: ProcessRunner,
        reactor: Any = None,
        *,
        variant: str | None = "minbase",
        include: Iterable[str] = (),
        mirror: str | None = None,
        max_concurrent_builds: int = 2,
        scripts_dir: str = DEFAULT_SCRIPTS_DIR,
        threads: Threads | None = None,
        proc_dir: str = "/proc",
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if max_concurrent_builds < 1:
            raise ValueError("max_concurrent_builds must be at least 1")
        self.include = validate_options(variant, include, mirror)
        self.variant = variant
        self.mirror = mirror
        self.base_dir = os.path.realpath(os.path.abspath(base_dir))
        self.scripts_dir = scripts_dir
        self._runner = runner
        self._reactor = reactor
        self._proc_dir = proc_dir
        if threads is None:
            from twisted.internet.threads import deferToThreadPool

            def threads(f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred[Any]:
                return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kw)
        self._threads = threads
        self._slots = defer.DeferredSemaphore(max_concurrent_builds)
        self._builds: dict[str, _Build] = {}
        self._failed: dict[str, ImageInfo] = {}
        self._live: set[str] = set()  # scratch trees in use by builds or being discarded
        self._stopping = False

    # -- paths

    def image_path(self, distro: Distro) -> str:
        return os.path.join(self.base_dir, distro.family, distro.suite)

    def _marker_path(self, distro: Distro) -> str:
        return self.image_path(distro) + _MARKER_SUFFIX

    def _scratch_path(self, distro: Distro) -> str:
        return os.path.join(self.base_dir, f"{_BUILD_PREFIX}{distro.family}-{distro.suite}-{_random_token()}")

    # -- queries

    def _ready(self, distro: Distro) -> ImageInfo | None:
        """The ready image's info from its sidecar, or None.  A small read, fine on the reactor."""
        try:
            with open(self._marker_path(distro), "rb") as f:
                meta = json.load(f)
            info = ImageInfo(str(distro), "ready", path=self.image_path(distro),
                             size_bytes=int(meta["size_bytes"]), build_seconds=float(meta["build_seconds"]),
                             built_at=str(meta["built_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.log.warn("ignoring unreadable image marker for {distro}: {error}", distro=str(distro), error=e)
            return None
        return info if _is_real_dir(info.path) else None

    def _building(self, build: _Build) -> ImageInfo:
        return ImageInfo(str(build.distro), "building", stage=build.stage,
                         elapsed_seconds=max(0.0, self._reactor.seconds() - build.started))

    def get(self, distro: str) -> ImageInfo:
        """Current state of one image; raises ImageNotFound if it is neither built, building nor failed."""
        parsed = parse_distro(distro)
        key = str(parsed)
        if key in self._builds:
            return self._building(self._builds[key])
        info = self._ready(parsed) or self._failed.get(key)
        if info is None:
            raise ImageNotFound(f"no image for {key}")
        return info

    def list(self) -> list[ImageInfo]:
        """Every image bolt knows: on disk (ready), building, or failed since the server started."""
        infos = {key: self._building(build) for key, build in self._builds.items()}
        for family in FAMILY_SCRIPTS:
            try:
                names = os.listdir(os.path.join(self.base_dir, family))
            except OSError:
                continue
            for name in names:
                suite = name[: -len(_MARKER_SUFFIX)]
                if name.endswith(_MARKER_SUFFIX) and _DISTRO.fullmatch(f"{family}:{suite}"):
                    distro = Distro(family, suite)
                    if str(distro) not in infos and (info := self._ready(distro)) is not None:
                        infos[str(distro)] = info
        for key, info in self._failed.items():
            infos.setdefault(key, info)
        return [infos[key] for key in sorted(infos)]

    # -- building

    def ensure(self, distro: str) -> defer.Deferred[str]:
        """Fire with the image's path, building it first if needed.

        Concurrent callers share one build; each gets its own Deferred, and cancelling it only stops
        that caller's wait.  Raises InvalidDistro at once; build errors arrive as ImageBuildFailed.
        """
        parsed = validate_distro(distro, self.scripts_dir)
        key = str(parsed)
        if key not in self._builds and (ready := self._ready(parsed)) is not None:
            return defer.succeed(ready.path)
        if self._stopping:
            return defer.fail(ImageBuildFailed(key, "the image store is stopping"))
        build = self._builds.get(key) or self._new_build(parsed)
        waiter = self._wait(build)
        self._launch(build)
        return waiter

    def validate(self, distro: object) -> str:
        """The canonical name of a distro this store can build, or InvalidDistro."""
        return str(validate_distro(distro, self.scripts_dir))

    def start(self, distro: str) -> ImageInfo:
        """Begin building unless ready or already building, without waiting; return the current info."""
        parsed = validate_distro(distro, self.scripts_dir)
        key = str(parsed)
        if key not in self._builds and self._ready(parsed) is None:
            if self._stopping:
                raise ImageBuildFailed(key, "the image store is stopping")
            self._launch(self._new_build(parsed))
        return self.get(key)

    def _new_build(self, distro: Distro) -> _Build:
        build = _Build(distro, self._reactor.seconds())
        self._builds[str(distro)] = build
        self._failed.pop(str(distro), None)
        return build

    def _wait(self, build: _Build) -> defer.Deferred[str]:
        def leave(d: defer.Deferred[str]) -> None:
            # Only this caller stops waiting; the build goes on for the others (and for the cache).
            if d in build.waiters:
                build.waiters.remove(d)

        waiter: defer.Deferred[str] = defer.Deferred(leave)
        build.waiters.append(waiter)
        return waiter

    def _launch(self, build: _Build) -> None:
        if build.deferred is None:
            build.deferred = self._build(build)
            build.deferred.addBoth(self._finished, build)

    def _finished(self, result: Any, build: _Build) -> None:
        key = str(build.distro)
        del self._builds[key]
        waiters, build.waiters = build.waiters, []
        if isinstance(result, defer.Failure):
            self._failed[key] = ImageInfo(key, "failed", error=str(result.value))
            for w in waiters:
                w.errback(result)
        else:
            for w in waiters:
                w.callback(result)

    @defer.inlineCallbacks
    def _build(self, build: _Build):
        """One build, start to finish; fails only with ImageBuildFailed and cleans up after itself."""
        key = str(build.distro)
        try:
            yield self._step(build, self._slots.acquire())
        except defer.CancelledError:
            raise ImageBuildFailed(key, "build cancelled") from None
        scratch: str | None = None
        try:
            self._check(build)
            build.stage = "Starting"
            scratch = self._scratch_path(build.distro)
            self._live.add(scratch)
            yield self._threads(self._make_scratch, scratch)
            argv = debootstrap_argv(build.distro.suite, scratch, variant=self.variant,
                                    include=self.include, mirror=self.mirror)
            self.log.info("building {distro}: {argv}", distro=key, argv=argv)
            self._check(build)
            yield self._step(build, self._runner.run(argv, on_line=lambda line: self._output(build, line)))
            self._check(build)
            build.stage = "Cleaning package cache"
            yield self._threads(clean_package_cache, scratch)
            self._check(build)
            build.stage = "Measuring size"
            size = yield self._threads(tree_size, scratch)
            self._check(build)
            build.stage = "Committing"
            seconds = max(0.0, self._reactor.seconds() - build.started)
            built_at = datetime.fromtimestamp(self._reactor.seconds(), timezone.utc)
            meta = {
                "distro": key, "variant": self.variant, "include": list(self.include), "mirror": self.mirror,
                "size_bytes": size, "build_seconds": round(seconds, 3),
                "built_at": built_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            }
            stale = yield self._threads(self._commit, scratch, build.distro, meta)
            self._live.discard(scratch)
            scratch = None
            if stale is not None:
                yield self._discard(stale)
            self.log.info("image {distro} ready: {size} bytes in {seconds:.1f}s",
                          distro=key, size=size, seconds=seconds)
            return self.image_path(build.distro)
        except Exception as e:
            if isinstance(e, ProcessFailed):
                failure = ImageBuildFailed(key, f"debootstrap failed ({e.result.describe()})", e.tail)
            elif isinstance(e, defer.CancelledError):
                failure = ImageBuildFailed(key, "build cancelled")
            else:
                self.log.failure("building {distro} failed unexpectedly", distro=key)
                failure = ImageBuildFailed(key, f"{type(e).__name__}: {e}")
            self.log.error("{error}", error=str(failure))
            if scratch is not None:
                build.stage = "Cleaning up"
                if isinstance(e, ProcessFailed):
                    # dpkg's complaints go to this file, which the cleanup is about to delete.
                    log_file = os.path.join(scratch, "debootstrap", "debootstrap.log")
                    details = yield self._threads(file_tail, log_file)
                    if details:
                        self.log.error("debootstrap.log of {distro} ends with:\n{details}",
                                       distro=key, details="\n".join(details))
                yield self._discard(scratch)  # takes over scratch's place in _live
            raise failure from e
        finally:
            self._slots.release()

    @staticmethod
    def _step(build: _Build, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Remember the step stop() may interrupt: waiting for a slot, or debootstrap itself.

        Only these are cancelled.  File work in a thread cannot be interrupted, and cleaning up
        under it would race it, so between steps the build checks ``build.cancelled`` instead.
        """
        build.step = d

        def done(result: Any) -> Any:
            build.step = None
            return result

        return d.addBoth(done)

    @staticmethod
    def _check(build: _Build) -> None:
        if build.cancelled:
            raise defer.CancelledError()

    def _output(self, build: _Build, line: str) -> None:
        self.log.info("debootstrap {distro}: {line}", distro=str(build.distro), line=line)
        stage = stage_of(line)
        if stage is not None:
            build.stage = stage

    def _make_scratch(self, path: str) -> None:
        os.makedirs(self.base_dir, mode=0o755, exist_ok=True)
        os.mkdir(path, 0o755)  # 0755 becomes the image's "/" permissions

    def _commit(self, scratch: str, distro: Distro, meta: dict[str, Any]) -> str | None:
        """Move a finished build into place, then write the marker.  Returns a stale tree to discard.

        A directory already under the image's name without a valid marker is left over from a crash
        between rename and marker; it is moved aside (to a ``.build-*`` name) rather than trusted.
        """
        family_dir = os.path.join(self.base_dir, distro.family)
        os.makedirs(family_dir, mode=0o755, exist_ok=True)
        final = self.image_path(distro)
        stale = None
        if os.path.lexists(final):
            stale = self._scratch_path(distro)
            os.rename(final, stale)
        os.rename(scratch, final)
        _fsync_dir(family_dir)
        _fsync_dir(self.base_dir)
        try:
            _write_atomic(self._marker_path(distro), json.dumps(meta, indent=2).encode() + b"\n")
        except BaseException:
            os.rename(final, scratch)  # give it back to the caller's cleanup
            raise
        return stale

    # -- cleanup

    @defer.inlineCallbacks
    def _discard(self, path: str):
        """Remove a build or removed-image tree: settle processes, unmount, then rmtree.

        Never raises: a tree that cannot be removed is logged and left for recover().  rmtree is
        not run while anything is still mounted below, so it cannot wander into /proc or /sys.
        """
        self._live.add(path)
        try:
            killed = yield self._threads(settle_processes, path, self._proc_dir)
            if killed:
                self.log.warn("killed leftover processes {pids} in {path}", pids=killed, path=path)
            mountinfo = os.path.join(self._proc_dir, "self", "mountinfo")
            mounts = yield self._threads(mounts_under, path, mountinfo)
            if mounts:
                self.log.warn("unmounting {mounts} left under {path}", mounts=mounts, path=path)
                yield self._runner.run(["umount", "--recursive", "--lazy", *outermost(mounts)], check=False)
                left = yield self._threads(mounts_under, path, mountinfo)
                if left:
                    raise OSError(errno.EBUSY, f"still mounted: {', '.join(left)}")
            yield self._threads(_remove_tree, path)
        except Exception:
            self.log.failure("could not remove {path}; recover() will retry", path=path)
        finally:
            self._live.discard(path)

    def recover(self) -> defer.Deferred[None]:
        """Remove debris of builds, removals and commits interrupted by a crash (see module docs).

        Meant for start-up, but safe beside running builds: the scan runs in a thread and only
        reports; what it found is checked against live builds here, in the reactor thread.
        """
        d = self._threads(self._debris)
        d.addCallback(self._clear_debris)
        return d

    def _debris(self) -> list[tuple[str, str, str | None]]:
        """Scan for debris: (kind, path, distro) with kind "tree", "file" or "unmarked"."""
        found: list[tuple[str, str, str | None]] = []
        try:
            names = os.listdir(self.base_dir)
        except FileNotFoundError:
            return found
        for name in names:
            path = os.path.join(self.base_dir, name)
            if name.startswith(_BUILD_PREFIX):
                found.append(("tree" if _is_real_dir(path) else "file", path, None))
        for family in FAMILY_SCRIPTS:
            family_dir = os.path.join(self.base_dir, family)
            if not _is_real_dir(family_dir):
                continue
            for name in os.listdir(family_dir):
                path = os.path.join(family_dir, name)
                suite = name.split(".", 1)[0]
                if not _DISTRO.fullmatch(f"{family}:{suite}"):
                    continue  # not a name bolt would have made
                key = f"{family}:{suite}"
                if name.endswith(_MARKER_TMP_SUFFIX):
                    found.append(("file", path, key))
                elif name.endswith(_MARKER_SUFFIX) and not _is_real_dir(path[: -len(_MARKER_SUFFIX)]):
                    found.append(("file", path, key))
                elif name == suite and _is_real_dir(path) and not os.path.lexists(path + _MARKER_SUFFIX):
                    found.append(("unmarked", path, key))
        return found

    def _clear_debris(self, found: list[tuple[str, str, str | None]]) -> defer.Deferred[None]:
        trees = []
        for kind, path, key in found:
            if path in self._live or key in self._builds:
                continue
            self.log.info("removing leftover {path}", path=path)
            try:
                if kind == "file":
                    os.unlink(path)
                elif kind == "unmarked":
                    # Moved aside first, so a new build of this distro never meets it.
                    family, suite = key.split(":")
                    trees.append(self._scratch_path(Distro(family, suite)))
                    os.rename(path, trees[-1])
                else:
                    trees.append(path)
            except FileNotFoundError:
                pass
        done = defer.gatherResults([self._discard(p) for p in trees])
        return done.addCallback(lambda _: None)

    # -- removal and shutdown

    def remove(self, distro: str, in_use: bool) -> defer.Deferred[None]:
        """Delete a ready image.  Raises ImageBusy, ImageNotFound or ImageInUse at once.

        The marker goes first and the tree is renamed to a ``.build-*`` name before being deleted in
        a thread, so the image is gone the moment this returns and a crash leaves only debris.
        """
        parsed = parse_distro(distro)
        key = str(parsed)
        if key in self._builds:
            raise ImageBusy(f"{key} is being built")
        if self._ready(parsed) is None:
            raise ImageNotFound(f"no image for {key}")
        if in_use:
            raise ImageInUse(f"{key} is used by sandboxes")
        self._failed.pop(key, None)
        os.unlink(self._marker_path(parsed))
        aside = self._scratch_path(parsed)
        os.rename(self.image_path(parsed), aside)
        self.log.info("removing image {distro}", distro=key)
        return self._discard(aside)

    def stop(self) -> defer.Deferred[None]:
        """Cancel every build (killing debootstrap) and fire once their directories are cleaned up."""
        self._stopping = True
        builds = list(self._builds.values())
        for build in builds:  # all first: ending one build hands its slot to the next at once
            build.cancelled = True
        running = [b.deferred for b in builds if b.deferred is not None]
        for build in builds:
            if build.step is not None:
                build.step.cancel()
        done = defer.DeferredList(running, consumeErrors=True)
        done.addCallback(lambda _: None)
        return done

    close = stop
