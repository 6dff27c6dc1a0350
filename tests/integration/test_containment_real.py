"""Escapes and containment (issue 10), tried from inside real sandboxes through the exec API, as root.

Every attempt a process in a sandbox could make to reach the host -- kernel interfaces, mounts,
namespaces, devices, modules, the clock, sysctls, other processes, the host's loopback services,
another sandbox's address -- must fail, and the tests assert that it does with a message that says
what got through.  Each one is paired with a positive control (the same action on the host, or a
benign variant inside, succeeds) so that a broken probe cannot pass for a contained sandbox.

Most of it rests on the seccomp filter that bolt-sandbox installs in every sandbox process (see
"seccomp" in bolt/host/native/bolt-sandbox.c); the rest on the capability set, the read-only and
nodev mounts, the pid namespace and the firewall.  Decisions the tests pin down:

* ptrace and process_vm_readv/writev are allowed on kernels from 4.8 on, as in Docker's profile:
  a process may trace its own children (gdb and strace work), but not pid 1 (non-dumpable, and
  CAP_SYS_PTRACE is not in the set), and nothing outside the sandbox, which its pid namespace does not
  even show.  kcmp, pidfd_getfd and process_madvise are refused, as in Docker.
* name_to_handle_at and clock_adjtime are allowed, as in Docker (open_by_handle_at is refused, and
  clock_adjtime changes nothing without CAP_SYS_TIME); io_uring is refused, unlike older Docker
  profiles.
* personality(2) accepts only Docker's five personas (so ``setarch -R`` fails, ``setarch i686``
  works).
* clone3 fails with ENOSYS (glibc falls back to clone, whose flags the filter can read).
* /proc/sysrq-trigger: some kernels (this development VM's among them) are built without magic SysRq
  and have no such file; the test then checks that it is absent inside too.

Speed and hygiene follow tests/integration/test_runtime_api_real.py, whose SharedFixture and
ServerTestMixin are reused: one shared real server per run of the class, started by the first test's
``setUp`` and torn down (with a check that nothing was left behind) by the last test,
``test_zz_...``; an ``atexit`` hook closes a server that a filtered run left open.  System call
numbers are x86_64's (asm/unistd_64.h): elsewhere the class skips.

Network traffic stays on this machine: loopback, the server's gateway address and the sandboxes'
addresses, all in namespaces the server made.
"""

from __future__ import annotations

import errno
import os
import platform
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.integration.support import ensure_test_image, require_root, require_tools
from tests.integration.test_runtime_api_real import ServerTestMixin, SharedFixture, read_text

BUSYBOX = "/bin/busybox"
NOPE = "/nonexistent-bolt-test"
KERNEL_PTRACE_SAFE = (4, 8)

