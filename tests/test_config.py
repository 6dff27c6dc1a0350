"""Tests for bolt.config: first start, validation messages, password handling, atomic rewrite."""

from __future__ import annotations

import base64
import json
import os
import stat

from twisted.trial import unittest

from bolt import config, passwords
from bolt.errors import ConfigError
from bolt.model import ResourceLimits

#: A cheap scrypt cost so each test hashes in a millisecond instead of ~0.3 s.
CHEAP = {"n": 2 ** 10, "r": 8, "p": 1}


class ConfigTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.data_dir = os.path.join(self.root, "var", "bolt")
        self.conf_dir = os.path.join(self.root, "etc", "bolt")
        self.path = os.path.join(self.conf_dir, "config.json")

    def load(self, **kwargs):
        kwargs.setdefault("cost", CHEAP)
        return config.load(self.path, self.data_dir, **kwargs)

    def read_raw(self) -> dict:
        with open(self.path, "rb") as f:
            return json.loads(f.read())

    def write_raw(self, raw: object) -> None:
        os.makedirs(self.conf_dir, exist_ok=True)
        with open(self.path, "w") as f:
            json.dump(raw, f)

    def complete_raw(self, **changes) -> dict:
        """A valid configuration as bolt writes it on first start, with ``changes`` applied."""
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.load()
        raw = self.read_raw()
        raw.update(changes)
        return raw

    def assertConfigError(self, *fragments: str) -> ConfigError:
        """load() must raise ConfigError whose message holds the path and every fragment."""
        try:
            self.load()
        except ConfigError as e:
            error = e
        else:
            self.fail(f"{self.path} was accepted; expected a ConfigError naming {fragments}")
        message = str(error)
        self.assertIn(self.path, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error


class FirstStartTests(ConfigTestCase):
    def test_defaults(self) -> None:
        conf, generated = self.load()
        self.assertTrue(os.path.isfile(self.path))
        self.assertEqual(conf["admin_user"], "admin")
        self.assertEqual(conf["base_image_dir"], os.path.join(self.data_dir, "base_images"))
        self.assertEqual(conf["default_distro"], "debian:bookworm")
        self.assertEqual(conf["allowed_ports"], frozenset(range(10000, 20000)))
        self.assertEqual(conf["shell_port_range"], frozenset(range(20001, 25001)))
        limits = conf["default_resource_limits"]
        self.assertIsInstance(limits, ResourceLimits)
        self.assertEqual(limits.cpu_quota_us, 100000)
        self.assertEqual(limits.memory_limit_bytes, 536870912)
        self.assertEqual(conf["shell_token_expiry"], 3600)
        self.assertIsNone(conf["update_url"])

    def test_file_holds_every_key(self) -> None:
        self.load()
        raw = self.read_raw()
        self.assertEqual(set(raw), set(config.SCHEMA))
        self.assertEqual(raw["admin_user"], "admin")
        self.assertIsNone(raw["update_url"])
        self.assertEqual(raw["default_resource_limits"]["cpu_quota_us"], 100000)
        self.assertEqual(raw["default_resource_limits"]["memory_limit_bytes"], 536870912)
        self.assertEqual(raw["shell_token_expiry"], 3600)

    def test_file_and_directory_modes(self) -> None:
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        self.load()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.conf_dir).st_mode), 0o750)

    def test_generated_password_returned_and_works(self) -> None:
        conf, generated = self.load()
        self.assertIsInstance(generated, str)
        self.assertIsNone(passwords.check_new_password(generated))
        self.assertTrue(passwords.verify_password(generated, conf["admin_password"]))
        self.assertTrue(conf.credentials().check_slow("admin", generated))

    def test_generated_password_differs_between_installations(self) -> None:
        _, first = self.load()
        os.unlink(self.path)
        _, second = self.load()
        self.assertNotEqual(first, second)

    def test_generated_password_not_in_file(self) -> None:
        _, generated = self.load()
        with open(self.path, "rb") as f:
            content = f.read()
        self.assertNotIn(generated.encode("utf-8"), content)
        self.assertTrue(passwords.is_password_hash(json.loads(content)["admin_password"]))

    def test_initial_password_used(self) -> None:
        conf, generated = self.load(initial_password="correct horse battery")
        self.assertIsNone(generated)
        self.assertTrue(conf.credentials().check_slow("admin", "correct horse battery"))
        with open(self.path, "rb") as f:
            self.assertNotIn(b"correct horse battery", f.read())

    def test_initial_password_only_when_file_has_none(self) -> None:
        """BOLT_ADMIN_PASSWORD seeds the password once; a later value does not replace it."""
        self.load(initial_password="first-password")
        conf, generated = self.load(initial_password="second-password")
        self.assertIsNone(generated)
        self.assertTrue(passwords.verify_password("first-password", conf["admin_password"]))
        self.assertFalse(passwords.verify_password("second-password", conf["admin_password"]))

    def test_short_initial_password_refused(self) -> None:
        error = self.assertRaises(ConfigError, self.load, initial_password="short")
        self.assertIn("BOLT_ADMIN_PASSWORD", str(error))
        self.assertIn("at least 8", str(error))
        self.assertFalse(os.path.exists(self.path), "nothing may be written for a refused password")

    def test_second_load_does_not_rewrite(self) -> None:
        first, _ = self.load()
        before = os.stat(self.path)
        with open(self.path, "rb") as f:
            content = f.read()
        second, generated = self.load()
        self.assertIsNone(generated)
        self.assertEqual(second.values, first.values)
        after = os.stat(self.path)
        self.assertEqual((after.st_ino, after.st_mtime_ns), (before.st_ino, before.st_mtime_ns))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), content)

    def test_no_temporary_files_left(self) -> None:
        conf, _ = self.load()
        self.load()
        conf.with_changes(shell_token_expiry=60).save()
        self.assertEqual(os.listdir(self.conf_dir), ["config.json"])


