"""Unit tests: the address pool and link names (pure), and the Network adapter's exact commands."""

from __future__ import annotations

import json

from twisted.trial import unittest

from bolt.host.network import Network
from bolt.host.process import ProcessFailed
from bolt.netplan import (
    LINK_PREFIX, AddressPool, PoolExhausted, check_link_prefix, link_id, link_name, parse_link_name,
)
from tests.fakes import Expect, FakeRunner


class RecordingRunner(FakeRunner):
    """A FakeRunner that also keeps what each command got on stdin."""

    def __init__(self) -> None:
        super().__init__()
        self.stdins: list[bytes | None] = []

    def run(self, argv, *, stdin=None, **kwargs):
        self.stdins.append(stdin)
        return super().run(argv, stdin=stdin, **kwargs)


class AddressPoolTests(unittest.TestCase):

    def test_gateway_and_first_addresses(self):
        pool = AddressPool("10.213.0.0/16")
        self.assertEqual(pool.gateway, "10.213.0.1")
        self.assertEqual([pool.allocate() for _ in range(3)], ["10.213.0.2", "10.213.0.3", "10.213.0.4"])
        self.assertEqual(pool.capacity, 65536 - 3)

    def test_never_hands_out_an_address_twice(self):
        pool = AddressPool("10.0.0.0/24")
        got = [pool.allocate() for _ in range(pool.capacity)]
        self.assertEqual(len(set(got)), 253)
        self.assertNotIn("10.0.0.0", got)
        self.assertNotIn("10.0.0.1", got)
        self.assertNotIn("10.0.0.255", got)
        self.assertEqual(pool.available, 0)
        with self.assertRaises(PoolExhausted):
            pool.allocate()

    def test_release_makes_an_address_available_again_but_late(self):
        pool = AddressPool("10.0.0.0/28")
        a = pool.allocate()
        b = pool.allocate()
        self.assertTrue(pool.release(a))
        self.assertFalse(pool.release(a))
        self.assertFalse(pool.is_allocated(a))
        # the freed address comes back only after the rest of the pool was handed out
        rest = [pool.allocate() for _ in range(pool.available - 1)]
        self.assertNotIn(a, rest)
        self.assertEqual(pool.allocate(), a)
        self.assertIn(b, pool.used)
        with self.assertRaises(PoolExhausted):
            pool.allocate()

    def test_rebuilt_from_used_addresses(self):
        pool = AddressPool("10.0.0.0/28", used=["10.0.0.2", "10.0.0.5", "10.0.0.3"])
        self.assertEqual(pool.used, frozenset({"10.0.0.2", "10.0.0.3", "10.0.0.5"}))
        got = {pool.allocate() for _ in range(pool.available)}
        self.assertEqual(got & {"10.0.0.2", "10.0.0.3", "10.0.0.5"}, set())
        self.assertEqual(len(got), 10)

    def test_rebuild_keeps_foreign_addresses_aside_and_refuses_duplicates(self):
        pool = AddressPool("10.0.0.0/28", used=["10.9.0.7", "10.0.0.1", "10.0.0.4"])
        self.assertEqual(pool.foreign, ("10.9.0.7", "10.0.0.1"))
        self.assertEqual(pool.used, frozenset({"10.0.0.4"}))
        with self.assertRaises(ValueError):
            AddressPool("10.0.0.0/28", used=["10.0.0.4", "10.0.0.4"])

    def test_claim(self):
        pool = AddressPool("10.0.0.0/28")
        pool.claim("10.0.0.9")
        self.assertTrue(pool.is_allocated("10.0.0.9"))
        for bad in ("10.0.0.9", "10.0.0.1", "10.0.0.0", "10.0.0.15", "10.0.1.2"):
            with self.assertRaises(ValueError):
                pool.claim(bad)

    def test_rejects_unusable_networks(self):
        for bad in ("10.0.0.0/29", "10.0.0.0/32", "10.0.0.1/24", "127.0.0.0/8", "224.0.0.0/24",
                    "169.254.0.0/16", "fd00::/64", "nonsense", "0.0.0.0/0"):
            with self.assertRaises(ValueError, msg=bad):
                AddressPool(bad)
        self.assertEqual(AddressPool("10.0.0.0/28").capacity, 13)