# (label, x86_64 number, perl arguments, run on the host too): each must fail inside with EPERM
# (clone3: ENOSYS).  Arguments are chosen so that none of them changes anything on the host, where
# "host" ones run as a control: as root without the filter they succeed or fail with some other
# errno, so EPERM inside comes from the sandbox, not from the probe.  The rest (module loading,
# kexec, reboot, swap, accounting, ...) are run inside only.
SYSCALLS = [
    ("keyctl", 250, "0, -3, 0", True),                      # KEYCTL_GET_KEYRING_ID, session keyring
    ("add_key", 248, '"user", "bolt-test", "v", 1, -2', False),
    ("request_key", 249, '"user", "bolt-no-such-key", 0, 0', True),
    ("unshare_mount", 272, "0x00020000", True),
    ("unshare_user", 272, "0x10000000", True),
    ("unshare_net", 272, "0x40000000", True),
    ("unshare_pid", 272, "0x20000000", True),
    ("setns", 308, "-1, 0", True),
    ("mount", 165, f'"none", "{NOPE}", "tmpfs", 0, 0', True),
    ("umount2", 166, f'"{NOPE}", 0', True),
    ("pivot_root", 155, f'"{NOPE}", "{NOPE}"', True),
    ("open_tree", 428, '-100, "/", 0', True),
    ("fsopen", 430, '"tmpfs", 0', True),
    ("fspick", 433, '-100, "/", 0', True),
    ("move_mount", 429, '-1, "", -1, "", 0', True),
    ("fsconfig", 431, "-1, 0, 0, 0, 0", True),
    ("fsmount", 432, "-1, 0, 0", True),
    ("mount_setattr", 442, '-1, "", 0, 0, 0', True),
    ("clock_settime", 227, "0, 0", True),                   # NULL timespec: EFAULT on the host
    ("settimeofday", 164, "0, 0", True),                    # NULL, NULL: a no-op on the host
    ("init_module", 175, '"", 0, ""', False),
    ("finit_module", 313, '-1, "", 0', False),
    ("delete_module", 176, '"bolt_no_such_module", 0x800', False),
    ("kexec_load", 246, "0, 0, 0, 0", False),
    ("kexec_file_load", 320, '-1, -1, 0, "", 0', False),
    ("reboot", 169, "0, 0, 0, 0", False),
    ("swapon", 167, f'"{NOPE}", 0', False),
    ("swapoff", 168, f'"{NOPE}"', False),
    ("acct", 163, f'"{NOPE}/x"', False),
    ("quotactl", 179, "0, 0, 0, 0", False),
    ("bpf", 321, "0, 0, 0", True),
    ("perf_event_open", 298, "0, 0, -1, -1, 0", True),
    ("lookup_dcookie", 212, "0, 0, 0", True),
    ("syslog", 103, "10, 0, 0", True),                      # SYSLOG_ACTION_SIZE_BUFFER
    ("userfaultfd", 323, "0x80000", True),
    ("io_uring_setup", 425, '1, "\\0" x 120', True),
    ("open_by_handle_at", 304, "-1, 0, 0", True),
    ("kcmp", 312, "$$, $$, 0, 1, 1", True),                 # KCMP_FILE: our fd 1 against itself
    ("pidfd_getfd", 438, "-1, 0, 0", True),
    ("process_madvise", 440, "-1, 0, 0, 0, 0", True),
    ("iopl", 172, "0", True),
    ("ioperm", 173, "0, 0, 0", True),
    ("get_mempolicy", 239, "0, 0, 0, 0, 0", True),
    ("set_mempolicy", 238, "0, 0, 0", True),              # MPOL_DEFAULT
    ("mbind", 237, "0, 0, 0, 0, 0, 0", True),
    ("move_pages", 279, "0, 0, 0, 0, 0, 0", True),
    ("migrate_pages", 256, "0, 0, 0, 0", True),
    ("sethostname", 170, '"other", 5', False),
    ("personality_addr_no_randomize", 135, "0x0040000", True),
    ("personality_read_implies_exec", 135, "0x0400000", True),
    ("personality_mmap_page_zero", 135, "0x0100000", True),
    ("personality_high_bits", 135, "0x100000000", True),
    ("socket_vsock", 41, "40, 1, 0", True),                 # AF_VSOCK, SOCK_STREAM
    ("socket_vsock_high_bits", 41, "0x100000028, 1, 0", False),
    ("clone3", 435, "0, 0", True),
]
EXPECTED_INSIDE = {label: (errno.ENOSYS if label == "clone3" else errno.EPERM) for label, *_ in SYSCALLS}
# Harmless calls that must keep working inside (the probe itself is sound).
ALLOWED = [
    ("getpid", 39, "", True),
    ("personality_query", 135, "0xffffffff", True),
    ("personality_linux32", 135, "0x0008", True),
    ("socket_inet", 41, "2, 2, 0", True),                   # AF_INET, SOCK_DGRAM
]
# On the host, as root and without a filter, none of these can fail with EPERM: only the filter
# refuses them inside (capabilities alone would let most of them through).
FILTER_ONLY = ("keyctl", "request_key", "unshare_user", "open_tree", "fsopen", "kcmp",
               "personality_addr_no_randomize", "get_mempolicy", "clone3")

CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


def syscall_script(calls) -> str:
    """Perl that makes each call in a child of its own (an unshare must not affect the next call) and
    prints ``label result errno`` per call."""
    lines = ["use POSIX ();", "$| = 1;"]
    for label, number, args, _ in calls:
        lines.append(
            f'{{ my $pid = fork(); die "fork: $!" unless defined $pid; '
            f'if ($pid == 0) {{ my @a = ({args}); $! = 0; my $r = syscall({number}, @a); '
            f'printf("%s %d %d\\n", "{label}", $r, $r == -1 ? $! + 0 : 0); POSIX::_exit(0); }} '
            f'waitpid($pid, 0); }}')
    return "\n".join(lines)


def parse_results(stdout: str) -> dict[str, tuple[int, int]]:
    results = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            results[parts[0]] = (int(parts[1]), int(parts[2]))
    return results


def describe(results: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{label}={value if value != -1 else errno.errorcode.get(err, err)}"
                     for label, (value, err) in results.items())


def kernel_version() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def free_port(lo: int = 10000, hi: int = 19999) -> int:
    """A TCP and UDP port in the server's allowed_ports that nothing on the host uses."""
    import random
    for _ in range(500):
        port = random.randint(lo, hi)
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("0.0.0.0", port))
                u.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port")


def host_disk() -> tuple[str, int, int] | None:
    """(/dev node, major, minor) of a non-empty block device of the host, or None."""
    base = "/sys/dev/block"
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            size = int(read_text(os.path.join(base, entry, "size")))
            fields = dict(line.split("=", 1) for line in read_text(os.path.join(base, entry, "uevent")).split())
        except (OSError, ValueError):
            continue
        node = "/dev/" + fields.get("DEVNAME", "")
        if size > 0 and os.path.exists(node):
            major, minor = entry.split(":")
            return node, int(major), int(minor)
    return None


