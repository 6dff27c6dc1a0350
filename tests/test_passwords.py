"""Tests for bolt.passwords: the scrypt hash format, verification, new-password rules, Credentials."""

from __future__ import annotations

import base64
import re

from twisted.trial import unittest

from bolt import passwords

CHEAP = {"n": 2 ** 10, "r": 8, "p": 1}


class HashTests(unittest.TestCase):
    def test_format_is_self_describing(self) -> None:
        stored = passwords.hash_password("open sesame", CHEAP)
        m = re.fullmatch(r"scrypt\$n=1024,r=8,p=1\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", stored)
        self.assertIsNotNone(m, stored)
        self.assertEqual(len(base64.b64decode(m.group(1))), 16)
        self.assertEqual(len(base64.b64decode(m.group(2))), 32)
        self.assertTrue(passwords.is_password_hash(stored))

    def test_cost_is_recorded_and_used(self) -> None:
        """A hash made with another cost still verifies: the parameters travel with the hash."""
        stored = passwords.hash_password("open sesame", {"n": 2 ** 11, "r": 4, "p": 2})
        self.assertIn("$n=2048,r=4,p=2$", stored)
        self.assertTrue(passwords.verify_password("open sesame", stored))

    def test_random_salt(self) -> None:
        first = passwords.hash_password("same password", CHEAP)
        second = passwords.hash_password("same password", CHEAP)
        self.assertNotEqual(first, second)
        self.assertNotEqual(first.split("$")[2], second.split("$")[2], "salts must differ")
        self.assertTrue(passwords.verify_password("same password", first))
        self.assertTrue(passwords.verify_password("same password", second))

    def test_hash_does_not_contain_password(self) -> None:
        stored = passwords.hash_password("plaintext-secret", CHEAP)
        self.assertNotIn("plaintext-secret", stored)
        self.assertNotIn(base64.b64encode(b"plaintext-secret").decode(), stored)

    def test_verify_right_and_wrong(self) -> None:
        stored = passwords.hash_password("Tr0ub4dor&3", CHEAP)
        self.assertTrue(passwords.verify_password("Tr0ub4dor&3", stored))
        for wrong in ["Tr0ub4dor&4", "tr0ub4dor&3", "Tr0ub4dor&3 ", "", "Tr0ub4dor"]:
            self.assertFalse(passwords.verify_password(wrong, stored), wrong)

    def test_verify_non_ascii(self) -> None:
        stored = passwords.hash_password("pässwörd-✓-密码", CHEAP)
        self.assertTrue(passwords.verify_password("pässwörd-✓-密码", stored))
        self.assertFalse(passwords.verify_password("passwörd-✓-密码", stored))

    def test_verify_against_something_that_is_not_a_hash(self) -> None:
        for stored in ["hunter2hunter2", "", "scrypt$n=1024$abc", "bcrypt$2b$12$abcdefgh"]:
            self.assertFalse(passwords.verify_password("hunter2hunter2", stored), stored)

    def test_is_password_hash(self) -> None:
        good = passwords.hash_password("whatever1", CHEAP)
        self.assertTrue(passwords.is_password_hash(good))
        for value in [None, 42, b"scrypt$", "hunter2hunter2", good + "\n", " " + good,
                      good.replace("scrypt", "bcrypt"), good.split("$", 3)[0]]:
            self.assertFalse(passwords.is_password_hash(value), value)

    def test_default_cost_is_owasp(self) -> None:
        """Without an explicit cost the hash uses OWASP's scrypt minimum (slow: done once)."""
        stored = passwords.hash_password("default-cost-password")
        self.assertIn("$n=131072,r=8,p=1$", stored)
        creds = passwords.Credentials("admin", stored)
        self.assertTrue(creds.check_slow("admin", "default-cost-password"))


