"""Property tests (hypothesis) of every validator and parser that sees user or file input.

Each property has two halves: the function never raises anything but its documented error type,
whatever it is given (any JSON value, any text, any bytes); and what it accepts satisfies the
documented rule, checked against an oracle written here from the rule's words, not from the code.

:class:`APIProperties` does the same for the whole HTTP API (StubTreq over tests.helpers.World: the
real Klein app and core over fake host adapters): random methods, paths, queries, headers and
bodies never get a 5xx, every 4xx is {"error": str}, and a 4xx changes nothing.

Runs are deterministic: the "ci" profile (loaded here, so it is the default for every hypothesis
test of the run) derandomizes generation and keeps no example database, so CI sees the same
examples on every run and a failure reproduces from the printed example alone.  Inputs that once
broke a validator are pinned with @example.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import string
from urllib.parse import quote

from hypothesis import HealthCheck, assume, example, given, settings, strategies as st
from treq.testing import StubTreq
from twisted.python.failure import Failure
from twisted.trial import unittest

from bolt import config as configuration
from bolt import passwords
from bolt.api import BoltAPI, _basic_credentials
from bolt.errors import ConfigError, InvalidInput
from bolt.execs import MAX_ARGS, MAX_TEXT, MAX_TIMEOUT, ExecRequest, parse_exec
from bolt.host.images import Distro, InvalidDistro, parse_distro
from bolt.limits import (
    CPU_PERIOD_US, DEFAULT_PIDS, FIELDS as LIMIT_FIELDS, MAX_PIDS, MIN_CPU_QUOTA_US, MIN_MEMORY_BYTES, MIN_PIDS,
    validate_limits,
)
from bolt.manager import _path_port
from bolt.model import ResourceLimits, validate_name
from bolt.netplan import AddressPool, Forward, PoolExhausted, ReverseForward
from bolt.shell import telnet
from bolt.updates import parse_version
from tests.helpers import PASSWORD, World

settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile("ci")

#: Bounded runs: every property gets this many examples (a few seconds for the whole module).
RUNS = settings(max_examples=200, deadline=None)

CHEAP = {"n": 2 ** 10, "r": 8, "p": 1}

# -- strategies -------------------------------------------------------------------------------------

#: Integers at and around every bound the validators use, plus ones too large for a float.
INTERESTING_INTS = st.sampled_from([
    -1, 0, 1, 2, 15, 16, 17, 999, 1000, 1001, 65535, 65536, 99_999, 100_000, 100_001, 3600, 3601,
    MIN_MEMORY_BYTES - 1, MIN_MEMORY_BYTES, 2 ** 31, 2 ** 62, 2 ** 62 + 1, 2 ** 63, 2 ** 64, MAX_PIDS, MAX_PIDS + 1,
    10 ** 30, 10 ** 400, -(10 ** 400),
])
NUMBERS = st.one_of(st.integers(), INTERESTING_INTS, st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.5, 1.0, 3600.0, 3600.5, 1e308, -0.0, 5e-324]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))


def json_values(max_leaves: int = 12) -> st.SearchStrategy:
    """Any value json.loads can return (with NaN, ±Infinity and huge integers, which it also returns)."""
    return st.recursive(SCALARS, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
        max_leaves=max_leaves)


ANY = json_values()
LOWER_DIGITS = set(string.ascii_lowercase + string.digits)


def name_oracle(value) -> bool:
    """NAME_RULE in words: 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit."""
    return (isinstance(value, str) and 1 <= len(value) <= 63 and value[0] in LOWER_DIGITS
            and set(value) <= LOWER_DIGITS | {"-", "_"})


NAMEISH = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True),
    st.text(alphabet="az09-_AZ.é/\n\0 ", min_size=0, max_size=70),
    st.sampled_from(["", "a" * 63, "a" * 64, "-a", "_a", "a\n", "..", "a/b", "ǆ", "\u0131", "K", "ａ"]),
    ANY,
)


class NameProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(NAMEISH, st.sampled_from(["name", "project name", "sandbox name"]))
    def test_validate_name(self, value, what):
        try:
            result = validate_name(value, what)
        except InvalidInput as e:
            self.assertFalse(name_oracle(value), value)
            self.assertIn(what, e.message)
            self.assertIn("1-63 characters", e.message)
            self.assertLessEqual(len(e.message), 300)  # a long value is cut when shown
        else:
            self.assertTrue(name_oracle(value), value)
            self.assertIs(result, value)


# -- resource limits --------------------------------------------------------------------------------

LIMIT_VALUES = st.one_of(INTERESTING_INTS, st.integers(min_value=-10, max_value=2 ** 63),
                         st.booleans(), st.floats(), st.text(max_size=5), st.none())
LIMIT_DATA = st.one_of(
    st.dictionaries(st.sampled_from(LIMIT_FIELDS + ("nice", "", "CPU_QUOTA_US")), LIMIT_VALUES, max_size=4),
    ANY,
)
BASES = st.one_of(st.none(), st.builds(ResourceLimits, st.integers(MIN_CPU_QUOTA_US, 200_000),
                                       st.integers(MIN_MEMORY_BYTES, 2 ** 40), st.integers(MIN_PIDS, 100_000)))


class LimitsProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(LIMIT_DATA, BASES, st.integers(1, 64))
    def test_validate_limits(self, data, base, cpus):
        bounds = {"cpu_quota_us": (MIN_CPU_QUOTA_US, cpus * CPU_PERIOD_US),
                  "memory_limit_bytes": (MIN_MEMORY_BYTES, 2 ** 62), "pids_max": (MIN_PIDS, MAX_PIDS)}
        expected_ok = (
            isinstance(data, dict) and bool(data) and set(data) <= set(LIMIT_FIELDS)
            and (base is not None or {"cpu_quota_us", "memory_limit_bytes"} <= set(data))
            and all(type(v) is int and bounds[k][0] <= v <= bounds[k][1] for k, v in data.items()))
        try:
            result = validate_limits(data, base, cpus=cpus)
        except InvalidInput:
            self.assertFalse(expected_ok, data)
            return
        self.assertTrue(expected_ok, data)
        for field in LIMIT_FIELDS:
            value = getattr(result, field)
            self.assertIs(type(value), int)
            if field in data:
                self.assertEqual(value, data[field])
            else:
                self.assertEqual(value, getattr(base, field) if base else DEFAULT_PIDS)

    @RUNS
    @given(LIMIT_DATA)
    def test_require_all(self, data):
        try:
            result = validate_limits(data, require_all=LIMIT_FIELDS)
        except InvalidInput:
            return
        self.assertEqual(set(data), set(LIMIT_FIELDS))
        self.assertEqual(result.to_json(), data)


# -- exec requests ----------------------------------------------------------------------------------

ARG_TEXT = st.text(max_size=10) | st.sampled_from(["", " ", "\0", "a\0b", "/bin/true", "\ud800"])
EXEC_BODIES = st.one_of(
    st.fixed_dictionaries({"command": st.one_of(st.lists(ARG_TEXT, max_size=4), ARG_TEXT, ANY)},
                          optional={"timeout": st.one_of(NUMBERS, st.booleans(), st.text(max_size=3)),
                                    "stdin": st.one_of(ARG_TEXT, ANY),
                                    "env": st.one_of(st.dictionaries(st.text(max_size=6) | st.sampled_from(
                                        ["PATH", "_X", "a1", "1A", "A-B", "A\n"]), ARG_TEXT | ANY, max_size=3), ANY),
                                    "cwd": st.one_of(ARG_TEXT, st.sampled_from(["/", "/tmp", "tmp", "/a\0"]), ANY),
                                    "shell": ANY}),
    ANY,
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _clean_text(value) -> bool:
    return isinstance(value, str) and "\0" not in value and len(value) <= MAX_TEXT


class ExecProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(EXEC_BODIES)
    @example({"command": "x", "timeout": 10 ** 400})  # json.loads gives ints too large for a float
    @example({"command": "x", "timeout": -(10 ** 400)})
    def test_parse_exec(self, body):
        try:
            request = parse_exec(body)
        except InvalidInput as e:
            self.assertIsInstance(e.message, str)
            return
        self.assertIsInstance(request, ExecRequest)
        self.assertLessEqual(set(body), {"command", "timeout", "stdin", "env", "cwd"})
        if isinstance(request.command, list):
            self.assertTrue(1 <= len(request.command) <= MAX_ARGS)
            self.assertTrue(all(_clean_text(a) for a in request.command))
            self.assertNotEqual(request.command[0], "")
            self.assertEqual(request.command, body["command"])
        else:
            self.assertTrue(_clean_text(request.command) and request.command.strip())
        self.assertIs(type(request.timeout), float)
        self.assertTrue(0 < request.timeout <= MAX_TIMEOUT)
        if "timeout" not in body:
            self.assertEqual(request.timeout, 60.0)
        if request.stdin is not None:
            self.assertIsInstance(request.stdin, bytes)
            self.assertTrue(_clean_text(body["stdin"]))
        if request.env is not None:
            self.assertLessEqual(len(request.env), 1024)
            for key, value in request.env.items():
                self.assertTrue(_ENV_NAME.fullmatch(key) and len(key) <= 256, key)
                self.assertTrue(_clean_text(value))
        if request.cwd is not None:
            self.assertTrue(request.cwd.startswith("/") and "\0" not in request.cwd and len(request.cwd) <= 4096)


# -- the configuration file -------------------------------------------------------------------------

PORT_RANGES = st.one_of(
    st.builds(lambda a, b, sp: f"{sp}{a}{sp}-{sp}{b}{sp}", st.integers(-5, 70000) | INTERESTING_INTS,
              st.integers(-5, 70000), st.sampled_from(["", " ", "\t"])),
    st.lists(st.integers(-5, 70000) | st.booleans() | INTERESTING_INTS, max_size=5),
    st.from_regex(r"\s*\d{1,6}\s*-\s*\d{1,6}\s*", fullmatch=True),
    ANY,
)


class ConfigProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(PORT_RANGES)
    def test_parse_port_range(self, value):
        try:
            ports = configuration.parse_port_range(value)
        except ValueError:  # the module's _Bad, which the loader turns into a ConfigError
            return
        self.assertIsInstance(ports, frozenset)
        self.assertTrue(ports)
        self.assertTrue(all(type(p) is int and 1 <= p <= 65535 for p in ports))
        if isinstance(value, str):
            lo, hi = (int(x.strip()) for x in value.split("-"))
            self.assertEqual(ports, frozenset(range(lo, hi + 1)))
        else:
            self.assertEqual(ports, frozenset(value))

    def valid_raw(self) -> dict:
        raw = {key: default for key, (default, _) in configuration.SCHEMA.items()}
        raw["base_image_dir"] = "/var/bolt/base_images"
        raw["admin_password"] = HASH
        return raw

    def test_defaults_are_valid(self):
        values = configuration.validate(self.valid_raw(), "/etc/bolt/config.json")
        self.assertEqual(set(values), set(configuration.SCHEMA))

    @RUNS
    @given(st.data())
    def test_validate_random_changes(self, data):
        raw = self.valid_raw()
        keys = sorted(configuration.SCHEMA)
        for key in data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True), label="changed"):
            raw[key] = data.draw(CONFIG_VALUES.get(key, ANY) | ANY, label=key)
        for key in data.draw(st.lists(st.sampled_from(keys), max_size=1), label="removed"):
            raw.pop(key, None)
        if data.draw(st.booleans(), label="add unknown key"):
            raw[data.draw(st.text(max_size=8), label="unknown")] = 1
        try:
            values = configuration.validate(raw, "/etc/bolt/config.json")
        except ConfigError as e:
            self.assertTrue(e.message.startswith("/etc/bolt/config.json: "), e.message)
            return
        self.check_values(values)

    def test_every_tricky_value(self):
        """Each hand-picked bad value of each key: a ConfigError naming the key, or a valid value."""
        for key, values in TRICKY.items():
            for value in values:
                raw = dict(self.valid_raw(), **{key: value})
                try:
                    values_ = configuration.validate(raw, "/etc/bolt/config.json")
                except ConfigError as e:
                    self.assertIn(repr(key), e.message)
                    continue
                self.check_values(values_)

    @RUNS
    @given(ANY)
    def test_validate_anything(self, raw):
        try:
            values = configuration.validate(raw, "c.json")
        except ConfigError:
            return
        self.check_values(values)  # pragma: no cover (a random value is never a whole config)

    def check_values(self, values: dict) -> None:
        self.assertEqual(set(values), set(configuration.SCHEMA))
        self.assertRegex(values["admin_user"], r"^[A-Za-z0-9_.@-]{1,64}\Z")
        self.assertTrue(passwords.is_password_hash(values["admin_password"]))
        self.assertTrue(values["base_image_dir"].startswith("/"))
        self.assertNotIn("..", values["base_image_dir"].split("/"))
        self.assertRegex(values["default_distro"], r"^(debian|ubuntu):[a-z][a-z0-9-]{0,31}\Z")
        self.assertFalse(values["allowed_ports"] & values["shell_port_range"])
        for key in ("update_url", "image_mirror"):
            self.assertTrue(values[key] is None or values[key].split(":")[0] in ("http", "https"), values[key])
        for key in ("sandbox_outbound", "shell_tls"):
            self.assertIs(type(values[key]), bool)
        for key in ("shell_token_expiry", "max_concurrent_builds", "max_shell_sessions",
                    "max_shell_sessions_per_sandbox"):
            self.assertIs(type(values[key]), int)
        network = ipaddress.IPv4Network(values["sandbox_network"])
        self.assertLessEqual(network.prefixlen, 28)
        host = values["shell_host"]
        self.assertTrue(host is None or (isinstance(host, str) and str(ipaddress.ip_address(host)) == host), host)
        self.assertTrue(values["cgroup_parent"] is None or name_oracle(values["cgroup_parent"]))
        self.assertRegex(values["instance_name"], r"^[a-z][a-z0-9]{0,6}\Z")
        self.assertIsInstance(values["default_resource_limits"], ResourceLimits)


HASH = passwords.hash_password("correct horse", CHEAP)
#: Hand-picked values per key, each at or just past a rule's edge.
TRICKY = {
    "admin_user": ["", "a" * 64, "a b", "ädmin", "admin\n", 7, None],
    "admin_password": ["plain text", HASH.replace("n=1024", "n=1000"), HASH.replace("$", "$$", 1),
                       "scrypt$n=" + "1" * 5000 + ",r=8,p=1$AAAAAAAAAAA=$AAAA", "scrypt$n=1024,r=8,p=1$!!$!!", 1],
    "update_url": ["http://x", "https://a.b/c", "ftp://x", "http://", "http://[::1", "http://[zz]/",
                   "https://h:99999/", "http://[::1]:80/v", "", 1, ["http://x"]],
    "image_mirror": ["http://deb.example/debian", "http://[", "//x", "https://[::1"],
    "shell_host": ["127.0.0.1", "::1", "0.0.0.0", "1.2.3", True, 1, 2 ** 32 - 1, 2 ** 128 - 1,
                   "fe80::1%eth0", " 127.0.0.1", ["127.0.0.1"]],
    "sandbox_network": ["10.213.0.0/16", "10.0.0.0/28", "10.0.0.0/29", "10.0.0.1/16", 167772160,
                        [167772160, 16], "::/64", True, None],
    "base_image_dir": ["/a/../b", "relative", "/ok/path", "/a\0b", "//double//slash/", 5],
    "allowed_ports": ["1-65535", "0-10", "10-5", "20001-20002", [True], [], "١٠-٢٠", " 5 - 6 "],
    "default_resource_limits": [{}, {"cpu_quota_us": 1000}, {"cpu_quota_us": 1000, "memory_limit_bytes": 2 ** 63},
                                {"cpu_quota_us": True, "memory_limit_bytes": 2 ** 30}, []],
    "shell_token_expiry": [9, 10, 7 * 24 * 3600 + 1, 10.0, True, "60"],
    "instance_name": ["", "bolt", "abcdefgh", "Bolt", "1bolt"],
    "cgroup_parent": ["", "ok", "../x", "a/b", None],
}
CONFIG_VALUES = {key: st.sampled_from(values) for key, values in TRICKY.items()}
CONFIG_VALUES["allowed_ports"] = CONFIG_VALUES["shell_port_range"] = PORT_RANGES
CONFIG_VALUES["default_resource_limits"] = st.dictionaries(st.sampled_from(LIMIT_FIELDS + ("x",)), LIMIT_VALUES,
                                                           max_size=3)


# -- the update check -------------------------------------------------------------------------------

VERSION_PARTS = st.lists(st.integers(0, 999_999), min_size=1, max_size=4)


def _strip(parts) -> tuple[int, ...]:
    parts = list(parts)
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


class UpdateProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(st.one_of(ANY, st.from_regex(r"\s*v?[0-9.]{0,12}\s*", fullmatch=True),
                     st.sampled_from(["1.2.3", "v1", "1..2", "1.2.3.4.5", "1" * 7, "1.0-rc1", ""])))
    def test_parse_version(self, text):
        try:
            parts = parse_version(text)
        except ValueError:
            return
        self.assertIsInstance(parts, tuple)
        self.assertTrue(1 <= len(parts) <= 4)
        self.assertTrue(all(type(p) is int and 0 <= p <= 999_999 for p in parts))
        self.assertTrue(len(parts) == 1 or parts[-1] != 0)

    @RUNS
    @given(VERSION_PARTS, VERSION_PARTS, st.booleans(), st.sampled_from(["", " ", "\n"]))
    def test_round_trip_and_order(self, a, b, prefix, space):
        text_a = space + ("v" if prefix else "") + ".".join(map(str, a)) + space
        self.assertEqual(parse_version(text_a), _strip(a))
        text_b = ".".join(map(str, b))
        # Versions order as their numbers do, with missing trailing parts counting as zeros.
        pad = lambda p: tuple(p) + (0,) * (4 - len(p))  # noqa: E731
        self.assertEqual(parse_version(text_a) < parse_version(text_b), pad(a) < pad(b))
        self.assertEqual(parse_version(text_a) == parse_version(text_b), pad(a) == pad(b))


# -- passwords --------------------------------------------------------------------------------------

B64 = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
DIGITS = st.one_of(st.integers(0, 2 ** 21).map(str), st.sampled_from(["0" * 30 + "8", "1" * 5000, "٨", "²"]))
CRAFTED_HASHES = st.builds(lambda n, r, p, salt, digest: f"scrypt$n={n},r={r},p={p}${salt}${digest}",
                           DIGITS, DIGITS, DIGITS, B64, B64)


def password_oracle(value) -> bool:
    if not isinstance(value, str) or not 8 <= len(value) <= 1024:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class PasswordProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(st.one_of(ANY, st.text(min_size=6, max_size=12), st.text(min_size=1020, max_size=1030),
                     st.sampled_from(["\ud800" * 8, "12345678", "1234567", "é" * 8])))
    def test_check_new_password(self, value):
        problem = passwords.check_new_password(value)
        self.assertEqual(problem is None, password_oracle(value), value)
        if problem is not None:
            self.assertIsInstance(problem, str)
            self.assertIn("admin_password", problem)

    @RUNS
    @given(st.one_of(ANY, CRAFTED_HASHES, st.text(max_size=40)))
    @example("scrypt$n=" + "1" * 5000 + ",r=8,p=1$AAAAAAAAAAA=$" + "A" * 43 + "=")
    @example("scrypt$n=1024,r=8,p=1$٨AAAAAAAAAA=$" + "A" * 43 + "=")
    def test_is_password_hash(self, value):
        accepted = passwords.is_password_hash(value)
        self.assertIs(type(accepted), bool)
        if accepted:
            m = re.fullmatch(r"scrypt\$n=([0-9]+),r=([0-9]+),p=([0-9]+)\$([^$]+)\$([^$]+)", value)
            self.assertIsNotNone(m, value)
            n, r, p = (int(x) for x in m.group(1, 2, 3))
            self.assertTrue(n >= 2 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16)
            self.assertEqual(len(base64.b64decode(m.group(5))), 32)
            self.assertGreaterEqual(len(base64.b64decode(m.group(4))), 8)
            if n * r * p <= 2 ** 14:  # ...and the verifier can use it: a wrong password is refused
                self.assertFalse(passwords.verify_password("not the password", value))

    @settings(max_examples=10, deadline=None)
    @given(st.text(min_size=8, max_size=40))
    def test_hashes_are_accepted_and_verify(self, password):
        assume(passwords.check_new_password(password) is None)
        stored = passwords.hash_password(password, CHEAP)
        self.assertTrue(passwords.is_password_hash(stored))
        self.assertTrue(passwords.verify_password(password, stored))
        self.assertFalse(passwords.verify_password(password + "x", stored))


# -- network planning -------------------------------------------------------------------------------

NETWORKS = st.one_of(
    st.builds(lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}", st.integers(0, 2 ** 32 - 1), st.integers(0, 33)),
    st.builds(lambda a, p: str(ipaddress.IPv4Network((a, p), strict=False)), st.integers(0, 2 ** 32 - 1),
              st.integers(8, 28)),
    st.sampled_from(["10.213.0.0/16", "10.0.0.0/28", "127.0.0.0/24", "224.0.0.0/28", "0.0.0.0/0", "::1/128"]),
    ANY,
)
PORT_VALUES = st.one_of(st.integers(-3, 70000), INTERESTING_INTS, st.booleans(), st.floats(), st.text(max_size=3),
                        st.none())
SPECIAL = [ipaddress.IPv4Network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                                               "240.0.0.0/4")]


class NetplanProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(NETWORKS, st.lists(st.integers(0, 2 ** 32 - 1).map(lambda a: str(ipaddress.IPv4Address(a))) | ANY,
                              max_size=3))
    def test_address_pool_construction(self, network, used):
        try:
            pool = AddressPool(network, used if isinstance(used, list) else [])
        except ValueError:
            return
        net = ipaddress.IPv4Network(network)
        self.assertLessEqual(net.prefixlen, 28)
        self.assertFalse(any(net.overlaps(s) for s in SPECIAL))
        self.assertEqual(pool.gateway, str(net.network_address + 1))
        self.assertEqual(pool.capacity, net.num_addresses - 3)
        for address in pool.used:
            self.assertIn(ipaddress.IPv4Address(address), net)

    @RUNS
    @given(st.integers(0, 2 ** 32 - 1), st.integers(24, 28), st.lists(st.integers(0, 300), max_size=20))
    def test_allocation_never_repeats_and_stays_inside(self, base, prefixlen, releases):
        network = ipaddress.IPv4Network((base, prefixlen), strict=False)
        assume(not any(network.overlaps(s) for s in SPECIAL))
        pool = AddressPool(str(network))
        reserved = {network.network_address, network.network_address + 1, network.broadcast_address}
        held: list[str] = []
        for _ in range(pool.capacity):
            address = pool.allocate()
            self.assertIn(ipaddress.IPv4Address(address), network)
            self.assertNotIn(ipaddress.IPv4Address(address), reserved)
            self.assertNotIn(address, held)
            held.append(address)
        self.assertEqual(pool.available, 0)
        self.assertRaises(PoolExhausted, pool.allocate)
        for index in releases:  # give some back: exactly those come back, each once
            if held:
                released = held.pop(index % len(held))
                self.assertTrue(pool.release(released))
                self.assertFalse(pool.release(released))
                self.assertEqual(pool.allocate(), released)
                held.append(released)
        self.assertEqual(set(held), pool.used)

    @RUNS
    @given(PORT_VALUES, PORT_VALUES, st.sampled_from([Forward, ReverseForward]))
    def test_forwards(self, a, b, kind):
        valid = lambda v: type(v) is int and 1 <= v <= 65535  # noqa: E731
        try:
            forward = kind(a, b)
        except ValueError:
            self.assertFalse(valid(a) and valid(b))
            return
        self.assertTrue(valid(a) and valid(b), (a, b))
        self.assertEqual(tuple(vars(forward).values()), (a, b))


# -- the telnet codec -------------------------------------------------------------------------------

def fold_newlines(data: bytes) -> bytes:
    """NVT end of line as a PTY wants it: CR LF and CR NUL become CR."""
    out, after_cr = bytearray(), False
    for byte in data:
        if after_cr and byte in (0, 10):
            after_cr = False
            continue
        after_cr = byte == 13
        out.append(byte)
    return bytes(out)


TELNETISH = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.binary(max_size=8), st.sampled_from([
        bytes([255, 255]), bytes([255, 253, 31]), bytes([255, 251, 24]), bytes([255, 251, 99]), bytes([255, 253, 99]),
        bytes([255, 250, 31, 0, 80, 0, 24, 255, 240]), bytes([255, 250, 31, 0, 0, 0, 0, 255, 240]),
        bytes([255, 250, 24, 0]) + b"XTERM-256color" + bytes([255, 240]), bytes([255, 250]) + b"x" * 300,
        bytes([255, 240]), bytes([255, 241]), b"\r\n", b"\r\0", b"\r", bytes([255])])), max_size=12).map(b"".join),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


class TelnetProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(TELNETISH, st.lists(st.integers(0, 400), max_size=8))
    def test_feed_is_incremental(self, data, cuts):
        """Any split of the stream into reads gives the same data, events and replies."""
        whole = telnet.TelnetCodec()
        out, events = whole.feed(data)
        pieces = telnet.TelnetCodec()
        results = [pieces.feed(chunk) for chunk in chunked(data, cuts)]
        self.assertEqual(b"".join(o for o, _ in results), out)
        self.assertEqual([e for _, evs in results for e in evs], events)
        self.assertEqual(bytes(pieces.replies), bytes(whole.replies))

    @RUNS
    @given(TELNETISH)
    def test_events_and_replies_are_well_formed(self, data):
        codec = telnet.TelnetCodec()
        out, events = codec.feed(data)
        self.assertLessEqual(len(out), len(data))
        self.assertLessEqual(out.count(255) * 2, data.count(255))  # a 0xFF out needs IAC IAC in
        for event in events:
            if isinstance(event, telnet.WindowSize):
                self.assertTrue(1 <= event.columns <= 10000 and 1 <= event.rows <= 10000)
            elif isinstance(event, telnet.TerminalType):
                self.assertRegex(event.name, r"^[a-z0-9._+-]{1,64}\Z")
            else:
                self.assertIsInstance(event, telnet.OptionAnswer)
                self.assertIn(event.command, (telnet.WILL, telnet.WONT, telnet.DO, telnet.DONT))
        replies = bytes(codec.replies)
        while replies:
            if replies.startswith(telnet.ASK_TTYPE):
                replies = replies[len(telnet.ASK_TTYPE):]
            else:
                self.assertEqual(replies[0], telnet.IAC, codec.replies)
                self.assertIn(replies[1], (telnet.DONT, telnet.WONT))
                replies = replies[3:]

    @RUNS
    @given(st.binary(max_size=200).filter(lambda b: b"\xff" not in b))
    def test_plain_bytes_pass_through(self, data):
        """Without IAC the codec only folds NVT line ends; no event, no reply, no 0xFF out."""
        codec = telnet.TelnetCodec()
        out, events = codec.feed(data)
        self.assertEqual(out, fold_newlines(data))
        self.assertNotIn(b"\xff", out)
        self.assertEqual((events, bytes(codec.replies)), ([], b""))

    @RUNS
    @given(st.binary(max_size=200))
    @example(b"\r\xff\n")  # a literal 0xFF after CR is data: the LF after it is not swallowed
    def test_escape_round_trip(self, data):
        """What the server escapes for a client, a client-side codec decodes back (line ends folded)."""
        out, events = telnet.TelnetCodec().feed(telnet.escape(data))
        self.assertEqual(out, fold_newlines(data))
        self.assertEqual(events, [])

    @RUNS
    @given(TELNETISH)
    def test_line_end(self, data):
        index = telnet.line_end(data)
        self.assertTrue(index == -1 or data[index] == 10, index)
        if b"\xff" not in data:
            self.assertEqual(index, data.find(b"\n"))


# -- distros, path ports, Basic credentials --------------------------------------------------------

class MiscProperties(unittest.SynchronousTestCase):
    @RUNS
    @given(st.one_of(ANY, st.from_regex(r"(debian|ubuntu|kali):[a-zA-Z0-9./-]{0,34}", fullmatch=True),
                     st.sampled_from(["debian:bookworm", "ubuntu:noble", "debian:", "debian:../x", "debian:a\n"])))
    def test_parse_distro(self, value):
        try:
            distro = parse_distro(value)
        except InvalidDistro:
            return
        self.assertIsInstance(distro, Distro)
        self.assertEqual(str(distro), value)
        self.assertIn(distro.family, ("debian", "ubuntu"))
        self.assertRegex(distro.suite, r"^[a-z][a-z0-9-]{0,31}\Z")

    @RUNS
    @given(st.one_of(ANY, st.text(alphabet="0123456789²١٢ +-x", max_size=7)))
    @example("²")  # str.isdigit() says yes, int() says no
    @example("١٢")  # Arabic-Indic digits: not a port number in a URL
    def test_path_port(self, value):
        try:
            port = _path_port(value, "host_port")
        except InvalidInput as e:
            self.assertIn("host_port", e.message)
            return
        self.assertTrue(isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value), value)
        self.assertEqual(port, int(value))
        self.assertTrue(1 <= port <= 65535)

    @RUNS
    @given(st.one_of(st.none(), st.binary(max_size=60),
                     st.builds(lambda s, b: s + base64.b64encode(b), st.sampled_from([b"Basic ", b"basic ", b"BASIC",
                                                                                        b"Bearer ", b"Basic  "]),
                               st.binary(max_size=40))))
    def test_basic_credentials_never_raise(self, header):
        result = _basic_credentials(_HeaderOnly(header))
        self.assertTrue(result is None or (len(result) == 2 and all(isinstance(x, str) for x in result)))

    @RUNS
    @given(st.text().filter(lambda u: ":" not in u), st.text())
    def test_basic_credentials_round_trip(self, user, password):
        assume(passwords.check_new_password(user + password + "x" * 8) is None)  # encodable
        header = b"Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8"))
        self.assertEqual(_basic_credentials(_HeaderOnly(header)), (user, password))


class _HeaderOnly:
    def __init__(self, authorization: bytes | None) -> None:
        self.authorization = authorization

    def getHeader(self, name: bytes) -> bytes | None:
        return self.authorization if name.lower() == b"authorization" else None


# -- the HTTP API with random requests (StubTreq over World: the real API and core, fake host) -----

ROUTES = sorted((method, rule.rule) for rule in BoltAPI.app.url_map.iter_rules()
                for method in rule.methods - {"HEAD", "OPTIONS"})
AUTH_OK = b"Basic " + base64.b64encode(f"admin:{PASSWORD}".encode())

#: Path segments: the World's own names (so deep routes are reached), good names, and hostile ones.
#: Each is (text as it goes into the URL, already encoded).
KNOWN = {"project": ["p1"], "distro": ["debian:bookworm", "debian:trixie"],
         "host_port": ["10001"], "container_port": ["8080"]}
SEGMENTS = st.one_of(
    st.sampled_from(["p1", "s1", "s2", "10001", "8080", "debian:bookworm", "debian:trixie"]),
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,8}", fullmatch=True),
    st.text(max_size=12).map(lambda t: quote(t, safe="")),
    st.sampled_from(["..", ".", "%2e%2e", "%2E%2E%2Fetc", "%00", "%ff", "%c3%28", "%2F", "a%2Fb", "%20", "",
                     "a" * 5000, "-1", "0", "65535", "65536", "99999", "%C2%B2", "%D9%A1", "debian%3Abookworm",
                     "ubuntu:..", "debian:sid%00", "%25", "~", "'", "%22", "%5C"]),
)
QUERIES = st.one_of(
    st.just(""),
    st.lists(st.tuples(st.sampled_from(["force", "x", ""]) | st.text(max_size=4),
                       st.sampled_from(["1", "0", "true", "yes", "no", "2", "", "%ff"]) | st.text(max_size=4)),
             min_size=1, max_size=3).map(
        lambda pairs: "?" + "&".join(quote(k, safe="") + "=" + (v if v == "%ff" else quote(v, safe=""))
                                     for k, v in pairs)),
    st.sampled_from(["?force", "?&&", "?force=1&force=0", "?=", "?force=%00"]),
)
#: Header values as RFC 9110 allows them (visible ASCII, space, tab, obs-text): twisted.web's parser answers
#: a bare 400 to control characters before any resource sees the request.
#: 0x85 too: twisted.web's form parsing decodes Content-Type as Latin-1 and hands it to the email
#: package, which takes U+0085 for a line break and raises out of the request parser (the connection
#: is dropped unanswered).  Bolt's own Site turns form parsing off (tests/test_web.py); StubTreq, used
#: here, builds a plain Site of its own.
HEADER_BYTES = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if (c >= 0x20 and c not in (0x7f, 0x85)) or c == 9))
BAD_AUTHORIZATIONS = st.one_of(
    st.none(),
    st.builds(lambda u, p: b"Basic " + base64.b64encode(f"{u}:{p}".encode("utf-8", "surrogatepass")),
              st.sampled_from(["admin", "root", "", "ADMIN"]), st.text(max_size=12)),
    st.builds(lambda s, b: s + b, st.sampled_from([b"Basic ", b"basic ", b"Bearer ", b"Basic", b""]), HEADER_BYTES),
)
OTHER_HEADERS = st.dictionaries(
    st.sampled_from([b"Content-Type", b"Accept", b"Host", b"X-Forwarded-For", b"Cookie", b"User-Agent",
                     b"Content-Encoding", b"Accept-Charset", b"X-Bolt"]),
    st.one_of(HEADER_BYTES, st.sampled_from([b"application/json", b"text/plain; charset=latin-1", b"\xff\xfe",
                                             b"bolt.test:notaport", b"[::1]:443", b"gzip", b"a" * 2000])),
    max_size=3)

FIELD_VALUES = {
    "name": st.one_of(st.sampled_from(["p1", "s1", "s2", "", "A", "x" * 64, "..", "é"]),
                      st.from_regex(r"[a-z0-9][a-z0-9_-]{0,5}", fullmatch=True)),
    "distro": st.sampled_from(["debian:bookworm", "debian:trixie", "debian:nope", "kali:x", "debian:", ""]),
    "host_port": st.sampled_from([10001, 10002, 19999, 20000, 80, 0, 65536, "10003", True, 1.5, 10 ** 400]),
    "container_port": st.sampled_from([80, 8080, 1, 65535, 0, 65536, -1, "80", None, 10 ** 400]),
    "command": st.one_of(st.sampled_from(["true", "", " ", "a\0b", ["ls", "-l"], [], [""], ["\0"], [1]]),
                         st.lists(st.text(max_size=4), max_size=3)),
    "timeout": st.sampled_from([1, 0, -1, 3600, 3601, 1e999, 10 ** 400, "1", True]),
    "env": st.sampled_from([{}, {"A": "b"}, {"1A": "b"}, {"A": 1}, [], {"A": "\0"}]),
    "cwd": st.sampled_from(["/", "/tmp", "tmp", "/\0", ""]),
    "stdin": st.sampled_from(["", "x", "\0", 5]),
    "cpu_quota_us": st.sampled_from([1000, 999, 50_000, 10 ** 9, 0, -5, "1000", 1e3, 10 ** 400]),
    "memory_limit_bytes": st.sampled_from([2 ** 24, 2 ** 24 - 1, 2 ** 62, 2 ** 63, 0, "1G"]),
    "pids_max": st.sampled_from([16, 15, 1024, 4_194_305, True, None]),
    "admin_user": st.sampled_from(["admin", "", "a b", "boss", 1, None]),
    "admin_password": st.sampled_from(["short", "long enough pw", "\ud800" * 9, "", 12345678, None]),
}
PLAUSIBLE_BODIES = st.fixed_dictionaries({}, optional={
    k: v | ANY if k in ("name", "command") else v for k, v in FIELD_VALUES.items()})
BODIES = st.one_of(
    st.none(),
    PLAUSIBLE_BODIES.map(lambda b: json.dumps(b).encode()),
    PLAUSIBLE_BODIES.map(lambda b: json.dumps(b).encode()),
    json_values(20).map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b" ", b"not json", b"\xff\xfe", b"[" * 5000, b'{"name": ' + b"1" * 5000 + b"}",
                     b"NaN", b'{"name": NaN}', b'{"timeout": 1e999, "command": "x"}', b"{", b'{"a":1}{"a":1}',
                     b'{"name": "p2"}\x00', b'{"name": "\\ud800"}', b'{"command": "\\ud800"}',
                     b'{"command": ["sh", "-c", "true"], "timeout": 1e-320}', b"\xef\xbb\xbf{}"]),
    st.binary(max_size=64),
)
#: The fields each route reads, so that random bodies are often nearly right.
ROUTE_FIELDS = {
    "/api/projects": ("name",), "/api/config": ("admin_user", "admin_password"),
    "/api/projects/<name>/resources": LIMIT_FIELDS, "/api/images": ("distro",),
    "/api/projects/<project>/sandboxes": ("name", "distro"),
    "/api/projects/<project>/sandboxes/<name>/exec": ("command", "timeout", "stdin", "env", "cwd"),
    "/api/projects/<project>/sandboxes/<name>/ports": ("host_port", "container_port"),
    "/api/projects/<project>/sandboxes/<name>/reverse_ports": ("host_port", "container_port"),
}


@st.composite
def route_body(draw, fields):
    keys = draw(st.sets(st.sampled_from(fields), min_size=1)) if fields else set()
    if draw(st.integers(0, 9)) == 0:
        keys.add(draw(st.sampled_from(sorted(FIELD_VALUES))))
    return json.dumps({k: draw(FIELD_VALUES[k], label=k) for k in sorted(keys)}).encode()


METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW"])


@st.composite
def api_requests(draw):
    method, template = draw(st.sampled_from(ROUTES), label="route")
    if draw(st.integers(0, 9), label="other method") == 0:
        method = draw(METHODS)
    if draw(st.integers(0, 19), label="free path") == 0:
        path = "/" + "/".join(draw(st.lists(SEGMENTS, max_size=6)))
    else:
        known = dict(KNOWN, name=["s1", "s2"] if "<project>" in template else ["p1"])
        path = re.sub(r"<([^>]+)>", lambda m: draw(st.sampled_from(known[m.group(1)]) if draw(
            st.integers(0, 9), label="known name") < 7 else SEGMENTS, label=m.group(1)), template)
    headers = dict(draw(OTHER_HEADERS))
    authorization = AUTH_OK if draw(st.integers(0, 9), label="good credentials") < 8 else draw(BAD_AUTHORIZATIONS)
    if authorization is not None:
        headers[b"Authorization"] = authorization
    fields = ROUTE_FIELDS.get(template, ())
    body = draw(route_body(fields) if fields and draw(st.integers(0, 9), label="route body") < 7 else BODIES)
    return method, path + draw(QUERIES), {k: [v] for k, v in headers.items()}, body


#: Requests that once answered 500 (or non-JSON), always sent first.
HOSTILE = [
    ("POST", "/api/projects", {}, b'{"name": ' + b"1" * 5000 + b"}"),  # int() refuses > 4300 digits
    ("PUT", "/api/projects/p1/resources", {}, b"[" * 100_000),  # RecursionError in json.loads
    ("POST", "/api/projects/p1/sandboxes/s1/exec", {}, b'{"command": "true", "timeout": 1' + b"0" * 400 + b"}"),
    ("DELETE", "/api/projects/p1/sandboxes/s1/ports/%C2%B2", {}, None),  # "²".isdigit(), int("²") fails
    ("DELETE", "/api/projects/p1/sandboxes/s1/reverse_ports/%D9%A1", {}, None),  # Arabic-Indic 1
    ("GET", "/api/projects/%ff", {}, None),  # Klein: text/plain 400 and a logged traceback
    ("GET", "//api//status", {}, None),  # werkzeug's merge_slashes redirect: was a 500
    ("GET", "/api/status", {b"Host": [b"bolt.test:notaport"]}, None),  # werkzeug BadHost: was a 500
    ("GET", "/api/status", {b"Host": [b"\xff"]}, None),
]


def _files(top: str) -> dict[str, bytes]:
    found = {}
    for directory, _, names in os.walk(top):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                found[os.path.relpath(os.path.join(directory, name), top)] = f.read()
    return found


def world_state(world: World) -> dict:
    """Everything a request could change: records, files on disk, every fake host adapter, the admin."""
    manager, host = world.manager, world.host
    return {
        "projects": json.dumps([p.to_json() for p in manager.list_projects()], sort_keys=True),
        "files": _files(world.dir),
        "images": (sorted(host.images.ready), sorted(host.images.builds), list(host.images.removed)),
        "rootfs": (sorted(host.rootfs.mounted.items()), sorted(host.rootfs.on_disk), list(host.rootfs.destroyed)),
        "cgroups": (repr(sorted(host.cgroups.projects.items())),
                    sorted((k, sorted(v)) for k, v in host.cgroups.sandboxes.items()), list(host.cgroups.killed)),
        "firewall": repr(sorted(host.firewall.sandboxes.items())) + repr(sorted(host.firewall.inside.items())),
        "runtime": (sorted(host.runtime.live.items()), len(host.runtime.execs), len(host.runtime.terminals)),
        "links": sorted(host.network.links.items()),
        "pool": sorted(manager.pool.used),
        "tickets": sorted(t.port for t in manager.shells.pending()),
        "busy": sorted(manager._busy),
        "admin": (json.dumps(world.admin.config.raw, sort_keys=True), id(world.admin.credentials)),
    }


class APIProperties(unittest.SynchronousTestCase):
    """Random methods, paths, queries, headers and bodies: never a 5xx, every 4xx is {"error": str}
    and changes nothing."""

    def world(self) -> World:
        world = World(self)
        manager = world.manager
        for step in (lambda: manager.create_project("p1"), lambda: manager.create_sandbox("p1", "s1"),
                     lambda: manager.create_sandbox("p1", "s2"), lambda: manager.stop_sandbox("p1", "s2"),
                     lambda: manager.add_forward("p1", "s1", {"host_port": 10001, "container_port": 80}),
                     lambda: manager.add_reverse_forward("p1", "s1", {"container_port": 8080, "host_port": 10002})):
            self.successResultOf(step())
        manager.shell_listen = lambda port, ticket: (lambda: None)
        return world

    def send(self, http: StubTreq, world: World, method: str, url: str, headers, body):
        answered: list = []
        http.request(method, url, headers=headers, data=body).addBoth(answered.append)
        http.flush()
        if not answered:  # a sandbox waiting for an image: let the (fake) build finish
            for distro in list(world.host.images.builds):
                world.host.images.finish_build(distro)
            http.flush()
        self.assertEqual(len(answered), 1, f"{method} {url[:200]} was never answered")
        response = answered[0]
        if isinstance(response, Failure):
            response.raiseException()
        content = self.successResultOf(response.content())
        return response, content

    def test_random_requests(self):
        seen: dict[int, int] = {}

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(api_requests(), min_size=1, max_size=4))
        @example([(method, path, {**headers, b"Authorization": [AUTH_OK]}, body)
                  for method, path, headers, body in HOSTILE])
        def run(requests):
            world = self.world()
            http = StubTreq(world.api.resource())
            for method, path, headers, body in requests:
                before = world_state(world)
                response, content = self.send(http, world, method, "https://bolt.test" + path, headers, body)
                what = f"{method} {path[:200]} {headers!r:.300} {body!r:.300} -> {response.code} {content!r:.300}"
                seen[response.code] = seen.get(response.code, 0) + 1
                self.assertLess(response.code, 500, what)
                self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"], what)
                if method == "HEAD":
                    continue
                answer = json.loads(content)
                if response.code >= 400:
                    self.assertEqual(set(answer) if isinstance(answer, dict) else answer, {"error"}, what)
                    self.assertIsInstance(answer["error"], str, what)
                    self.assertEqual(world_state(world), before, what)
                else:
                    self.assertLess(response.code, 300, what)

        run()
        self.seen = seen  # status code -> how many: for a reader who wants to see the spread
        # The run reached the routes, not only the front door: successes and refusals of every kind.
        for code in (200, 201, 400, 401, 404, 405, 409):
            self.assertGreater(seen.get(code, 0), 0, (code, seen))
        self.assertGreater(sum(n for code, n in seen.items() if code not in (401, 404)), sum(seen.values()) / 3, seen)
