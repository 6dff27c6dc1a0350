"""Bolt's trial suite: unit tests need nothing; tests under tests/integration need root and real tools."""