class NewPasswordTests(unittest.TestCase):
    def test_acceptable(self) -> None:
        for ok in ["12345678", "a" * 8, "correct horse battery staple", "ü" * 8, "x" * 1024]:
            self.assertIsNone(passwords.check_new_password(ok), ok)

    def test_empty(self) -> None:
        self.assertIn("non-empty", passwords.check_new_password(""))

    def test_too_short(self) -> None:
        for short in ["a", "1234567", "       "[:7]]:
            problem = passwords.check_new_password(short)
            self.assertIsNotNone(problem, short)
            self.assertIn("at least 8", problem)

    def test_too_long(self) -> None:
        problem = passwords.check_new_password("x" * 1025)
        self.assertIsNotNone(problem)
        self.assertIn("at most 1024", problem)

    def test_not_a_string(self) -> None:
        for value in [None, 12345678, b"bytes-password", ["12345678"], {"p": "12345678"}]:
            problem = passwords.check_new_password(value)
            self.assertIsNotNone(problem, value)
            self.assertIn("string", problem)

    def test_unencodable_password_refused(self) -> None:
        """A password that cannot be hashed must be refused here, not crash the hashing later.

        JSON allows lone surrogates ("\\ud800"), and os.environ turns undecodable bytes of
        BOLT_ADMIN_PASSWORD into surrogates; hash_password encodes as strict UTF-8.
        """
        password = "abc\ud800defgh"
        problem = passwords.check_new_password(password)
        if problem is None:
            try:
                passwords.hash_password(password, CHEAP)
            except UnicodeError as e:
                self.fail(f"check_new_password accepted a password hash_password cannot hash: {e}")

    def test_generated_password(self) -> None:
        first = passwords.generate_password()
        second = passwords.generate_password()
        self.assertNotEqual(first, second)
        self.assertGreaterEqual(len(first), 20)
        self.assertIsNone(passwords.check_new_password(first))
        self.assertRegex(first, r"\A[A-Za-z0-9_-]+\Z")


class CredentialsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.creds = passwords.Credentials("admin", passwords.hash_password("s3cret-pass", CHEAP))

    def test_fast_check_false_before_slow_check(self) -> None:
        self.assertFalse(self.creds.check_fast("admin", "s3cret-pass"))

    def test_fast_check_true_after_slow_check(self) -> None:
        self.assertTrue(self.creds.check_slow("admin", "s3cret-pass"))
        self.assertTrue(self.creds.check_fast("admin", "s3cret-pass"))

    def test_fast_check_only_for_the_verified_pair(self) -> None:
        self.assertTrue(self.creds.check_slow("admin", "s3cret-pass"))
        self.assertFalse(self.creds.check_fast("admin", "s3cret-pasS"))
        self.assertFalse(self.creds.check_fast("Admin", "s3cret-pass"))
        self.assertFalse(self.creds.check_fast("admin", ""))
        # user and password are separated: moving characters between them is another pair
        self.assertFalse(self.creds.check_fast("admins", "3cret-pass"))

    def test_wrong_password_refused_and_not_remembered(self) -> None:
        self.assertFalse(self.creds.check_slow("admin", "wrong-pass"))
        self.assertFalse(self.creds.check_fast("admin", "wrong-pass"))
        self.assertFalse(self.creds.check_fast("admin", "s3cret-pass"))

    def test_wrong_user_refused(self) -> None:
        self.assertFalse(self.creds.check_slow("root", "s3cret-pass"))
        self.assertFalse(self.creds.check_slow("", "s3cret-pass"))
        self.assertFalse(self.creds.check_slow("admin ", "s3cret-pass"))
        self.assertFalse(self.creds.check_fast("root", "s3cret-pass"))
        self.assertFalse(self.creds.check_fast("admin", "s3cret-pass"))

    def test_non_ascii_user_refused_without_error(self) -> None:
        self.assertFalse(self.creds.check_slow("ädmin", "s3cret-pass"))

    def test_verified_pair_is_per_credentials_object(self) -> None:
        """New credentials (after a change) forget what the old ones verified."""
        self.assertTrue(self.creds.check_slow("admin", "s3cret-pass"))
        fresh = passwords.Credentials("admin", self.creds.password_hash)
        self.assertFalse(fresh.check_fast("admin", "s3cret-pass"))

    def test_later_failure_keeps_earlier_success(self) -> None:
        self.assertTrue(self.creds.check_slow("admin", "s3cret-pass"))
        self.assertFalse(self.creds.check_slow("admin", "not-it-at-all"))
        self.assertTrue(self.creds.check_fast("admin", "s3cret-pass"))