class MissingKeysTests(ConfigTestCase):
    def test_missing_keys_filled_and_file_rewritten(self) -> None:
        stored = passwords.hash_password("kept-password", CHEAP)
        self.write_raw({"admin_user": "operator", "admin_password": stored, "shell_token_expiry": 120})
        conf, generated = self.load()
        self.assertIsNone(generated)
        self.assertEqual(conf["admin_user"], "operator")
        self.assertEqual(conf["shell_token_expiry"], 120)
        self.assertEqual(conf["default_distro"], "debian:bookworm")
        raw = self.read_raw()
        self.assertEqual(set(raw), set(config.SCHEMA))
        self.assertEqual(raw["admin_user"], "operator")
        self.assertEqual(raw["admin_password"], stored)
        self.assertEqual(raw["shell_token_expiry"], 120)
        self.assertEqual(raw["base_image_dir"], os.path.join(self.data_dir, "base_images"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_missing_password_generated_keeps_other_keys(self) -> None:
        self.write_raw({"admin_user": "operator"})
        conf, generated = self.load()
        self.assertIsNotNone(generated)
        self.assertTrue(conf.credentials().check_slow("operator", generated))
        self.assertEqual(self.read_raw()["admin_user"], "operator")

    def test_invalid_file_is_not_rewritten(self) -> None:
        """A file with a bad value stays exactly as its author wrote it, even when keys are missing."""
        self.write_raw({"shell_token_expiry": "soon"})
        with open(self.path, "rb") as f:
            content = f.read()
        self.assertConfigError("'shell_token_expiry'")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), content)

    def test_validate_names_missing_key(self) -> None:
        raw = self.complete_raw()
        del raw["default_distro"]
        error = self.assertRaises(ConfigError, config.validate, raw, self.path)
        self.assertIn(self.path, str(error))
        self.assertIn("'default_distro'", str(error))
        self.assertIn("missing", str(error))


class PortRangeTests(ConfigTestCase):
    def test_list_and_string_give_same_set(self) -> None:
        self.write_raw(self.complete_raw(allowed_ports=list(range(12000, 12011))))
        from_list, _ = self.load()
        self.write_raw(self.complete_raw(allowed_ports="12000-12010"))
        from_string, _ = self.load()
        self.assertEqual(from_list["allowed_ports"], frozenset(range(12000, 12011)))
        self.assertEqual(from_list["allowed_ports"], from_string["allowed_ports"])

    def test_string_with_spaces(self) -> None:
        self.assertEqual(config.parse_port_range(" 20 - 22 "), frozenset({20, 21, 22}))

    def test_single_port_range(self) -> None:
        self.assertEqual(config.parse_port_range("443-443"), frozenset({443}))

    def test_explicit_list_not_contiguous(self) -> None:
        self.write_raw(self.complete_raw(shell_port_range=[20001, 20005, 20009]))
        conf, _ = self.load()
        self.assertEqual(conf["shell_port_range"], frozenset({20001, 20005, 20009}))

    def test_bad_ranges_refused(self) -> None:
        for bad in ["20000-10000", "0-10", "1-65536", "abc", "10000", "10000-", [], [0], [65536],
                    [True], ["10000"], [10000.0], 10000, None, {"from": 1, "to": 2}]:
            self.write_raw(self.complete_raw(allowed_ports=bad))
            self.assertConfigError("'allowed_ports'")


