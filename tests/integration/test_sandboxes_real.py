"""Sandboxes for real, through the real server: overlay mounts over the cached debootstrap image."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.integration.server import RealServer
from tests.integration.support import cached_image_root, ensure_test_image, require_root, require_tools


def mounts() -> list[tuple[str, str, str]]:
    with open("/proc/self/mounts") as f:
        return [tuple(line.split()[1:4]) for line in f]


def overlay_at(path: str) -> str | None:
    """The options of the overlay mounted at ``path``, or None."""
    for point, fstype, options in mounts():
        if point == path and fstype == "overlay":
            return options
    return None


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` is gone or a zombie (whoever reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} still running")


class SandboxLifecycle(unittest.TestCase):
    timeout = 900

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "debootstrap", "mount", "umount")
        self.image = yield ensure_test_image(reactor)
        self.server = RealServer(config={"base_image_dir": cached_image_root()})
        self.addCleanup(self.server.cleanup)
        self.addCleanup(self._unmount_leftovers)
        self.server.start()
        code, _ = self.server.api("POST", "/api/projects", {"name": "proj"})
        self.assertEqual(code, 201)

    def _unmount_leftovers(self) -> None:
        for point, _, _ in reversed(mounts()):
            if point.startswith(self.server.root):
                subprocess.run(["umount", "--lazy", point], check=False)

    def rootfs(self, name: str) -> str:
        return os.path.join(self.server.data_dir, "sandboxes", "proj", name, "rootfs")

    def test_create_mounts_an_overlay_over_the_shared_image_and_delete_removes_it(self):
        code, body = self.server.api("POST", "/api/projects/proj/sandboxes", {"name": "box"})
        self.assertEqual(code, 201, body)
        self.assertEqual((body["name"], body["distro"], body["state"]), ("box", "debian:bookworm", "running"))
        options = overlay_at(self.rootfs("box"))
        self.assertIsNotNone(options, "no overlay mounted at the sandbox's rootfs")
        self.assertIn("lowerdir=lower,upperdir=upper,workdir=work", options)
        self.assertEqual(os.readlink(os.path.join(os.path.dirname(self.rootfs("box")), "lower")), self.image)
        with open(os.path.join(self.rootfs("box"), "etc", "debian_version")) as f:
            self.assertTrue(f.read().startswith("12"))
        # Writes land in the sandbox's own upper layer, never in the shared image.
        with open(os.path.join(self.rootfs("box"), "root", "note.txt"), "w") as f:
            f.write("mine")
        upper = os.path.join(self.server.data_dir, "sandboxes", "proj", "box", "upper")
        self.assertTrue(os.path.exists(os.path.join(upper, "root", "note.txt")))
        self.assertFalse(os.path.exists(os.path.join(self.image, "root", "note.txt")))
        code, listed = self.server.api("GET", "/api/projects/proj/sandboxes")
        self.assertEqual([s["name"] for s in listed], ["box"])

        code, body = self.server.api("DELETE", "/api/projects/proj/sandboxes/box")
        self.assertEqual((code, body), (200, {"deleted": "box"}))
        self.assertIsNone(overlay_at(self.rootfs("box")))
        self.assertFalse(os.path.exists(os.path.join(self.server.data_dir, "sandboxes", "proj")))
        self.assertTrue(os.path.exists(os.path.join(self.image, "etc", "debian_version")))

    def test_delete_never_follows_a_sandboxs_symlink_to_the_host(self):
        decoy = tempfile.mkdtemp(prefix="bolt-decoy-")
        self.addCleanup(shutil.rmtree, decoy, True)
        with open(os.path.join(decoy, "canary"), "w") as f:
            f.write("alive")
        self.assertEqual(self.server.api("POST", "/api/projects/proj/sandboxes", {"name": "evil"})[0], 201)
        root = self.rootfs("evil")
        shutil.rmtree(os.path.join(root, "etc"))
        os.symlink(decoy, os.path.join(root, "etc"))              # /etc -> a host directory
        os.symlink(os.path.join(decoy, "canary"), os.path.join(root, "root", "link"))
        code, _ = self.server.api("DELETE", "/api/projects/proj/sandboxes/evil")
        self.assertEqual(code, 200)
        self.assertEqual(os.listdir(decoy), ["canary"])
        with open(os.path.join(decoy, "canary")) as f:
            self.assertEqual(f.read(), "alive")
        self.assertFalse(os.path.exists(os.path.join(self.server.data_dir, "sandboxes", "proj", "evil")))

    def test_restart_remounts_stored_sandboxes_and_removes_strays(self):
        code, keep = self.server.api("POST", "/api/projects/proj/sandboxes", {"name": "keep"})
        self.assertEqual(code, 201)
        with open(os.path.join(self.rootfs("keep"), "root", "kept"), "w") as f:
            f.write("still here")
        self.server.kill()
        # As after a reboot: the sandbox's processes and the host's mount are gone.
        os.kill(keep["pid"], signal.SIGKILL)
        wait_gone(keep["pid"])
        subprocess.run(["umount", self.rootfs("keep")], check=True)
        # What a create interrupted by a crash could leave: a mounted overlay nobody stored.
        ghost = os.path.join(self.server.data_dir, "sandboxes", "proj", "ghost")
        for sub in ("upper", "work", "rootfs"):
            os.makedirs(os.path.join(ghost, sub))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.image},upperdir={ghost}/upper,workdir={ghost}/work",
                        f"{ghost}/rootfs"], check=True)
        self.server.start()
        self.assertIsNotNone(overlay_at(self.rootfs("keep")))
        with open(os.path.join(self.rootfs("keep"), "root", "kept")) as f:
            self.assertEqual(f.read(), "still here")
        self.assertIsNone(overlay_at(f"{ghost}/rootfs"), self.server.log()[-3000:])
        code, again = self.server.api("GET", "/api/projects/proj/sandboxes/keep")
        self.assertEqual(again["state"], "running")
        self.assertNotEqual(again["pid"], keep["pid"])  # started again: its pid 1 was gone
        self.assertFalse(os.path.exists(ghost))
        code, listed = self.server.api("GET", "/api/projects/proj/sandboxes")
        self.assertEqual([s["name"] for s in listed], ["keep"])
        self.assertEqual(self.server.api("DELETE", "/api/projects/proj?force=1")[0], 200)
        self.assertIsNone(overlay_at(self.rootfs("keep")))

    def test_images_endpoint_shows_the_ready_image(self):
        code, images = self.server.api("GET", "/api/images")
        self.assertEqual(code, 200)
        ready = [i for i in images if i["distro"] == "debian:bookworm"]
        self.assertEqual(ready[0]["state"], "ready")
        self.assertGreater(ready[0]["size_bytes"], 50_000_000)
        code, one = self.server.api("GET", "/api/images/debian:bookworm")
        self.assertEqual((code, one["state"]), (200, "ready"))
        self.server.api("POST", "/api/projects/proj/sandboxes", {"name": "user"})
        code, body = self.server.api("DELETE", "/api/images/debian:bookworm")
        self.assertEqual(code, 409)
        self.assertIn("used by sandboxes", body["error"])
        self.server.api("DELETE", "/api/projects/proj/sandboxes/user")


class BuildFailure(unittest.TestCase):
    """A build that fails (a mirror that refuses connections) answers 502 and leaves nothing."""

    timeout = 300

    def setUp(self):
        require_root(self)
        require_tools(self, "debootstrap")
        self.server = RealServer(config={"image_mirror": "http://127.0.0.1:9/debian"})
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def test_sandbox_create_fails_with_502_and_nothing_is_left(self):
        self.server.api("POST", "/api/projects", {"name": "proj"})
        code, body = self.server.api("POST", "/api/projects/proj/sandboxes", {"name": "box"})
        self.assertEqual(code, 502)
        self.assertIn("127.0.0.1:9", body["error"])
        self.assertEqual(self.server.api("GET", "/api/projects/proj/sandboxes"), (200, []))
        self.assertEqual(os.listdir(os.path.join(self.server.data_dir, "sandboxes")), [])
        base = os.path.join(self.server.data_dir, "base_images")
        self.assertEqual([e for e in os.listdir(base) if e.startswith(".build")] if os.path.isdir(base) else [], [])
        code, info = self.server.api("GET", "/api/images/debian:bookworm")
        self.assertEqual((code, info["state"]), (200, "failed"))
        self.assertIn("127.0.0.1:9", info["error"])
        code, _ = self.server.api("POST", "/api/projects/proj/sandboxes", {"name": "x", "distro": "debian:nosuchsuite"})
        self.assertEqual(code, 400)
