"""Sandbox and image operations of the core (and their API routes) over fake host adapters."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest

from bolt.errors import Conflict, InvalidInput, NotFound, UpstreamFailed
from bolt.host.images import ImageBuildFailed
from tests.helpers import PASSWORD, World


class SandboxCore(unittest.TestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.manager = self.world.manager
        self.images = self.world.host.images
        self.rootfs = self.world.host.rootfs
        self.successResultOf(self.manager.create_project("proj"))

    def stored(self) -> dict:
        with open(f"{self.world.data_dir}/projects/proj.json") as f:
            return json.load(f)

    def test_create_uses_default_distro_and_persists(self):
        sandbox = self.successResultOf(self.manager.create_sandbox("proj", "box1"))
        self.assertEqual((sandbox.name, sandbox.distro, sandbox.state), ("box1", "debian:bookworm", "running"))
        self.assertEqual(self.rootfs.mounted[("proj", "box1")], "/images/debian/bookworm")
        stored = self.stored()["sandboxes"]
        self.assertEqual([s["name"] for s in stored], ["box1"])
        self.assertEqual(stored[0]["created_at"], sandbox.created_at)

    def test_bad_input_changes_nothing(self):
        for name, distro, error in [("Bad", None, InvalidInput), ("ok", "centos:7", InvalidInput),
                                    ("ok", "debian:../../etc", InvalidInput), ("ok", "debian:nosuch", InvalidInput),
                                    ("ok", 5, InvalidInput)]:
            self.failureResultOf(self.manager.create_sandbox("proj", name, distro), error)
        self.failureResultOf(self.manager.create_sandbox("nope", "ok"), NotFound)
        self.assertEqual(self.rootfs.mounted, {})
        self.assertEqual(self.stored()["sandboxes"], [])

    def test_duplicate_is_conflict(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        self.failureResultOf(self.manager.create_sandbox("proj", "box"), Conflict)

    def test_concurrent_create_of_same_name(self):
        d1 = self.manager.create_sandbox("proj", "box", "debian:trixie")  # waits for a build
        self.failureResultOf(self.manager.create_sandbox("proj", "box", "debian:trixie"), Conflict)
        self.images.finish_build("debian:trixie")
        self.assertEqual(self.successResultOf(d1).distro, "debian:trixie")

    def test_waits_for_build_then_creates(self):
        d = self.manager.create_sandbox("proj", "box", "ubuntu:noble")
        self.assertNoResult(d)
        self.assertEqual(self.manager.list_sandboxes("proj"), [])
        self.images.finish_build("ubuntu:noble")
        self.assertEqual(self.successResultOf(d).distro, "ubuntu:noble")

    def test_build_failure_is_upstream_error_and_leaves_nothing(self):
        d = self.manager.create_sandbox("proj", "box", "ubuntu:jammy")
        self.images.finish_build("ubuntu:jammy", ImageBuildFailed("ubuntu:jammy", "exit code 1", ["E: no mirror"]))
        failure = self.failureResultOf(d, UpstreamFailed)
        self.assertIn("E: no mirror", str(failure.value))
        self.assertEqual(self.rootfs.mounted, {})
        self.assertEqual(self.stored()["sandboxes"], [])
        self.successResultOf(self.manager.create_sandbox("proj", "box"))  # the name is free again

    def test_mount_failure_rolls_back(self):
        self.rootfs.fail_create = RuntimeError("mount: permission denied")
        self.failureResultOf(self.manager.create_sandbox("proj", "box"), RuntimeError)
        self.assertEqual(self.manager.list_sandboxes("proj"), [])
        self.assertEqual(self.stored()["sandboxes"], [])

    def test_save_failure_undoes_the_mount(self):
        original = self.world.store.save
        self.world.store.save = lambda project: defer.fail(OSError(28, "No space left on device"))
        self.failureResultOf(self.manager.create_sandbox("proj", "box"), OSError)
        self.world.store.save = original
        self.assertEqual(self.rootfs.mounted, {})
        self.assertEqual(self.rootfs.destroyed, [("proj", "box")])
        self.assertEqual(self.manager.list_sandboxes("proj"), [])

    def test_delete(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        self.successResultOf(self.manager.delete_sandbox("proj", "box"))
        self.assertEqual(self.rootfs.destroyed, [("proj", "box")])
        self.assertEqual(self.stored()["sandboxes"], [])
        self.failureResultOf(self.manager.delete_sandbox("proj", "box"), NotFound)

    def test_failed_teardown_keeps_a_deleting_record_finished_at_next_start(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        self.rootfs.fail_destroy = RuntimeError("umount: target is busy")
        self.failureResultOf(self.manager.delete_sandbox("proj", "box"), RuntimeError)
        self.assertEqual(self.stored()["sandboxes"][0]["state"], "deleting")
        self.failureResultOf(self.manager.create_sandbox("proj", "box"), Conflict)
        self.rootfs.fail_destroy = None
        restarted = self.world.new_manager()
        self.successResultOf(restarted.start())
        self.assertEqual(self.stored()["sandboxes"], [])
        self.assertEqual(self.rootfs.mounted, {})

    def test_project_delete_needs_force_when_it_has_sandboxes(self):
        self.successResultOf(self.manager.create_sandbox("proj", "a"))
        self.successResultOf(self.manager.create_sandbox("proj", "b"))
        self.failureResultOf(self.manager.delete_project("proj"), Conflict)
        self.successResultOf(self.manager.delete_project("proj", force=True))
        self.assertEqual(sorted(self.rootfs.destroyed), [("proj", "a"), ("proj", "b")])
        self.assertEqual(self.manager.list_projects(), [])

    def test_project_delete_refused_while_a_create_waits(self):
        d = self.manager.create_sandbox("proj", "box", "debian:trixie")
        self.failureResultOf(self.manager.delete_project("proj", force=True), Conflict)
        self.images.finish_build("debian:trixie")
        self.successResultOf(d)

    def test_start_remounts_and_removes_strays(self):
        self.successResultOf(self.manager.create_sandbox("proj", "keep"))
        self.rootfs.mounted.clear()  # a reboot: no mounts, no processes
        self.world.host.runtime.live.clear()
        self.rootfs.mounted[("proj", "ghost")] = "/images/x"  # a create that crashed half-way
        self.rootfs.on_disk.add(("other", "orphan"))
        self.successResultOf(self.world.new_manager().start())
        self.assertEqual(self.rootfs.mounted, {("proj", "keep"): "/images/debian/bookworm"})
        self.assertEqual(self.rootfs.on_disk, {("proj", "keep")})

    def test_image_in_use_cannot_be_deleted(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        self.failureResultOf(self.manager.delete_image("debian:bookworm"), Conflict)
        self.successResultOf(self.manager.delete_sandbox("proj", "box"))
        self.successResultOf(self.manager.delete_image("debian:bookworm"))
        self.assertEqual(self.images.removed, ["debian:bookworm"])
        self.failureResultOf(self.manager.delete_image("debian:bookworm"), NotFound)


class RuntimeCore(unittest.TestCase):
    """Start, stop, exec, adoption and limits over the fake runtime and cgroups."""

    def setUp(self) -> None:
        self.world = World(self)
        self.manager = self.world.manager
        self.runtime = self.world.host.runtime
        self.cgroups = self.world.host.cgroups
        self.successResultOf(self.manager.create_project("proj"))

    def test_create_starts_pid_1_in_the_sandbox_cgroup(self):
        sandbox = self.successResultOf(self.manager.create_sandbox("proj", "box"))
        self.assertEqual(self.runtime.started, [("/data/sandboxes/proj/box/rootfs", "box",
                                                 ["/fake/cgroup/proj/box/cgroup.procs"])])
        self.assertEqual(sandbox.runtime, {"pid": 1001, "start_time": 77})
        self.assertIn("box", self.cgroups.sandboxes["proj"])
        self.assertEqual(self.cgroups.projects["proj"].pids_max, 1024)

    def test_start_failure_rolls_back_everything(self):
        self.runtime.fail_start = RuntimeError("pivot_root: invalid argument")
        self.failureResultOf(self.manager.create_sandbox("proj", "box"), RuntimeError)
        self.assertEqual(self.world.host.rootfs.mounted, {})
        self.assertEqual(self.cgroups.sandboxes["proj"], set())
        self.assertEqual(self.manager.list_sandboxes("proj"), [])

    def test_stop_then_start(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        stopped = self.successResultOf(self.manager.stop_sandbox("proj", "box"))
        self.assertEqual((stopped.state, stopped.runtime), ("stopped", {}))
        self.assertEqual(self.runtime.stopped, [1001])
        self.assertEqual(self.cgroups.sandboxes["proj"], set())
        self.failureResultOf(self.manager.exec("proj", "box", {"command": ["true"]}), Conflict)
        started = self.successResultOf(self.manager.start_sandbox("proj", "box"))
        self.assertEqual((started.state, started.runtime["pid"]), ("running", 1002))
        restarted = self.world.new_manager()
        self.assertEqual(restarted.get_sandbox("proj", "box")[1].runtime["pid"], 1002)

    def test_stop_hangs_up_open_shells_first(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        self.manager.shell_listen = lambda port, ticket: (lambda: None)
        ticket = self.manager.shells.issue("proj", "box", self.manager.shell_listen)[1]
        kept = self.successResultOf(self.manager.attach_shell(ticket, "xterm", 24, 80, "127.0.0.1"))
        closed = self.successResultOf(self.manager.attach_shell(ticket, "xterm", 24, 80, "127.0.0.1"))
        closed.hangup()
        self.manager.shell_closed(ticket, "127.0.0.1", 0, 0)
        self.assertEqual(self.manager.shells.sessions(("proj", "box")), 1)
        self.successResultOf(self.manager.stop_sandbox("proj", "box"))
        self.assertTrue(kept.hung_up)

    def test_exec_passes_the_request_through(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        result = self.successResultOf(self.manager.exec("proj", "box", {
            "command": "echo hi", "timeout": 5, "stdin": "x", "env": {"A": "1"}, "cwd": "/tmp"}))
        self.assertEqual(result["stdout"], "ok\n")
        call = self.runtime.execs[0]
        self.assertEqual((call["pid"], call["argv"], call["timeout"], call["stdin"], call["env"], call["cwd"]),
                         (1001, "echo hi", 5.0, b"x", {"A": "1"}, "/tmp"))
        self.assertEqual(call["cgroup_procs"], ["/fake/cgroup/proj/box/cgroup.procs"])

    def test_bad_exec_requests(self):
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        for body in [{}, {"command": []}, {"command": [""]}, {"command": "  "}, {"command": ["a\0b"]},
                     {"command": "x", "timeout": 0}, {"command": "x", "timeout": 3601}, {"command": "x", "timeout": True},
                     {"command": "x", "env": {"1A": "x"}}, {"command": "x", "cwd": "relative"},
                     {"command": "x", "user": "root"}, {"command": 5}]:
            self.failureResultOf(self.manager.exec("proj", "box", body), InvalidInput)
        self.assertEqual(self.runtime.execs, [])

    def test_restart_adopts_a_live_sandbox_and_reboots_a_dead_one(self):
        self.successResultOf(self.manager.create_sandbox("proj", "alive"))
        self.successResultOf(self.manager.create_sandbox("proj", "dead"))
        self.successResultOf(self.manager.create_sandbox("proj", "off"))
        self.successResultOf(self.manager.stop_sandbox("proj", "off"))
        del self.runtime.live[1002]  # "dead"'s pid 1 vanished (a reboot, an OOM kill)
        self.runtime.started.clear()
        restarted = self.world.new_manager()
        self.successResultOf(restarted.start())
        self.assertEqual([s[1] for s in self.runtime.started], ["dead"])
        self.assertEqual(restarted.get_sandbox("proj", "alive")[1].runtime["pid"], 1001)
        self.assertEqual(restarted.get_sandbox("proj", "off")[1].state, "stopped")
        self.assertEqual(self.world.new_manager().get_sandbox("proj", "dead")[1].runtime["pid"], 1004)

    def test_limits_apply_to_the_project_cgroup(self):
        self.successResultOf(self.manager.set_limits("proj", {"cpu_quota_us": 20000, "pids_max": 64}))
        limits = self.cgroups.projects["proj"]
        self.assertEqual((limits.cpu_quota_us, limits.memory_limit_bytes, limits.pids_max), (20000, 536870912, 64))

    def test_limits_the_kernel_refuses_change_nothing(self):
        from bolt.host.cgroups import CgroupError
        self.cgroups.refuse_limits = CgroupError("memory.limit_in_bytes: EBUSY")
        self.failureResultOf(self.manager.set_limits("proj", {"memory_limit_bytes": 16 * 1024 * 1024}), Conflict)
        self.assertEqual(self.manager.get_project("proj").resource_limits.memory_limit_bytes, 536870912)

    def test_stray_cgroups_are_removed_at_start(self):
        self.cgroups.ensure_project("ghost", None)
        self.cgroups.ensure_sandbox("ghost", "box")
        self.cgroups.ensure_sandbox("proj", "orphan")
        self.successResultOf(self.world.new_manager().start())
        self.assertNotIn("ghost", self.cgroups.sandboxes)
        self.assertEqual(self.cgroups.sandboxes["proj"], set())
        self.assertEqual(sorted(self.cgroups.killed), [("ghost", "box"), ("proj", "orphan")])


class NetworkCore(unittest.TestCase):
    """Addresses, links and forwards over the fake network and firewall."""

    def setUp(self) -> None:
        self.world = World(self)
        self.manager = self.world.manager
        self.network = self.world.host.network
        self.firewall = self.world.host.firewall
        self.successResultOf(self.manager.create_project("web"))
        self.successResultOf(self.manager.create_project("ops"))
        self.a = self.successResultOf(self.manager.create_sandbox("web", "a"))
        self.b = self.successResultOf(self.manager.create_sandbox("ops", "b"))

    def test_each_sandbox_gets_its_own_address_and_link(self):
        self.assertEqual((self.a.network["address"], self.b.network["address"]), ("10.213.0.2", "10.213.0.3"))
        self.assertEqual(self.network.links[self.a.network["link"]], (1001, "10.213.0.2"))
        self.assertEqual(sorted(self.firewall.sandboxes), [("ops", "b"), ("web", "a")])
        self.assertEqual(self.firewall.inside[1001].address, "10.213.0.2")

    def test_addresses_persist_and_are_never_handed_out_twice(self):
        restarted = self.world.new_manager()
        self.assertTrue(restarted.pool.is_allocated("10.213.0.2"))
        self.successResultOf(restarted.create_project("more"))
        c = self.successResultOf(restarted.create_sandbox("more", "c"))
        self.assertEqual(c.network["address"], "10.213.0.4")

    def test_delete_releases_address_rules_and_link(self):
        link = self.a.network["link"]
        self.successResultOf(self.manager.delete_sandbox("web", "a"))
        self.assertNotIn(link, self.network.links)
        self.assertNotIn(("web", "a"), self.firewall.sandboxes)
        self.assertFalse(self.manager.pool.is_allocated("10.213.0.2"))

    def test_stop_detaches_the_link_but_keeps_address_and_forwards(self):
        self.successResultOf(self.manager.add_forward("web", "a", {"host_port": 10001, "container_port": 80}))
        self.successResultOf(self.manager.stop_sandbox("web", "a"))
        self.assertNotIn(self.a.network["link"], self.network.links)
        self.assertEqual(self.firewall.sandboxes[("web", "a")].forwards[0].host_port, 10001)
        started = self.successResultOf(self.manager.start_sandbox("web", "a"))
        self.assertEqual(self.network.links[self.a.network["link"]], (started.runtime["pid"], "10.213.0.2"))

    def test_forward_rules_and_status_shape(self):
        result = self.successResultOf(self.manager.add_forward("web", "a", {"host_port": 10001, "container_port": 80}))
        self.assertEqual(result, {"port_mappings": {"10001": 80}, "reverse_port_mappings": {}})
        self.successResultOf(self.manager.add_reverse_forward("web", "a", {"container_port": 8080, "host_port": 10002}))
        sb = self.firewall.sandboxes[("web", "a")]
        self.assertEqual([(f.host_port, f.container_port) for f in sb.forwards], [(10001, 80)])
        self.assertEqual([(r.container_port, r.host_port) for r in sb.reverse_forwards], [(8080, 10002)])
        self.assertEqual(self.firewall.inside[1001].reverse_forwards, sb.reverse_forwards)
        status = self.successResultOf(self.manager.status())
        web = [p for p in status["projects"] if p["name"] == "web"][0]
        self.assertEqual(web["sandboxes"][0]["port_mappings"], {"10001": 80})
        self.assertEqual(web["sandboxes"][0]["reverse_port_mappings"], {"8080": 10002})
        stored = self.world.new_manager().get_sandbox("web", "a")[1]
        self.assertEqual((stored.port_mappings, stored.reverse_port_mappings), ({10001: 80}, {8080: 10002}))

    def test_forward_rules_of_the_input(self):
        bad = [({"host_port": 80, "container_port": 80}, InvalidInput),        # outside allowed_ports
               ({"host_port": "10001", "container_port": 80}, InvalidInput),
               ({"host_port": 10001, "container_port": 0}, InvalidInput),
               ({"host_port": 10001, "container_port": 65536}, InvalidInput),
               ({"host_port": 10001}, InvalidInput),
               ({"host_port": 10001, "container_port": 80, "proto": "udp"}, InvalidInput),
               ({"host_port": True, "container_port": 80}, InvalidInput)]
        for body, error in bad:
            self.failureResultOf(self.manager.add_forward("web", "a", body), error)
        self.successResultOf(self.manager.add_forward("web", "a", {"host_port": 10001, "container_port": 80}))
        self.failureResultOf(self.manager.add_forward("ops", "b", {"host_port": 10001, "container_port": 22}), Conflict)
        self.world.busy_ports.add(10005)
        self.failureResultOf(self.manager.add_forward("web", "a", {"host_port": 10005, "container_port": 80}), Conflict)
        self.failureResultOf(self.manager.remove_forward("web", "a", "10002"), NotFound)
        self.failureResultOf(self.manager.remove_forward("web", "a", "ten"), InvalidInput)
        self.assertEqual(self.manager.get_sandbox("web", "a")[1].port_mappings, {10001: 80})

    def test_reverse_forward_rules_of_the_input(self):
        self.failureResultOf(self.manager.add_reverse_forward("web", "a", {"container_port": 8080, "host_port": 5000}),
                             InvalidInput)
        self.successResultOf(self.manager.add_reverse_forward("web", "a", {"container_port": 8080, "host_port": 10002}))
        self.failureResultOf(self.manager.add_reverse_forward("web", "a", {"container_port": 8080, "host_port": 10003}),
                             Conflict)
        self.successResultOf(self.manager.remove_reverse_forward("web", "a", "8080"))
        self.assertEqual(self.firewall.sandboxes[("web", "a")].reverse_forwards, ())
        self.failureResultOf(self.manager.remove_reverse_forward("web", "a", "8080"), NotFound)

    def test_a_firewall_failure_changes_nothing(self):
        self.firewall.fail_next = RuntimeError("iptables-restore: line 3 failed")
        self.failureResultOf(self.manager.add_forward("web", "a", {"host_port": 10001, "container_port": 80}),
                             RuntimeError)
        self.assertEqual(self.manager.get_sandbox("web", "a")[1].port_mappings, {})
        # The record was written beside the rules; it is written again without the forward.
        self.assertEqual(self.world.new_manager().get_sandbox("web", "a")[1].port_mappings, {})

    def test_a_failed_save_of_a_forward_removes_its_rules(self):
        real_save = self.world.store.save
        self.world.store.save = lambda project: defer.fail(OSError(28, "No space left on device"))
        self.failureResultOf(self.manager.add_forward("web", "a", {"host_port": 10001, "container_port": 80}),
                             OSError)
        self.world.store.save = real_save
        self.assertEqual(self.manager.get_sandbox("web", "a")[1].port_mappings, {})
        self.assertEqual(self.firewall.sandboxes[("web", "a")].forwards, ())
        self.successResultOf(self.manager.add_forward("web", "a", {"host_port": 10001, "container_port": 80}))

    def test_restart_rebuilds_rules_and_removes_stray_links(self):
        self.successResultOf(self.manager.add_forward("web", "a", {"host_port": 10001, "container_port": 80}))
        self.network.links["deadbeef"] = (4242, "10.213.9.9")  # a link nobody owns
        self.firewall.sandboxes.clear()                        # iptables -F, or a reboot
        restarted = self.world.new_manager()
        self.successResultOf(restarted.start())
        self.assertNotIn("deadbeef", self.network.links)
        self.assertEqual(self.firewall.sandboxes[("web", "a")].forwards[0].host_port, 10001)
        self.assertIn(("ops", "b"), self.firewall.sandboxes)

    def test_attach_failure_rolls_the_create_back(self):
        self.network.fail_attach = RuntimeError("RTNETLINK answers: File exists")
        self.failureResultOf(self.manager.create_sandbox("web", "c"), RuntimeError)
        self.assertNotIn(("web", "c"), self.firewall.sandboxes)
        self.assertFalse(self.manager.pool.is_allocated("10.213.0.4"))
        self.assertEqual([s.name for s in self.manager.list_sandboxes("web")], ["a"])


class SandboxRoutes(unittest.TestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.http = StubTreq(self.world.api.resource())

    @defer.inlineCallbacks
    def call(self, method, path, body=None):
        response = yield self.http.request(method, "https://bolt.test" + path, auth=("admin", PASSWORD),
                                           data=json.dumps(body).encode() if body is not None else None)
        return response.code, json.loads((yield response.content()))

    @defer.inlineCallbacks
    def test_sandbox_routes_and_status_shape(self):
        yield self.call("POST", "/api/projects", {"name": "project1"})
        code, created = yield self.call("POST", "/api/projects/project1/sandboxes", {"name": "sandbox1"})
        self.assertEqual(code, 201)
        self.assertEqual(created, {"project": "project1", "name": "sandbox1", "distro": "debian:bookworm",
                                   "created_at": created["created_at"], "state": "running",
                                   "port_mappings": {}, "reverse_port_mappings": {}, "pid": 1001,
                                   "address": "10.213.0.2", "gateway": "10.213.0.1"})
        code, listed = yield self.call("GET", "/api/projects/project1/sandboxes")
        self.assertEqual((code, listed), (200, [created]))
        code, one = yield self.call("GET", "/api/projects/project1/sandboxes/sandbox1")
        self.assertEqual((code, one), (200, created))
        code, status = yield self.call("GET", "/api/status")
        self.assertEqual(status["projects"][0]["sandboxes"], [{
            "name": "sandbox1", "distro": "debian:bookworm", "created_at": created["created_at"],
            "port_mappings": {}, "reverse_port_mappings": {}}])
        code, _ = yield self.call("POST", "/api/projects/project1/sandboxes", {"name": "sandbox1"})
        self.assertEqual(code, 409)
        code, _ = yield self.call("DELETE", "/api/projects/project1")
        self.assertEqual(code, 409)
        code, body = yield self.call("DELETE", "/api/projects/project1/sandboxes/sandbox1")
        self.assertEqual((code, body), (200, {"deleted": "sandbox1"}))
        code, _ = yield self.call("GET", "/api/projects/project1/sandboxes/sandbox1")
        self.assertEqual(code, 404)
        code, _ = yield self.call("GET", "/api/projects/nope/sandboxes")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_bad_sandbox_requests(self):
        yield self.call("POST", "/api/projects", {"name": "p"})
        for body in [{"name": "UPPER"}, {"distro": "debian:bookworm"}, {"name": "a", "distro": "arch:latest"},
                     {"name": "a", "colour": 1}]:
            code, answer = yield self.call("POST", "/api/projects/p/sandboxes", body)
            self.assertEqual(code, 400, body)
        code, answer = yield self.call("POST", "/api/projects/p/sandboxes", {"name": "a", "distro": "fedora:40"})
        self.assertIn('"debian:<suite>" or "ubuntu:<suite>"', answer["error"])

    @defer.inlineCallbacks
    def test_image_routes(self):
        code, images = yield self.call("GET", "/api/images")
        self.assertEqual(code, 200)
        self.assertEqual([i["distro"] for i in images], ["debian:bookworm"])
        self.assertEqual(images[0]["state"], "ready")
        code, info = yield self.call("POST", "/api/images", {"distro": "ubuntu:noble"})
        self.assertEqual((code, info["state"]), (202, "building"))
        code, info = yield self.call("GET", "/api/images/ubuntu:noble")
        self.assertEqual((code, info["stage"]), (200, "Retrieving Release"))
        code, _ = yield self.call("GET", "/api/images/ubuntu:lunar")
        self.assertEqual(code, 404)
        code, _ = yield self.call("POST", "/api/images", {"distro": "debian"})
        self.assertEqual(code, 400)
        code, _ = yield self.call("DELETE", "/api/images/debian:bookworm")
        self.assertEqual(code, 200)
        code, _ = yield self.call("DELETE", "/api/images/debian:bookworm")
        self.assertEqual(code, 404)
