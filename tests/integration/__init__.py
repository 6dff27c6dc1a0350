"""Integration tests: the real tools, the real twistd, real clients. Root tests fail (not skip) in CI."""