class InvalidFileTests(ConfigTestCase):
    def test_invalid_json(self) -> None:
        os.makedirs(self.conf_dir)
        with open(self.path, "w") as f:
            f.write('{"admin_user": "admin",')
        self.assertConfigError("not valid JSON")

    def test_not_utf8(self) -> None:
        os.makedirs(self.conf_dir)
        with open(self.path, "wb") as f:
            f.write(b'{"admin_user": "\xff"}')
        self.assertConfigError("not valid JSON")

    def test_not_an_object(self) -> None:
        self.write_raw(["admin_user", "admin"])
        self.assertConfigError("JSON object")

    def test_unknown_key(self) -> None:
        self.write_raw(self.complete_raw(admin_usr="typo"))
        error = self.assertConfigError("'admin_usr'", "unknown key")
        self.assertIn("admin_user", str(error), "the message lists the known keys")

    def test_bad_values_name_key_and_problem(self) -> None:
        cases = [
            ("shell_token_expiry", "3600", "must be an integer between 10 and"),
            ("shell_token_expiry", 5, "must be an integer between 10 and"),
            ("shell_token_expiry", True, "must be an integer"),
            ("default_distro", "fedora:40", 'must be "debian:<suite>"'),
            ("update_url", "ftp://example.org/v.json", "http:// or https://"),
            ("update_url", "https://", "http:// or https://"),
            ("base_image_dir", "relative/images", "absolute path"),
            ("base_image_dir", "/var/../etc", "without '..'"),
            ("admin_user", "bad user!", "must be 1-64 characters"),
            ("admin_user", "", "must be 1-64 characters"),
            ("default_resource_limits", {"cpu_quota_us": 10, "memory_limit_bytes": 536870912},
             "cpu_quota_us"),
            ("default_resource_limits", {"cpu_quota_us": 100000}, "memory_limit_bytes"),
            ("default_resource_limits", {"cpu_quota_us": 100000, "memory_limit_bytes": 536870912,
                                         "swap": 1}, "unknown field"),
            ("sandbox_network", "10.0.0.0/30", "/28 or larger"),
            ("sandbox_outbound", "yes", "true or false"),
            ("shell_host", "localhost", "IP address"),
        ]
        for key, value, problem in cases:
            self.write_raw(self.complete_raw(**{key: value}))
            self.assertConfigError(repr(key), problem)

    def test_good_optional_values_accepted(self) -> None:
        self.write_raw(self.complete_raw(update_url="https://updates.example.org/bolt.json",
                                         shell_host="::1", base_image_dir="/srv/bolt//images/"))
        conf, _ = self.load()
        self.assertEqual(conf["update_url"], "https://updates.example.org/bolt.json")
        self.assertEqual(conf["shell_host"], "::1")
        self.assertEqual(conf["base_image_dir"], "/srv/bolt/images")

    def test_plain_text_password_refused(self) -> None:
        self.write_raw(self.complete_raw(admin_password="hunter2hunter2"))
        error = self.assertConfigError("'admin_password'", "plain-text")
        self.assertNotIn("hunter2hunter2", str(error), "the message must not echo the password")

    def test_null_password_refused(self) -> None:
        self.write_raw(self.complete_raw(admin_password=None))
        self.assertConfigError("'admin_password'")

    def test_unusable_hash_refused(self) -> None:
        """A hash of bolt's format that scrypt cannot evaluate (N not a power of two) is a bad value.

        Accepting it means the server starts, then every login raises inside scrypt instead of
        the server refusing to start with a message naming the key.
        """
        salt = base64.b64encode(b"s" * 16).decode()
        digest = base64.b64encode(b"d" * 32).decode()
        self.write_raw(self.complete_raw(admin_password=f"scrypt$n=3,r=8,p=1${salt}${digest}"))
        self.assertConfigError("'admin_password'")


class WithChangesTests(ConfigTestCase):
    def test_with_changes_validates_and_leaves_original(self) -> None:
        conf, _ = self.load()
        error = self.assertRaises(ConfigError, conf.with_changes, shell_token_expiry=1)
        self.assertIn("'shell_token_expiry'", str(error))
        self.assertEqual(conf["shell_token_expiry"], 3600)
        changed = conf.with_changes(shell_token_expiry=60)
        self.assertEqual(changed["shell_token_expiry"], 60)
        self.assertEqual(conf["shell_token_expiry"], 3600)

    def test_save_then_load_round_trip(self) -> None:
        conf, _ = self.load()
        conf.with_changes(admin_user="root-admin", allowed_ports="15000-15001").save()
        again, generated = self.load()
        self.assertIsNone(generated)
        self.assertEqual(again["admin_user"], "root-admin")
        self.assertEqual(again["allowed_ports"], frozenset({15000, 15001}))
        self.assertEqual(again["admin_password"], conf["admin_password"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
