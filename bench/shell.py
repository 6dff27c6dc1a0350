"""Shell figures: connect-to-prompt latency, keystroke round trip, bulk throughput.

Bolt: a raw client (token line with a bare LF, then plain bytes, TCP_NODELAY) on the shell port the
API hands out, into a running sandbox's login bash.
Floor: a local PTY (``os.openpty``, 24x80 like Bolt's default) with the same login bash in the same
sandbox -- ``nsenter --target PID --all /bin/bash -l``, spawned by this script with the environment
Bolt gives its shells -- so both sides run the same shell with the same startup files, and the
ratio is what the server, its helper and the TCP hop add.

* prompt: from ``POST .../shell`` (floor: from the spawn) until the prompt's bytes arrive;
  BOLT_BENCH_PROMPTS (default 30) sessions;
* keystroke: in an established session, one byte sent, timed until readline's echo of it is back;
  BOLT_BENCH_KEYS (default 1000) samples, the line cleared with ^U every 40 keys;
* throughput: ``head -c NM /dev/zero | base64 | cat`` (BOLT_BENCH_SHELL_MB, default 200) run in
  the session, every byte read by the client until an end marker; MB/s = 10^6 bytes per second
  received, the best of two runs.  The ``| cat``: base64 writes to a terminal line-buffered, one
  write(2) per 77-byte line, which caps even a local PTY at ~21 MB/s on the bench VM and would
  measure base64's stdio instead of the terminal path; cat writes what it reads in large blocks.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import time

from bench.common import PROMPT, PtyShell, RawShell, bench_server, drain, ensure_image, figure, read_until, summary

PROMPTS = int(os.environ.get("BOLT_BENCH_PROMPTS", "30"))
KEYS = int(os.environ.get("BOLT_BENCH_KEYS", "1000"))
MEGABYTES = int(os.environ.get("BOLT_BENCH_SHELL_MB", "200"))
SHELL_ENV = {"TERM": "xterm", "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash",
             "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
MARKER = b"BENCH_42"


def keystrokes(shell, count: int) -> list[float]:
    samples = []
    for i in range(count):
        t0 = time.perf_counter()
        shell.send(b"a")
        read_until(shell, b"a", timeout=10)
        samples.append(time.perf_counter() - t0)
        if i % 40 == 39:
            shell.send(b"\x15")  # ^U: clear the line (readline redraws it)
            drain(shell)
    shell.send(b"\x15")
    drain(shell)
    return samples


def throughput(shell, megabytes: int) -> tuple[float, int]:
    """(MB/s, bytes) of ``head -c NM /dev/zero | base64`` received through ``shell``."""
    shell.send(f"head -c {megabytes}M /dev/zero | base64 | cat; echo BENCH_$((6*7))\n".encode())
    received = 0
    tail = b""
    t0 = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if not select.select([shell], [], [], 10)[0]:
            continue
        data = shell.recv(262144)
        if t0 is None:
            t0 = time.perf_counter()  # from the first output byte: the command line's echo
        received += len(data)
        tail = (tail + data)[-64:]
        if MARKER in tail:
            elapsed = time.perf_counter() - t0
            if not PROMPT.search(tail):  # the prompt may have come in the same read as the marker
                read_until(shell, PROMPT, timeout=10)
            return received / elapsed / 1e6, received
    raise TimeoutError("the throughput command did not finish")


def _floor_shell(pid: int) -> PtyShell:
    shell = PtyShell(["nsenter", "--target", str(pid), "--all", "/bin/bash", "-l"], SHELL_ENV)
    fcntl.ioctl(shell.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    return shell


def floor(pid: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"prompt": [], "keys": [], "mbps": []}
    for _ in range(PROMPTS):
        t0 = time.perf_counter()
        shell = _floor_shell(pid)
        try:
            read_until(shell, PROMPT)
            out["prompt"].append(time.perf_counter() - t0)
        finally:
            shell.close()
    _interactive(_floor_shell(pid), out)
    return out


def _interactive(shell, out: dict[str, list[float]]) -> None:
    """Keystroke round trips and bulk output in one session (Bolt's or the floor's), then close it."""
    try:
        read_until(shell, PROMPT)
        drain(shell)
        out["keys"] = keystrokes(shell, KEYS)
        for _ in range(2):
            out["mbps"].append(throughput(shell, MEGABYTES)[0])
    finally:
        shell.close()


def measure() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    out: dict[str, list[float]] = {"prompt": [], "keys": [], "mbps": []}
    config = {"max_shell_sessions_per_sandbox": 1000, "max_shell_sessions": 1000}
    with bench_server(config) as (server, client):
        code, body = client.call("POST", "/api/projects/bench/sandboxes", {"name": "sh"})
        assert code == 201, body
        base = floor(body["pid"])
        path = "/api/projects/bench/sandboxes/sh/shell"
        for _ in range(PROMPTS):
            t0 = time.perf_counter()
            code, body = client.call("POST", path)
            assert code == 200, body
            shell = RawShell(body["port"], body["token"])
            try:
                read_until(shell, PROMPT)
                out["prompt"].append(time.perf_counter() - t0)
            finally:
                shell.close()
        code, body = client.call("POST", path)
        assert code == 200, body
        _interactive(RawShell(body["port"], body["token"]), out)
    return out, base


def run() -> list[tuple[str, dict, dict]]:
    ensure_image()
    ours, base = measure()
    return [
        (f"shell connect to prompt (n={PROMPTS})", summary(ours["prompt"]), summary(base["prompt"])),
        (f"shell keystroke echo (n={KEYS})", summary(ours["keys"]), summary(base["keys"])),
        (f"shell output ({MEGABYTES}M|base64|cat)",
         figure(max(ours["mbps"]), "MB/s", samples=ours["mbps"], higher_is_better=True),
         figure(max(base["mbps"]), "MB/s", samples=base["mbps"], higher_is_better=True)),
    ]
