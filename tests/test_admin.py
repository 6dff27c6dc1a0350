"""Tests for bolt.admin: validating a credentials change, writing it, then swapping credentials."""

from __future__ import annotations

import json
import os
import stat

from twisted.internet import defer
from twisted.trial import unittest

from bolt import config, passwords
from bolt.admin import AdminAccount
from bolt.errors import InvalidInput
from tests.helpers import CHEAP, HeldThreads, inline

OLD = "old-password-1"
NEW = "new-password-2"


class AdminTestCase(unittest.TestCase):
    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        self.path = os.path.join(root, "etc", "config.json")
        self.data_dir = os.path.join(root, "var")
        conf, _ = config.load(self.path, self.data_dir, initial_password=OLD, cost=CHEAP)
        self.account = AdminAccount(conf, run_in_thread=inline, cost=CHEAP)

    def file_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def file_json(self) -> dict:
        return json.loads(self.file_bytes())

    def change(self, body) -> dict:
        return self.successResultOf(self.account.change(body))


class InvalidChangeTests(AdminTestCase):
    def assertRefused(self, body, *fragments: str) -> None:
        before = self.file_bytes()
        credentials, conf = self.account.credentials, self.account.config
        try:
            d = self.account.change(body)
        except InvalidInput as e:
            error = e
        else:
            outcome: list = []
            d.addBoth(outcome.append)  # consume it: no "unhandled error" leaking into other tests
            self.fail(f"change({body!r}) was not refused as InvalidInput; it returned {outcome!r}")
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        self.assertEqual(self.file_bytes(), before, "nothing may be written")
        self.assertIs(self.account.credentials, credentials)
        self.assertIs(self.account.config, conf)
        self.assertTrue(self.account.credentials.check_slow("admin", OLD))

    def test_not_an_object(self) -> None:
        for body in (None, [], "admin", 5):
            self.assertRefused(body, "JSON object")

    def test_empty_body(self) -> None:
        self.assertRefused({}, "admin_user", "admin_password")

    def test_unknown_field(self) -> None:
        self.assertRefused({"admin_password": NEW, "role": "root"}, "'role'")
        self.assertRefused({"password": NEW}, "'password'")

    def test_short_password(self) -> None:
        self.assertRefused({"admin_password": "short"}, "at least 8")

    def test_empty_or_non_string_password(self) -> None:
        for value in ("", None, 12345678, ["x" * 8]):
            self.assertRefused({"admin_password": value}, "admin_password")

    def test_bad_user_name(self) -> None:
        for user in ("", "has space", "semi;colon", "x" * 65, None, 7, "ädmin"):
            self.assertRefused({"admin_user": user}, "admin_user")

    def test_bad_user_with_good_password(self) -> None:
        self.assertRefused({"admin_user": "bad user", "admin_password": NEW}, "admin_user")

    def test_unencodable_password(self) -> None:
        """A lone surrogate (valid in JSON as "\\ud800") cannot be hashed: refuse it as bad input."""
        self.assertRefused({"admin_password": "abc\ud800defgh"}, "admin_password")