class LinkNameTests(unittest.TestCase):

    def test_link_id_is_stable_hex(self):
        self.assertEqual(link_id("web", "a"), link_id("web", "a"))
        self.assertNotEqual(link_id("web", "a"), link_id("web", "b"))
        self.assertRegex(link_id("web", "a"), r"^[0-9a-f]{8}$")

    def test_names(self):
        self.assertEqual(link_name("vb", "0123abcd"), "vb0123abcd")
        self.assertEqual(link_name(LINK_PREFIX, "0123abcd"), "bolt0123abcd")
        self.assertEqual(len(link_name("abcdefg", "0123abcd")), 15)
        for bad_prefix in ("", "abcdefgh", "1a", "V", "v-"):
            with self.assertRaises(ValueError):
                check_link_prefix(bad_prefix)
        for bad_id in ("0123abc", "0123abcde", "0123ABCD", "../../x"):
            with self.assertRaises(ValueError):
                link_name("vb", bad_id)
        self.assertEqual(parse_link_name("vb", "vb0123abcd"), "0123abcd")
        self.assertIsNone(parse_link_name("bolt", "vb0123abcd"))
        self.assertIsNone(parse_link_name("vb", "vb0123abc"))
        self.assertIsNone(parse_link_name("vb", "eth0"))
        self.assertIsNone(parse_link_name("vb", "vbx123abcd"))


