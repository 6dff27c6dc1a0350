"""Shared helpers for integration tests.

The debootstrapped test image is expensive (a download and ~30 s of dpkg), so it lives in a cache
directory outside the test run, is built once when absent, and is reused by every later test and run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from unittest import SkipTest

from twisted.internet import defer, threads

from bolt.host.images import ImageStore
from bolt.host.process import DEFAULT_ENV, ReactorRunner

TEST_DISTRO = "debian:bookworm"
DEFAULT_IMAGE_CACHE = "/var/cache/bolt-tests/base_images"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip(testcase, reason: str) -> None:
    """Skip, except in CI, where integration tests must run: there a missing requirement is a failure."""
    if in_ci():
        testcase.fail(f"{reason} (CI=true: integration tests must not be skipped)")
    raise SkipTest(reason)


def require_root(testcase) -> None:
    """Skip when not root (fail instead in CI)."""
    if os.geteuid() != 0:
        _skip(testcase, "integration test needs root (debootstrap, mount, namespaces)")


def require_tools(testcase, *tools: str) -> None:
    """Skip (fail in CI) unless every tool is on the PATH that commands run with."""
    missing = [t for t in tools if shutil.which(t, path=DEFAULT_ENV["PATH"]) is None]
    if missing:
        _skip(testcase, f"integration test needs {', '.join(missing)}")


def cached_image_root() -> str:
    """Where the shared test base images live (BOLT_TEST_IMAGE_CACHE overrides the default)."""
    return os.environ.get("BOLT_TEST_IMAGE_CACHE") or DEFAULT_IMAGE_CACHE


def image_store(reactor, base_dir: str | None = None, **options) -> ImageStore:
    """A real ImageStore (ReactorRunner, the reactor's thread pool) over base_dir or the cache."""
    return ImageStore(base_dir or cached_image_root(), ReactorRunner(reactor), reactor, **options)


def _lock(path: str) -> int:
    """Block until this process holds an exclusive lock on ``path`` (run in a thread)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@defer.inlineCallbacks
def _build_test_image(reactor):
    # Test runs in other processes (trial -j, a second checkout) share the cache: the lock keeps one
    # run's recover() from deleting another run's build in progress.
    root = cached_image_root()
    fd = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), _lock, root.rstrip("/") + ".lock")
    try:
        store = image_store(reactor, root)
        yield store.recover()
        path = yield store.ensure(TEST_DISTRO)
    finally:
        os.close(fd)
    return path


_started = False
_outcome: list = []  # [path or Failure] once the shared build has ended
_pending: list[defer.Deferred] = []


def ensure_test_image(reactor) -> defer.Deferred:
    """Fire with the path of the cached debian:bookworm image, building it at most once per run.

    Every caller gets its own Deferred (so one test's callbacks or cancellation never touch
    another's); a failed build is remembered and reported to later callers too, rather than retried.
    """
    global _started
    mine: defer.Deferred = defer.Deferred()
    if _outcome:
        _deliver(mine)
        return mine
    _pending.append(mine)
    if not _started:
        _started = True
        _build_test_image(reactor).addBoth(_finished)
    return mine


def _finished(outcome) -> None:
    _outcome.append(outcome)
    while _pending:
        _deliver(_pending.pop(0))


def _deliver(d: defer.Deferred) -> None:
    if not d.called:  # a caller may have cancelled (timed out) meanwhile
        (d.errback if isinstance(_outcome[0], defer.Failure) else d.callback)(_outcome[0])