class SuccessfulChangeTests(AdminTestCase):
    def test_password_change(self) -> None:
        old_credentials = self.account.credentials
        self.assertEqual(self.change({"admin_password": NEW}), {"admin_user": "admin"})
        creds = self.account.credentials
        self.assertFalse(creds.check_slow("admin", OLD))
        self.assertTrue(creds.check_slow("admin", NEW))
        self.assertIsNot(creds, old_credentials)

    def test_file_holds_new_hash(self) -> None:
        self.change({"admin_password": NEW})
        content = self.file_bytes()
        self.assertNotIn(NEW.encode(), content)
        stored = json.loads(content)["admin_password"]
        self.assertTrue(passwords.is_password_hash(stored))
        self.assertTrue(passwords.verify_password(NEW, stored))
        self.assertFalse(passwords.verify_password(OLD, stored))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["config.json"])

    def test_change_survives_restart(self) -> None:
        self.change({"admin_user": "operator", "admin_password": NEW})
        conf, generated = config.load(self.path, self.data_dir, cost=CHEAP)
        self.assertIsNone(generated)
        self.assertEqual(conf["admin_user"], "operator")
        self.assertTrue(conf.credentials().check_slow("operator", NEW))
        self.assertFalse(conf.credentials().check_slow("admin", NEW))

    def test_user_change_keeps_password(self) -> None:
        stored = self.file_json()["admin_password"]
        self.assertEqual(self.change({"admin_user": "operator"}), {"admin_user": "operator"})
        self.assertEqual(self.file_json()["admin_user"], "operator")
        self.assertEqual(self.file_json()["admin_password"], stored)
        self.assertTrue(self.account.credentials.check_slow("operator", OLD))
        self.assertFalse(self.account.credentials.check_slow("admin", OLD))

    def test_other_settings_kept(self) -> None:
        before = self.file_json()
        self.change({"admin_password": NEW})
        after = self.file_json()
        del before["admin_password"], after["admin_password"]
        self.assertEqual(after, before)

    def test_remembered_pair_forgotten(self) -> None:
        """A pair verified before the change is not accepted by the fast path afterwards."""
        self.assertTrue(self.account.credentials.check_slow("admin", OLD))
        self.assertTrue(self.account.credentials.check_fast("admin", OLD))
        self.change({"admin_password": NEW})
        self.assertFalse(self.account.credentials.check_fast("admin", OLD))

    def test_same_password_again_gets_new_salt(self) -> None:
        stored = self.file_json()["admin_password"]
        self.change({"admin_password": OLD})
        self.assertNotEqual(self.file_json()["admin_password"], stored)
        self.assertTrue(self.account.credentials.check_slow("admin", OLD))

    def test_hash_and_write_happen_in_thread(self) -> None:
        calls = []

        def recording(f, *args):
            calls.append(f)
            return defer.maybeDeferred(f, *args)

        account = AdminAccount(self.account.config, run_in_thread=recording, cost=CHEAP)
        self.successResultOf(account.change({"admin_password": NEW}))
        self.assertEqual(len(calls), 2)
        self.assertIs(calls[0], passwords.hash_password)
        self.assertEqual(calls[1].__name__, "save")

    def test_cost_used(self) -> None:
        self.change({"admin_password": NEW})
        self.assertIn("$n=1024,r=8,p=1$", self.file_json()["admin_password"])


class OrderingTests(AdminTestCase):
    def test_failed_write_changes_nothing(self) -> None:
        def failing_save(f, *args):
            if getattr(f, "__name__", "") == "save":
                return defer.fail(OSError(28, "No space left on device"))
            return defer.maybeDeferred(f, *args)

        before = self.file_bytes()
        account = AdminAccount(self.account.config, run_in_thread=failing_save, cost=CHEAP)
        credentials = account.credentials
        self.failureResultOf(account.change({"admin_password": NEW}), OSError)
        self.assertIs(account.credentials, credentials)
        self.assertTrue(account.credentials.check_slow("admin", OLD))
        self.assertFalse(account.credentials.check_slow("admin", NEW))
        self.assertEqual(self.file_bytes(), before)

    def test_old_password_valid_until_written(self) -> None:
        held = HeldThreads()
        account = AdminAccount(self.account.config, run_in_thread=held, cost=CHEAP)
        d = account.change({"admin_password": NEW})
        self.assertNoResult(d)
        self.assertTrue(account.credentials.check_slow("admin", OLD))
        held.run_all()
        self.successResultOf(d)
        self.assertTrue(account.credentials.check_slow("admin", NEW))

    def test_concurrent_changes_both_apply(self) -> None:
        """A rename and a password change sent together: the result has both, whatever the order."""
        held = HeldThreads()
        account = AdminAccount(self.account.config, run_in_thread=held, cost=CHEAP)
        rename = account.change({"admin_user": "operator"})
        repassword = account.change({"admin_password": NEW})
        held.run_all()
        self.successResultOf(rename)
        self.successResultOf(repassword)
        self.assertEqual(self.file_json()["admin_user"], "operator")
        self.assertTrue(passwords.verify_password(NEW, self.file_json()["admin_password"]))
        self.assertTrue(account.credentials.check_slow("operator", NEW))