class NetworkTests(unittest.TestCase):
    PID = 4242

    def setUp(self):
        self.runner = RecordingRunner()
        self.sysctls: list[tuple[str, str]] = []
        self.network = Network(self.runner, pool=AddressPool("10.213.0.0/16"),
                               sysctl=lambda k, v: self.sysctls.append((k, v)), ipv6=True)

    def expect_attach(self, fail_at: int | None = None):
        ns = ["nsenter", f"--net=/proc/{self.PID}/ns/net"]
        cmds = [
            Expect(["ip", "-batch", "-"]),
            Expect([*ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.conf.eth0.route_localnet=1"]),
            Expect([*ns, "ip", "-batch", "-"]),
        ]
        if fail_at is not None:
            cmds[fail_at].exit_code = 1
            cmds[fail_at].stderr = b"RTNETLINK answers: File exists"
            cmds = cmds[:fail_at + 1]
        self.runner.expect(*cmds)

    def test_setup_turns_on_forwarding_and_routes_the_pool(self):
        route = ["ip", "route", "replace", "unreachable", "10.213.0.0/16", "metric", "4294967295"]
        self.runner.expect(Expect(route), Expect(route))
        self.successResultOf(self.network.setup())
        self.successResultOf(self.network.setup())
        self.runner.assertDone()
        self.assertEqual(self.sysctls, [("net.ipv4.ip_forward", "1")] * 2)

    def test_teardown_removes_the_pool_route(self):
        route = ["ip", "route", "del", "unreachable", "10.213.0.0/16", "metric", "4294967295"]
        self.runner.expect(Expect(route), Expect(route, exit_code=2, stderr=b"RTNETLINK answers: No such process\n"),
                           Expect(route, exit_code=2, stderr=b"RTNETLINK answers: Operation not permitted\n"))
        self.successResultOf(self.network.teardown())
        self.successResultOf(self.network.teardown())
        self.failureResultOf(self.network.teardown(), ProcessFailed)

    def test_link_prefix(self):
        network = Network(self.runner, pool=AddressPool("10.213.0.0/16"), link_prefix="vb", ipv6=False)
        self.assertEqual(network.link_name("0123abcd"), "vb0123abcd")
        with self.assertRaises(ValueError):
            Network(self.runner, pool=AddressPool("10.213.0.0/16"), link_prefix="Bad")

    def test_attach(self):
        self.expect_attach()
        d = self.network.attach(self.PID, "0123abcd", "10.213.0.7")
        self.assertEqual(self.successResultOf(d), "bolt0123abcd")
        self.runner.assertDone()
        self.assertEqual(self.runner.stdins[0].decode(), (
            "link add bolt0123abcd type veth peer name eth0 netns 4242\n"
            "addr add 10.213.0.1/32 dev bolt0123abcd\n"
            "link set bolt0123abcd up\n"
            "route add 10.213.0.7/32 dev bolt0123abcd\n"))
        self.assertIsNone(self.runner.stdins[1])
        self.assertEqual(self.runner.stdins[2].decode(), (
            "link set lo up\n"
            "addr add 10.213.0.7/32 dev eth0\n"
            "link set eth0 up\n"
            "route add 10.213.0.1/32 dev eth0 scope link\n"
            "route add default via 10.213.0.1 dev eth0\n"))
        self.assertEqual(self.sysctls, [("net.ipv4.conf.bolt0123abcd.route_localnet", "1"),
                                        ("net.ipv6.conf.bolt0123abcd.disable_ipv6", "1")])

    def test_attach_without_ipv6(self):
        network = Network(self.runner, pool=AddressPool("10.213.0.0/16"),
                          sysctl=lambda k, v: self.sysctls.append((k, v)), ipv6=False)
        ns = ["nsenter", f"--net=/proc/{self.PID}/ns/net"]
        self.runner.expect(Expect(["ip", "-batch", "-"]),
                           Expect([*ns, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.route_localnet=1"]),
                           Expect([*ns, "ip", "-batch", "-"]))
        self.successResultOf(network.attach(self.PID, "0123abcd", "10.213.0.7"))
        self.assertEqual(self.sysctls, [("net.ipv4.conf.bolt0123abcd.route_localnet", "1")])

    def test_failed_host_batch_leaves_nothing_to_undo(self):
        self.expect_attach(fail_at=0)
        f = self.failureResultOf(self.network.attach(self.PID, "0123abcd", "10.213.0.7"), ProcessFailed)
        self.assertIn("File exists", str(f.value))
        self.runner.assertDone()
        self.assertEqual(self.sysctls, [])

    def test_failure_inside_deletes_the_link(self):
        for step in (1, 2):
            self.runner = RecordingRunner()
            self.network.runner = self.runner
            self.expect_attach(fail_at=step)
            self.runner.expect(Expect(["ip", "link", "del", "bolt0123abcd"]))
            self.failureResultOf(self.network.attach(self.PID, "0123abcd", "10.213.0.7"), ProcessFailed)
            self.runner.assertDone()

    def test_attach_validates_before_running_anything(self):
        for pid, ident, address in ((0, "0123abcd", "10.213.0.7"), ("1; rm", "0123abcd", "10.213.0.7"),
                                    (self.PID, "0123abc", "10.213.0.7"), (self.PID, "0123abcd", "10.213.0.1"),
                                    (self.PID, "0123abcd", "10.9.0.7"), (self.PID, "0123abcd", "x")):
            self.failureResultOf(self.network.attach(pid, ident, address), ValueError)
        self.assertEqual(self.runner.ran, [])

    def test_detach_is_idempotent(self):
        self.runner.expect(
            Expect(["ip", "link", "del", "bolt0123abcd"]),
            Expect(["ip", "link", "del", "bolt0123abcd"], exit_code=1, stderr=b'Cannot find device "bolt0123abcd"\n'),
            Expect(["ip", "link", "del", "bolt0123abcd"], exit_code=2, stderr=b"RTNETLINK answers: Operation not permitted\n"),
        )
        self.assertTrue(self.successResultOf(self.network.detach("0123abcd")))
        self.assertFalse(self.successResultOf(self.network.detach("0123abcd")))
        f = self.failureResultOf(self.network.detach("0123abcd"), ProcessFailed)
        self.assertIn("Operation not permitted", str(f.value))

    def test_detach_of_a_link_vanishing_under_it_counts_as_gone(self):
        # The kernel destroys a dead sandbox's netns (and its link) in the background.
        self.runner.expect(Expect(["ip", "link", "del", "bolt0123abcd"], exit_code=2,
                                  stderr=b"RTNETLINK answers: No such device\n"))
        self.assertFalse(self.successResultOf(self.network.detach("0123abcd")))

    def test_list_links(self):
        listing = [{"ifname": "bolt0123abcd"}, {"ifname": "veth9"}, {"ifname": "boltzz"}, {"ifname": "vb01234567"}, {"ifname": "boltffffffff"}]
        self.runner.expect(Expect(["ip", "-json", "link", "show", "type", "veth"],
                                  stdout=json.dumps(listing).encode()),
                           Expect(["ip", "-json", "link", "show", "type", "veth"], stdout=b""))
        self.assertEqual(self.successResultOf(self.network.list_links()), ["0123abcd", "ffffffff"])
        self.assertEqual(self.successResultOf(self.network.list_links()), [])