def host_addresses() -> list[str]:
    """The host's own global IPv4 addresses."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


def status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if _}


class BannerServer:
    """A TCP server on the host that greets every client with a banner and records who connected."""

    def __init__(self, host: str, port: int) -> None:
        self.banner = f"bolt-host-{secrets.token_hex(6)}"
        self.peers: list[str] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.peers.append(peer[0])
            with conn:
                try:
                    conn.sendall(self.banner.encode() + b"\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


class UdpSink:
    """A UDP socket on the host that records every datagram (payload, source) for a while."""

    def __init__(self, host: str, port: int) -> None:
        self.received: list[tuple[bytes, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            self.received.append((data, peer[0]))

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


class WireTap:
    """Every IPv4 UDP packet carrying ``token`` that reaches (or leaves) any host interface, seen with
    a packet socket -- before netfilter: it shows what a sandbox actually put on its link."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.seen: list[tuple[str, str, str, bytes]] = []  # (interface, source, destination, payload)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                packet, address = self.sock.recvfrom(65535)
            except OSError:
                continue
            if len(packet) < 28 or packet[9] != 17 or self.token not in packet:
                continue
            header = (packet[0] & 0x0F) * 4
            self.seen.append((address[0], socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]),
                              packet[header + 8:]))

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


# A UDP listener for inside a sandbox: appends "<source> <payload>" per datagram to a log file.
UDP_LISTENER = r"""
use Socket;
my ($port, $log, $seconds) = @ARGV;
socket(my $s, PF_INET, SOCK_DGRAM, 0) or die "socket: $!";
bind($s, sockaddr_in($port, INADDR_ANY)) or die "bind: $!";
open(my $f, ">>", $log) or die "open: $!";
select((select($f), $| = 1)[0]);
print $f "ready\n";
my $end = time + $seconds;
while (time < $end) {
    my $rin = '';
    vec($rin, fileno($s), 1) = 1;
    next unless select(my $rout = $rin, undef, undef, 0.2);
    my $from = recv($s, my $buf, 4096, 0);
    next unless defined $from;
    my (undef, $addr) = sockaddr_in($from);
    print $f inet_ntoa($addr), " ", $buf, "\n";
}
"""

# One UDP datagram with any source address, through a raw IPPROTO_RAW socket (IP_HDRINCL implied;
# the kernel fills in the IP checksum; a UDP checksum of 0 means none).  Needs CAP_NET_RAW, which
# is in Docker's set and so in a sandbox's.
RAW_UDP_SENDER = r"""
use Socket;
my ($src, $dst, $port, $payload) = @ARGV;
socket(my $r, PF_INET, SOCK_RAW, 255) or die "raw socket: $!";
my $udp = pack("nnnn", 40000, $port, 8 + length($payload), 0) . $payload;
my $ip = pack("CCnnnCCna4a4", 0x45, 0, 20 + length($udp), 0, 0x4000, 64, 17, 0,
              inet_aton($src), inet_aton($dst));
send($r, $ip . $udp, 0, sockaddr_in(0, inet_aton($dst))) or die "send: $!";
print "sent\n";
"""

# ptrace from inside: attach to a child of our own (allowed from Linux 4.8, like Docker), to pid 1
# and to a pid given on the command line; prints "label result errno".
PTRACE_SCRIPT = r"""
use POSIX ();
$| = 1;
my ($other) = @ARGV;
sub attach {
    my ($label, $pid) = @_;
    $! = 0;
    my $r = syscall(101, 16, $pid, 0, 0);                      # PTRACE_ATTACH
    printf("%s %d %d\n", $label, $r, $r == -1 ? $! + 0 : 0);
    if ($r == 0) { waitpid($pid, 0); syscall(101, 17, $pid, 0, 0); }   # PTRACE_DETACH
}
my $child = fork();
if ($child == 0) { sleep 30; POSIX::_exit(0); }
attach("own_child", $child);
kill 9, $child;
waitpid($child, 0);
attach("pid1", 1) if $other ne "host";
attach("outside", $other) if $other =~ /^\d+$/;
"""

# i386 (int $0x80) and x32 system calls from a 64-bit static program without libc: the filter must
# cover every ABI a process can enter the kernel through.  Built on the host with cc.
ABI_PROGRAM = r"""
static long i386_call(long nr, long a, long b, long c)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}

static long x64_call(long nr, long a, long b, long c)
{
    long r;
    register long r10 __asm__("r10") = 0;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return r;
}

static void put(const char *label, long value)
{
    char buf[64], digits[24];
    int n = 0, len = 0;
    unsigned long v = value < 0 ? -(unsigned long)value : (unsigned long)value;
    while (label[len])
        buf[n++] = label[len++];
    buf[n++] = ' ';
    if (value < 0)
        buf[n++] = '-';
    len = 0;
    do {
        digits[len++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (len)
        buf[n++] = digits[--len];
    buf[n++] = '\n';
    x64_call(1, 1, (long)buf, n);
}

#define X32 0x40000000L

__attribute__((force_align_arg_pointer)) void _start(void)
{
    put("i386_getpid", i386_call(20, 0, 0, 0));
    put("i386_unshare", i386_call(310, 0x04000000, 0, 0));         /* CLONE_NEWUTS */
    put("i386_personality", i386_call(136, 0x0040000, 0, 0));      /* ADDR_NO_RANDOMIZE */
    put("i386_keyctl", i386_call(288, 0, -3, 0));                  /* KEYCTL_GET_KEYRING_ID */
    put("i386_mount", i386_call(21, 0, 0, 0));
    put("i386_clock_settime", i386_call(264, 0, 0, 0));
    put("x32_getpid", x64_call(X32 | 39, 0, 0, 0));
    put("x32_unshare", x64_call(X32 | 272, 0x04000000, 0, 0));
    x64_call(60, 0, 0, 0);
    for (;;)
        ;
}
"""


# --- the tests -------------------------------------------------------------------------------------------


SHARED = SharedFixture("test_containment_real")


class ContainmentTests(ServerTestMixin, unittest.TestCase):
    # The first test may build the shared image (debootstrap) when the cache is empty.
    timeout = 900

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        if platform.machine() != "x86_64":
            raise unittest.SkipTest("the system call numbers here are x86_64's")
        require_tools(self, "mount", "umount", "perl", "busybox", "cc", "setarch", "unshare", "ip")
        yield ensure_test_image(reactor)
        self.fx = SHARED.get()
        self.main = "main"
        code, body = self.fx.api("GET", f"/api/projects/{self.main}")
        if code == 404:
            self.call("POST", "/api/projects", {"name": self.main}, expect=201)

    # -- helpers ------------------------------------------------------------------------------------------

    def rootfs(self, box: dict) -> str:
        return os.path.join(self.fx.server.data_dir, "sandboxes", box["project"], box["name"], "rootfs")

    def put_file(self, box: dict, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Place a file in a sandbox's root filesystem from the host (its overlay, as root)."""
        target = os.path.join(self.rootfs(box), path.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(target, mode)

    def add_busybox(self, box: dict) -> None:
        shutil.copy(BUSYBOX, os.path.join(self.rootfs(box), "usr", "local", "bin", "busybox"))

    def fails(self, box: dict, command, what: str, *, contains: str | None = None, **fields) -> dict:
        """Run a command that must fail inside; assert it did (and said ``contains``)."""
        result = self.exec(box, command, **fields)
        self.assertNotEqual(result["exit_code"], 0, f"{what} succeeded inside the sandbox: {command!r} -> {result}")
        if contains is not None:
            self.assertIn(contains, result["stderr"], f"{what}: unexpected error from {command!r}: {result}")
        return result

    def run_syscalls(self, box: dict, calls) -> dict[str, tuple[int, int]]:
        result = self.exec(box, ["perl", "-e", syscall_script(calls)], timeout=60)
        self.assertEqual(result["exit_code"], 0, f"the perl probe failed inside: {result}")
        return parse_results(result["stdout"])

    @staticmethod
    def run_syscalls_on_host(calls) -> dict[str, tuple[int, int]]:
        out = subprocess.run(["perl", "-e", syscall_script(calls)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        return parse_results(out.stdout)

    # -- the filter is there -----------------------------------------------------------------------------

    def test_every_sandbox_process_runs_under_the_seccomp_filter(self):
        box = self.make_sandbox(self.main)
        server = status_fields(read_text(f"/proc/{self.fx.server.process.pid}/status"))
        self.assertIn("Seccomp", server, "test precondition: /proc/PID/status has a Seccomp field")
        inherited = int(server.get("Seccomp_filters", "0"))  # a systemd unit may add its own
        for what, text in (("an exec", self.ok(box, ["cat", "/proc/self/status"])),
                           ("a grandchild", self.ok(box, ["sh", "-c", "sh -c 'cat /proc/self/status'"])),
                           ("pid 1, seen inside", self.ok(box, ["cat", "/proc/1/status"])),
                           ("pid 1, seen from the host", read_text(f"/proc/{box['pid']}/status"))):
            fields = status_fields(text)
            self.assertEqual(fields.get("Seccomp"), "2", f"{what}: not in seccomp filter mode: {fields}")
            self.assertEqual(int(fields.get("Seccomp_filters", "0")), inherited + 1,
                             f"{what}: expected the server's {inherited} filter(s) plus bolt's: {fields}")
            self.assertEqual(fields.get("NoNewPrivs"), "1", f"{what}: {fields}")

    def test_refused_system_calls_fail_with_eperm(self):
        box = self.make_sandbox(self.main)
        inside = self.run_syscalls(box, ALLOWED + SYSCALLS)
        # Positive controls: the probe works, and harmless calls (and the allowed personas) go through.
        for label, *_ in ALLOWED:
            self.assertIn(label, inside, f"the probe printed nothing for {label}: {describe(inside)}")
            self.assertGreaterEqual(inside[label][0], 0, f"{label} must work inside: {describe(inside)}")
        wrong = {label: inside.get(label) for label, *_ in SYSCALLS
                 if inside.get(label, (0, 0)) != (-1, EXPECTED_INSIDE[label])}
        self.assertEqual(wrong, {}, "system calls not refused as expected inside "
                                    f"(want -1/EPERM, clone3 -1/ENOSYS); all results: {describe(inside)}")
        # Control: on the host (root, no filter) the same calls get through to the kernel.
        host = self.run_syscalls_on_host([c for c in ALLOWED + SYSCALLS if c[3]])
        refused_on_host = [label for label in FILTER_ONLY if host.get(label, (0, 0)) == (-1, errno.EPERM)]
        self.assertEqual(refused_on_host, [], f"test precondition: the host itself refuses these: {describe(host)}")

    def test_personality_is_limited_to_dockers_list(self):
        box = self.make_sandbox(self.main)
        self.fails(box, ["setarch", "x86_64", "-R", "true"], "setarch -R (ADDR_NO_RANDOMIZE)",
                   contains="Operation not permitted")
        self.fails(box, ["setarch", "x86_64", "--read-implies-exec", "true"], "setarch -X (READ_IMPLIES_EXEC)",
                   contains="Operation not permitted")
        # Control: the personas Docker allows still work, PER_LINUX32 and UNAME26.
        self.assertEqual(self.ok(box, ["setarch", "i686", "uname", "-m"]).strip(), "i686")
        self.assertEqual(self.ok(box, ["setarch", "x86_64", "--uname-2.6", "uname", "-r"]).split(".")[0], "2")
        # Control: the host may disable address randomization for a program.
        subprocess.run(["setarch", "x86_64", "-R", "true"], check=True)

    def test_the_i386_and_x32_entry_points_are_filtered_too(self):
        box = self.make_sandbox(self.main)
        with tempfile.TemporaryDirectory() as tmp:
            source, binary = os.path.join(tmp, "abi.c"), os.path.join(tmp, "abi")
            with open(source, "w") as f:
                f.write(ABI_PROGRAM)
            subprocess.run(["cc", "-static", "-nostdlib", "-fno-stack-protector", "-fno-pie", "-no-pie", "-O2",
                            "-o", binary, source], check=True)
            host = parse_results("\n".join(f"{line} 0" for line in
                                           subprocess.run([binary], capture_output=True, text=True,
                                                          check=True).stdout.splitlines()))
            with open(binary, "rb") as f:
                self.put_file(box, "/usr/local/bin/abi", f.read(), 0o755)
        inside = parse_results("\n".join(f"{line} 0" for line in self.ok(box, ["abi"]).splitlines()))
        # Control: the program works (i386 getpid inside the sandbox's pid namespace), and on the host
        # the same calls reach the kernel.
        self.assertGreater(inside["i386_getpid"][0], 0, inside)
        self.assertEqual(host["i386_unshare"][0], 0, f"test precondition: i386 unshare works on the host: {host}")
        self.assertNotEqual(host["i386_keyctl"][0], -errno.EPERM, host)
        for label in ("i386_unshare", "i386_personality", "i386_keyctl", "i386_mount", "i386_clock_settime",
                      "x32_unshare"):
            self.assertEqual(inside[label][0], -errno.EPERM, f"{label} not refused inside: {inside}")
        # x32 itself is often compiled out or off (ENOSYS); when the kernel runs it, getpid works.
        self.assertTrue(inside["x32_getpid"][0] > 0 or inside["x32_getpid"][0] == -errno.ENOSYS, inside)

    # -- namespaces and mounts ------------------------------------------------------------------------------

    def test_namespaces_can_be_neither_made_nor_joined(self):
        box = self.make_sandbox(self.main)
        for flag in ("-m", "-n", "-U", "-i", "-u", "-C", "-p -f", "-T"):
            self.fails(box, f"unshare {flag} true", f"unshare {flag}", contains="Operation not permitted")
        for target in ("-t 1 -m", "-t 1 -n", "--net=/proc/self/ns/net", "--mount=/proc/1/ns/mnt"):
            self.fails(box, f"nsenter {target} true", f"nsenter {target}")
        script = ["use POSIX ();", "$| = 1;"]
        for name, flag in [("plain_fork", 0)] + list(CLONE_NAMESPACE_FLAGS.items()):
            script.append(f'{{ $! = 0; my $r = syscall(56, {flag} | 17, 0, 0, 0, 0); '
                          f'POSIX::_exit(0) if $r == 0; waitpid($r, 0) if $r > 0; '
                          f'printf("%s %d %d\\n", "{name}", $r, $r == -1 ? $! + 0 : 0); }}')
        results = parse_results(self.ok(box, ["perl", "-e", "\n".join(script)]))
        self.assertGreater(results["plain_fork"][0], 0, f"clone without namespace flags must work: {results}")
        for name in CLONE_NAMESPACE_FLAGS:
            self.assertEqual(results.get(name), (-1, errno.EPERM), f"clone({name}) not refused: {describe(results)}")
        # Control: root on the host can make every one of them.
        subprocess.run(["unshare", "-m", "-n", "-U", "-i", "-u", "-C", "-p", "-f", "true"], check=True)

    def test_nothing_can_be_mounted_or_unmounted(self):
        box = self.make_sandbox(self.main)
        before = self.ok(box, ["cat", "/proc/self/mountinfo"])
        for command in ("mount -t tmpfs none /mnt", "mount --bind /tmp /mnt", "mount -t proc proc /mnt",
                        "mount -o remount,rw /proc/sys", "mount -o remount,rw /sys", "mount -o remount,dev /",
                        "umount /proc/sys", "umount -l /proc/kcore", "umount -l /dev/null"):
            self.fails(box, command, "mounting")
        self.assertEqual(self.ok(box, ["cat", "/proc/self/mountinfo"]), before, "the sandbox's mounts changed")
        # Control: the same mount works on the host.
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "bolt-test", tmp], check=True)
            subprocess.run(["umount", tmp], check=True)

    # -- /proc, devices, modules, clock, sysctls ------------------------------------------------------------

    def test_proc_sysrq_trigger_and_proc_sys_cannot_be_written(self):
        box = self.make_sandbox(self.main)
        self.add_busybox(box)
        if os.path.exists("/proc/sysrq-trigger"):
            # "h" only prints the SysRq help to the kernel log, should it ever get through.
            self.fails(box, "echo h > /proc/sysrq-trigger", "writing /proc/sysrq-trigger",
                       contains="Read-only file system")
        else:  # a kernel without CONFIG_MAGIC_SYSRQ: nothing to write, inside either
            self.fails(box, ["test", "-e", "/proc/sysrq-trigger"], "/proc/sysrq-trigger present inside")
        path = "/proc/sys/kernel/printk_ratelimit"  # global, harmless
        before = read_text(path)
        changed = str(int(before) + 1)
        self.addCleanup(self._restore, path, before)
        self.assertEqual(self.ok(box, ["cat", path]), before, "control: the sysctl is readable inside")
        self.fails(box, f"echo {changed} > {path}", "writing /proc/sys", contains="Read-only file system")
        self.fails(box, ["busybox", "sysctl", "-w", f"kernel.printk_ratelimit={changed}"], "sysctl -w")
        self.assertEqual(read_text(path), before, "the host's sysctl changed")

    @staticmethod
    def _restore(path: str, value: str) -> None:
        if read_text(path) != value:
            with open(path, "w") as f:
                f.write(value)

    def test_device_nodes_made_inside_cannot_be_opened(self):
        box = self.make_sandbox(self.main)
        disk = host_disk()
        self.assertIsNotNone(disk, "test precondition: the host has a block device with data on it")
        _, major, minor = disk
        # Control: a node made the same way on the host, where the filesystem allows devices, opens:
        # the numbers are right and only nodev stands in the way inside.  (/dev/zero, 1:5, so that the
        # control reads nothing that matters.)
        with tempfile.TemporaryDirectory() as tmp:
            os.mknod(os.path.join(tmp, "zero"), 0o600 | stat.S_IFCHR, os.makedev(1, 5))
            with open(os.path.join(tmp, "zero"), "rb") as f:
                self.assertEqual(f.read(3), b"\0\0\0")
        for where in ("/tmp", "/root", "/dev/shm", "/dev"):
            # CAP_MKNOD is in Docker's set: the nodes are made, with the host's numbers...
            made = self.exec(box, f"mknod {where}/disk b {major} {minor} && stat -c '%F %t:%T' {where}/disk")
            if made["exit_code"] == 0:
                self.assertEqual(made["stdout"].split(), ["block", "special", "file", f"{major:x}:{minor:x}"], made)
            # ...but every writable filesystem is nodev: none of them opens.
            result = self.fails(box, f"head -c 512 {where}/disk > /dev/null", f"reading the host's disk through {where}")
            if made["exit_code"] == 0:
                self.assertIn("Permission denied", result["stderr"], result)
            for name, numbers in (("made-mem", "1 1"), ("made-zero", "1 5")):
                self.fails(box, f"mknod {where}/{name} c {numbers} && head -c 1 {where}/{name} > /dev/null",
                           f"opening a {name} node made in {where}", contains="Permission denied")
        # Control: the devices Bolt provides work.
        self.assertEqual(self.ok(box, "head -c 3 /dev/zero | od -An -tx1").split(), ["00", "00", "00"])

    def test_kernel_modules_cannot_be_loaded(self):
        box = self.make_sandbox(self.main)
        self.fails(box, "command -v insmod || command -v modprobe", "finding insmod/modprobe (minbase has no kmod)")
        # The real calls, with a real file and buffer: EPERM from the filter, whatever the kernel's
        # module support.
        script = r"""
            $| = 1;
            open(my $f, "<", "/bin/true") or die "open: $!";
            my $params = "";
            $! = 0; my $r = syscall(313, fileno($f), $params, 0);
            printf("finit_module %d %d\n", $r, $! + 0);
            my $image = "\x7fELF" . ("\0" x 4096); my $len = length($image);
            $! = 0; $r = syscall(175, $image, $len, $params);
            printf("init_module %d %d\n", $r, $! + 0);
            my $name = "ext4";
            $! = 0; $r = syscall(176, $name, 0x800);
            printf("delete_module %d %d\n", $r, $! + 0);
            printf("getpid %d 0\n", syscall(39));
        """
        results = parse_results(self.ok(box, ["perl", "-e", script]))
        self.assertGreater(results["getpid"][0], 0, results)
        for label in ("finit_module", "init_module", "delete_module"):
            self.assertEqual(results[label], (-1, errno.EPERM), f"{label} not refused: {describe(results)}")

    def test_the_clock_cannot_be_set(self):
        box = self.make_sandbox(self.main)
        before = time.time()
        self.fails(box, ["date", "-s", "2001-02-03 04:05:06"], "date -s", contains="Operation not permitted")
        # clock_settime and settimeofday: refused by the filter.  clock_adjtime is allowed (as in
        # Docker) because it only reads without CAP_SYS_TIME: a step (ADJ_SETOFFSET) is refused by the
        # kernel, while a read (no modes) works -- the control.
        script = r"""
            $| = 1;
            my $ts = pack("qq", 981173106, 0);
            $! = 0; my $r = syscall(227, 0, $ts); printf("clock_settime %d %d\n", $r, $! + 0);
            my $tv = pack("qq", 981173106, 0);
            $! = 0; $r = syscall(164, $tv, 0); printf("settimeofday %d %d\n", $r, $! + 0);
            my $step = pack("L", 0x0100) . ("\0" x 204);
            $! = 0; $r = syscall(305, 0, $step); printf("clock_adjtime_step %d %d\n", $r, $r == -1 ? $! + 0 : 0);
            my $read = "\0" x 208;
            $! = 0; $r = syscall(305, 0, $read); printf("clock_adjtime_read %d %d\n", $r, $r == -1 ? $! + 0 : 0);
        """
        results = parse_results(self.ok(box, ["perl", "-e", script]))
        for label in ("clock_settime", "settimeofday", "clock_adjtime_step"):
            self.assertEqual(results[label], (-1, errno.EPERM), f"{label} not refused: {describe(results)}")
        self.assertGreaterEqual(results["clock_adjtime_read"][0], 0, f"reading the clock: {describe(results)}")
        after = time.time()
        self.assertLess(abs(after - before), 120, "the host's clock jumped")
        self.assertGreater(time.gmtime(after).tm_year, 2020, "the host's clock was set back")
        # Control: the sandbox reads the host's clock.
        self.assertLess(abs(int(self.ok(box, ["date", "+%s"])) - time.time()), 30)

    # -- processes ---------------------------------------------------------------------------------------

    def test_ptrace_reaches_only_the_sandboxs_own_processes(self):
        box = self.make_sandbox(self.main)
        outside = self.fx.server.process.pid
        self.fails(box, ["test", "-e", f"/proc/{outside}"], "test precondition: the server's pid is not in use inside")
        results = parse_results(self.ok(box, ["perl", "-e", PTRACE_SCRIPT, str(outside)]))
        self.assertIn(results.get("outside", (0, 0)), ((-1, errno.ESRCH), (-1, errno.EPERM)),
                      f"ptrace of the server (host pid {outside}) from inside: {describe(results)}")
        self.assertEqual(results.get("pid1"), (-1, errno.EPERM), f"ptrace of pid 1: {describe(results)}")
        if kernel_version() >= KERNEL_PTRACE_SAFE:  # allowed, as in Docker's profile
            self.assertEqual(results.get("own_child"), (0, 0), f"tracing one's own child: {describe(results)}")
        else:
            self.assertEqual(results.get("own_child"), (-1, errno.EPERM), describe(results))
        # pid 1's memory is out of reach too.
        self.fails(box, ["head", "-c", "1", "/proc/1/mem"], "reading pid 1's memory")
        # Control: the probe traces a child on the host.
        out = subprocess.run(["perl", "-e", PTRACE_SCRIPT, "host"], capture_output=True, text=True, check=True)
        self.assertEqual(parse_results(out.stdout).get("own_child"), (0, 0), out)

    # -- network -------------------------------------------------------------------------------------------

    def test_host_loopback_services_are_out_of_reach_without_a_reverse_forward(self):
        box = self.make_sandbox(self.main)
        gateway = box["gateway"]
        loopback_port, public_port = free_port(), free_port()
        private = BannerServer("127.0.0.1", loopback_port)
        self.addCleanup(private.close)
        public = BannerServer("0.0.0.0", public_port)
        self.addCleanup(public.close)
        # Control: both answer on the host.
        for port, server in ((loopback_port, private), (public_port, public)):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                self.assertEqual(s.makefile().readline().strip(), server.banner)
        private.peers.clear()
        public.peers.clear()
        # Loopback inside (the sandbox's own), the gateway, and the host's other addresses.
        others = [a for a in host_addresses() if a != gateway][:2]
        targets = [(host, port) for host in ("127.0.0.1", "127.0.0.2", gateway, *others)
                   for port in (loopback_port, public_port)]
        script = "; ".join(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{h}/{p} && head -n 1 <&3'; echo \"{h}:{p} $?\""
                           for h, p in targets)
        result = self.exec(box, script, timeout=60)
        for server in (private, public):
            self.assertNotIn(server.banner, result["stdout"], f"a host service answered inside: {result}")
        self.assertEqual(private.peers + public.peers, [], f"connections reached the host: {result}")
        codes = dict(line.rsplit(" ", 1) for line in result["stdout"].splitlines() if " " in line)
        for host, port in targets:
            self.assertNotEqual(codes.get(f"{host}:{port}"), "0", f"{host}:{port} reachable inside: {result}")
        # Control: with a reverse forward, the loopback-only service is reachable at the forwarded port.
        path = f"/api/projects/{box['project']}/sandboxes/{box['name']}/reverse_ports"
        self.call("POST", path, {"container_port": 8080, "host_port": loopback_port})
        out = self.ok(box, "timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && head -n 1 <&3'", timeout=30)
        self.assertEqual(out.strip(), private.banner)

    def test_no_sandbox_can_send_with_another_sandboxs_address(self):
        project = self.make_project("spoof")
        a = self.make_sandbox(project, "a")
        b = self.make_sandbox(project, "b")
        c = self.make_sandbox(project, "c")
        self.add_busybox(a)
        token = secrets.token_hex(6)
        # 1. Taking B's address: needs CAP_NET_ADMIN, which is not in the set.
        self.assertIn(a["address"], self.ok(a, ["busybox", "ip", "-4", "addr", "show", "dev", "eth0"]),
                      "control: busybox ip lists A's own address")
        self.fails(a, ["busybox", "ip", "addr", "add", f"{b['address']}/32", "dev", "eth0"], "ip addr add",
                   contains="Operation not permitted")
        self.fails(a, ["busybox", "ip", "link", "set", "eth0", "address", "02:00:00:00:00:01"], "ip link set address")
        self.assertNotIn(b["address"], self.ok(a, ["busybox", "ip", "-4", "addr"]))
        # 2. Forging B's address in raw packets (CAP_NET_RAW is in the set): C listens on UDP, the host
        # on the gateway; a packet tap on the host shows what left A.
        port = free_port()
        self.put_file(c, "/tmp/listen.pl", UDP_LISTENER)
        self.put_file(a, "/tmp/send.pl", RAW_UDP_SENDER)
        log = f"/tmp/udp-{token}.log"
        self.ok(c, f"setsid perl /tmp/listen.pl {port} {log} 30 > /dev/null 2>&1 < /dev/null &")
        self.assertTrue(self._wait_for(c, log, "ready", 10), "the listener in C did not start")
        sink = UdpSink("0.0.0.0", port)
        self.addCleanup(sink.close)
        tap = WireTap(token.encode())
        self.addCleanup(tap.close)
        spoofed_to_c, spoofed_to_host, own = f"spoofed-c-{token}", f"spoofed-host-{token}", f"own-{token}"
        self.ok(a, ["perl", "/tmp/send.pl", b["address"], c["address"], str(port), spoofed_to_c])
        self.ok(a, ["perl", "/tmp/send.pl", b["address"], a["gateway"], str(port), spoofed_to_host])
        self.ok(a, ["perl", "/tmp/send.pl", a["address"], c["address"], str(port), own])
        # Control: the unforged packet, sent the same way, arrives.
        self.assertTrue(self._wait_for(c, log, own, 10), f"control: C never got A's own packet; tap saw {tap.seen}")
        time.sleep(2)
        got = self.ok(c, ["cat", log])
        self.assertIn(f"{a['address']} {own}", got)
        self.assertNotIn(spoofed_to_c, got, "C received a packet forged with B's address")
        self.assertEqual([d for d, _ in sink.received if token.encode() in d], [],
                         "the host received a packet forged with B's address")
        # The forged packets did leave A (so the firewall, not the sender, stopped them).
        sources = {(src, payload.decode(errors="replace")) for _, src, _, payload in tap.seen}
        self.assertIn((b["address"], spoofed_to_c), sources, f"tap: {tap.seen}")
        self.assertIn((b["address"], spoofed_to_host), sources, f"tap: {tap.seen}")

    def _wait_for(self, box: dict, path: str, text: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = self.exec(box, ["cat", path])
            if result["exit_code"] == 0 and text in result["stdout"]:
                return True
            time.sleep(0.2)
        return False

    # -- last ---------------------------------------------------------------------------------------------

    def test_zz_deleting_everything_leaves_no_process_mount_or_cgroup(self):
        """Runs last (trial orders by name): deletes every project and stops the shared server."""
        problems = SHARED.close()
        self.assertEqual(problems, [], "\n".join(problems))
