/*
 * bolt-sandbox: the small native helper behind bolt.host.runtime.
 *
 *   bolt-sandbox init  --rootfs DIR --hostname NAME [--cgroup-procs FILE]...
 *   bolt-sandbox enter --pid PID [--start-time TICKS] [--cgroup-procs FILE]... [--cwd DIR]
 *                      [--setsid] [--env-fd FD] [--status-fd FD]
 *                      [--pty-fd FD [--winsize ROWS,COLS]] -- ARGV...
 *
 * init: joins the given cgroups, unshares mount, UTS, IPC, network, cgroup and pid namespaces and
 * forks the sandbox's pid 1.  pid 1 builds the sandbox's view of the world (private mounts, /proc,
 * read-only /sys, a minimal /dev, masked and read-only /proc paths, hostname, loopback up), pivots
 * into the root filesystem, detaches the host's root, drops capabilities to Docker's default set and
 * sets no_new_privs, then installs the seccomp filter (see "seccomp" below).  It reports "ok" (or the
 * error) to the waiting parent through a close-on-exec pipe; the parent prints "READY <host pid of
 * pid 1>" on stdout and exits 0, or prints the error on stderr and exits 1 (the half-built sandbox is
 * gone by then: pid 1 exited, taking its namespaces with it).
 *
 * pid 1 then only reaps: every process in the sandbox whose parent dies is re-parented to it.  On
 * SIGTERM it forwards SIGTERM to every process in the sandbox and exits once none is left (or after
 * STOP_GRACE_SECONDS, or at a second SIGTERM); when pid 1 exits the kernel SIGKILLs whatever remains
 * in its pid namespace.  SIGKILL from the host ends the sandbox at once.  Every other signal is
 * consumed and ignored.
 *
 * enter: joins the cgroups and the namespaces of a running pid 1 (cgroup, ipc, uts, net, pid, and mnt
 * last), forks (the child is then inside the pid namespace), and the child optionally becomes a
 * session leader (taking fd 0 as controlling terminal when it is a tty), drops the same capabilities,
 * installs the same seccomp filter as its very last step, and executes ARGV.  The environment of
 * ARGV is read from --env-fd (KEY=VALUE entries, each terminated by a NUL byte, until EOF) when
 * given, else it is the helper's own environment.  The
 * parent forwards SIGTERM, SIGINT and SIGHUP to the child and exits the way the child did: same exit
 * code, or killed by the same signal.  Failures before ARGV runs exit with 125 and are written to
 * --status-fd (one line "error <kind> <message>", kind "gone" when the target is not running, or
 * "setup") when given, else to stderr; a command that cannot be executed exits 126 (127: not found)
 * with a message on stderr, like a shell.
 *
 * No descriptor other than 0, 1 and 2 reaches a sandbox process.
 *
 * Decisions worth knowing:
 *  - pid 1 and the enter helper are non-dumpable, so sandbox processes (which lack CAP_SYS_PTRACE)
 *    cannot open /proc/<pid>/exe -- this binary, on the host -- nor their memory or descriptors;
 *    pid 1 also overwrites its argv so /proc/1/cmdline reads "bolt-sandbox init", no host paths.
 *  - CAP_MKNOD stays (Docker's list), but the root filesystem, /dev and /dev/shm are mounted nodev
 *    and the six devices are bind mounts of the host's nodes: a device node made inside cannot be
 *    opened.  (Docker relies on the devices cgroup for this; Bolt does not manage one.)
 *  - pivot_root(".", ".") then a lazy unmount of "." drops the host's tree without creating an
 *    old-root directory inside the sandbox's (writable) root filesystem.
 *  - A cgroup namespace is unshared too, so /proc/self/cgroup inside shows "/" and no host paths.
 *  - The directories that receive mounts (proc, sys, dev) must be real directories in the image: a
 *    symbolic link planted there is refused rather than followed.
 *  - Every sandbox process runs under one seccomp filter (libseccomp; x86_64 also covers the i386
 *    and x32 ABIs): a deny list of what Docker's default profile refuses to a container without
 *    extra capabilities, each call failing with EPERM as under Docker.  See "seccomp" below for
 *    the list and where it differs from Docker's.
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <seccomp.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

extern char **environ;

#define PROG "bolt-sandbox"
#define MAX_CGROUPS 16
#define MAX_ENV_BYTES (4 * 1024 * 1024)
#define STOP_GRACE_SECONDS 10
#define EXIT_SETUP 125
#define EXIT_CANNOT_EXEC 126
#define EXIT_NOT_FOUND 127

/* Docker's default capability set. */
static const int kept_caps[] = {
    CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_MKNOD, CAP_NET_RAW,
    CAP_SETGID, CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP, CAP_NET_BIND_SERVICE,
    CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE,
};

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                               */

static void usage(void)
{
    fprintf(stderr,
            "usage: " PROG " init --rootfs DIR --hostname NAME [--cgroup-procs FILE]...\n"
            "       " PROG " enter --pid PID [--start-time TICKS] [--cgroup-procs FILE]... [--cwd DIR]\n"
            "                    [--setsid] [--env-fd FD] [--status-fd FD]\n"
            "                    [--pty-fd FD [--winsize ROWS,COLS]] -- ARGV...\n");
    exit(2);
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Make sure 0, 1 and 2 are open, so that no descriptor we open later lands on them. */
static void ensure_stdio(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = open("/dev/null", O_RDWR);
            if (n < 0)
                exit(EXIT_SETUP);
            if (n != fd) {
                dup2(n, fd);
                close(n);
            }
        }
    }
}

static void close_range_or_loop(unsigned int first, unsigned int last)
{
    if (first > last)
        return;
    if (syscall(SYS_close_range, first, last, 0) == 0)
        return;
    {
        long max = sysconf(_SC_OPEN_MAX);
        unsigned int limit = max > 0 && (unsigned long)max < last ? (unsigned int)max : last;
        if (limit == ~0U)
            limit = 65536;
        for (unsigned int fd = first; fd <= limit; fd++)
            close((int)fd);
    }
}

/* Close every descriptor >= first except keep (keep < 0: none kept). */
static void close_fds_from(unsigned int first, int keep)
{
    if (keep < (int)first) {
        close_range_or_loop(first, ~0U);
        return;
    }
    if ((unsigned int)keep > first)
        close_range_or_loop(first, (unsigned int)keep - 1);
    close_range_or_loop((unsigned int)keep + 1, ~0U);
}

static int parse_int(const char *s, long long min, long long max, long long *out)
{
    char *end;
    long long v;
    if (s == NULL || *s == '\0' || !(isdigit((unsigned char)s[0]) || s[0] == '-'))
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int valid_hostname(const char *name)
{
    size_t len = strlen(name);
    if (len < 1 || len > 63)
        return 0;
    if (!(islower((unsigned char)name[0]) || isdigit((unsigned char)name[0])))
        return 0;
    for (size_t i = 1; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(islower(c) || isdigit(c) || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

static int join_cgroup(const char *path)
{
    char buf[32];
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    int n, rc, saved;
    if (fd < 0)
        return -1;
    n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    rc = write_all(fd, buf, (size_t)n);
    saved = errno;
    if (close(fd) < 0 && rc == 0)
        return -1;
    errno = saved;
    return rc;
}

static uint64_t kept_mask(void)
{
    uint64_t mask = 0;
    for (size_t i = 0; i < sizeof kept_caps / sizeof kept_caps[0]; i++)
        mask |= (uint64_t)1 << kept_caps[i];
    return mask;
}

static int read_cap_last_cap(void)
{
    char buf[32];
    long long v;
    ssize_t n;
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return CAP_LAST_CAP;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return CAP_LAST_CAP;
    buf[n] = '\0';
    if (buf[n - 1] == '\n')
        buf[n - 1] = '\0';
    if (parse_int(buf, 0, 63, &v) < 0)
        return CAP_LAST_CAP;
    return (int)v;
}

/*
 * Drop the bounding set to Docker's list, set effective = permitted = that list, inheritable and
 * ambient empty, then no_new_privs.  Returns a static description of the failed step, or NULL.
 */
static const char *drop_privileges(int last_cap)
{
    uint64_t keep = kept_mask();
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];

    for (int cap = 0; cap <= last_cap; cap++) {
        if (keep & ((uint64_t)1 << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            return "drop capability from bounding set";
    }
    memset(&hdr, 0, sizeof hdr);
    memset(data, 0, sizeof data);
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    data[0].effective = data[0].permitted = (uint32_t)(keep & 0xffffffffu);
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    if (syscall(SYS_capset, &hdr, data) < 0)
        return "capset";
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return "clear ambient capabilities";
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return "set no_new_privs";
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* seccomp                                                                                     */

/*
 * The filter is a deny list: every system call is allowed except those below, which fail with
 * EPERM, as they do in a Docker container started without extra capabilities.  moby's
 * profiles/seccomp/default.json is an allow list; these are the calls it leaves out, or allows
 * only with a capability Bolt does not grant.  Most of them would fail anyway for want of a
 * capability; the filter keeps the kernel code behind them out of reach, capability checks or not,
 * and some need none (keyctl, unshare of a user namespace, userfaultfd, personality flags).
 *
 * Differences from Docker's profile:
 *  - io_uring_setup/enter/register are refused, where the profile this list was compared with
 *    allows them: a large kernel surface with a long record of privilege escalations (newer moby
 *    profiles drop them too).
 *  - Calls Docker leaves out only because they are obsolete or unimplemented (i386's old
 *    signal/stat/uname calls, nice, afs_syscall, tuxcall, ...) are allowed: they reach nothing a
 *    current call does not, and old 32-bit programs still use some of them.  System calls newer than
 *    the profile (fchmodat2, futex_wait, cachestat, ...) are allowed until someone lists them.
 *  - AF_VSOCK sockets are refused by comparing the low 32 bits of the family (the kernel reads an
 *    int): Docker's "family != 40" lets 0x100000028 through to become 40 in the kernel.  On i386
 *    only the direct socket call is checked, not socketcall(2), whose arguments are in memory where a
 *    filter cannot read them (Docker has the same gap); refusing socketcall(SYS_SOCKET) outright
 *    would cut most 32-bit programs off the network.
 *  - personality(2) values of 2^32 and above are refused (Docker's exact matches refuse them too).
 *  - ptrace, process_vm_readv and process_vm_writev follow Docker: allowed on Linux 4.8 and later
 *    (where a traced process can no longer use ptrace to get round the filter), refused before.  In
 *    a sandbox they reach only its own processes (its pid namespace), only those with the tracer's
 *    uid, and never pid 1 nor a command being started: both are non-dumpable and CAP_SYS_PTRACE is
 *    not in the set.  gdb and strace work inside.  kcmp, pidfd_getfd and process_madvise stay refused,
 *    as in Docker without CAP_SYS_PTRACE.
 *  - name_to_handle_at, clock_adjtime and chroot are allowed, as in Docker: the first only names a
 *    file (open_by_handle_at, which opens by handle, is refused), clock_adjtime changes nothing
 *    without CAP_SYS_TIME, and CAP_SYS_CHROOT is in the set.
 */
static const char *const denied_syscalls[] = {
    /* kernel modules */
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    /* rebooting, kexec, swap */
    "reboot", "kexec_load", "kexec_file_load", "swapon", "swapoff",
    /* setting the clock */
    "settimeofday", "stime", "clock_settime", "clock_settime64",
    /* mounts, old and new API */
    "mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    /* namespaces (clone is filtered on its flags below; clone3 fails with ENOSYS) */
    "unshare", "setns",
    /* kernel keyrings (not namespaced) */
    "add_key", "keyctl", "request_key",
    /* opening files by handle: any inode of a filesystem, by number ("shocker") */
    "open_by_handle_at",
    /* kernel programs, tracing and profiling, the kernel log */
    "bpf", "perf_event_open", "lookup_dcookie", "syslog", "fanotify_init", "userfaultfd",
    /* other processes' descriptors and memory (CAP_SYS_PTRACE in Docker's profile) */
    "kcmp", "pidfd_getfd", "process_madvise",
    /* io_uring */
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    /* accounting, quotas, obsolete administration interfaces */
    "acct", "quotactl", "quotactl_fd", "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat", "vhangup",
    "bdflush",
    /* direct hardware access */
    "iopl", "ioperm", "vm86", "vm86old",
    /* NUMA placement (CAP_SYS_NICE in Docker's profile) */
    "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind", "move_pages", "migrate_pages",
    /* the UTS namespace's names are Bolt's to set */
    "sethostname", "setdomainname",
};

/* Allowed from Linux 4.8 on (see above), refused on older kernels. */
static const char *const ptrace_syscalls[] = {
    "ptrace", "process_vm_readv", "process_vm_writev",
};

/* clone(2) flags that make namespaces. */
static const uint64_t namespace_flags[] = {
    CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP,
};

#define AF_VSOCK_FAMILY 40
#define PERSONA_QUERY 0xffffffffULL

static int kernel_at_least(int want_major, int want_minor)
{
    struct utsname u;
    int major = 0, minor = 0;
    if (uname(&u) < 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
        return 0;
    return major > want_major || (major == want_major && minor >= want_minor);
}

static int deny_named(scmp_filter_ctx ctx, const char *name)
{
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR)
        return 0; /* unknown to this (older) libseccomp, so to the kernels it was made for */
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
}

/*
 * personality(2): Docker allows only PER_LINUX (0), PER_LINUX32 (8), UNAME26 (0x20000),
 * PER_LINUX32|UNAME26 and 0xffffffff (which only reads the persona).  Anything else --
 * READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, MMAP_PAGE_ZERO, another execution domain -- fails with EPERM.
 *
 * libseccomp takes one comparison per argument in a rule, so "none of those five" is a union of
 * one-comparison rules.  A value below 2^32 is refused exactly when it has a bit outside 0x20008
 * (bits 3 and 17) set and is not all ones.  Such a value has a run of ones containing that bit, and
 * the run (read cyclically over the 32 bits) ends at some bit e followed by a clear bit e+1:
 *   - e is neither 3 nor 17: matched by "bit e set, bit e+1 clear" (30 rules, one per such e);
 *   - e is 3 (or 17): the run holds a bit other than e, so bit 2 (or 16) is set as well: matched by
 *     "bits 2 and 3 set, 4 clear" (or "16 and 17 set, 18 clear").
 * Every rule needs a set bit outside 0x20008 and a clear bit, so none matches an allowed value.
 * Values of 2^32 and above are refused outright: the kernel would truncate them to an unsigned int.
 */
static int deny_personalities(scmp_filter_ctx ctx)
{
    const uint32_t action = SCMP_ACT_ERRNO(EPERM);
    int rc = seccomp_rule_add(ctx, action, SCMP_SYS(personality), 1, SCMP_A0(SCMP_CMP_GT, PERSONA_QUERY));
    for (int bit = 0; bit < 32 && rc == 0; bit++) {
        uint64_t set = (uint64_t)1 << bit, clear = (uint64_t)1 << ((bit + 1) % 32);
        if (bit == 3 || bit == 17)
            continue;
        rc = seccomp_rule_add(ctx, action, SCMP_SYS(personality), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, set | clear, set));
    }
    if (rc == 0)
        rc = seccomp_rule_add(ctx, action, SCMP_SYS(personality), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, 0x1cULL, 0x0cULL));
    if (rc == 0)
        rc = seccomp_rule_add(ctx, action, SCMP_SYS(personality), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, 0x70000ULL, 0x30000ULL));
    return rc;
}

/* The rules of one filter context.  clone's flags are its first argument, but on s390 its second. */
static int add_rules(scmp_filter_ctx ctx, int deny_ptrace, int deny_vsock, unsigned int clone_flags_arg)
{
    int rc = 0;
    for (size_t i = 0; i < sizeof denied_syscalls / sizeof denied_syscalls[0] && rc == 0; i++)
        rc = deny_named(ctx, denied_syscalls[i]);
    for (size_t i = 0; deny_ptrace && i < sizeof ptrace_syscalls / sizeof ptrace_syscalls[0] && rc == 0; i++)
        rc = deny_named(ctx, ptrace_syscalls[i]);
    for (size_t i = 0; i < sizeof namespace_flags / sizeof namespace_flags[0] && rc == 0; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                              SCMP_CMP(clone_flags_arg, SCMP_CMP_MASKED_EQ, namespace_flags[i],
                                       namespace_flags[i]));
    /* glibc falls back to clone(2) when clone3 is missing, whose flags a filter can read (clone3's
     * are in memory): Docker's answer too. */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc == 0)
        rc = deny_personalities(ctx);
    /* The domain is an int: compare the low 32 bits only, or 0x100000028 would pass the filter and
     * reach the kernel as 40. */
    if (rc == 0 && deny_vsock)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socket), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffULL, (uint64_t)AF_VSOCK_FAMILY));
    return rc;
}

/* A filter context for one architecture (SCMP_ARCH_NATIVE: the native one) with every rule. */
static scmp_filter_ctx arch_filter(uint32_t arch, int deny_ptrace, int *rc)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL) {
        *rc = -ENOMEM;
        return NULL;
    }
    *rc = 0;
    if (arch != SCMP_ARCH_NATIVE) {
        *rc = seccomp_arch_remove(ctx, SCMP_ARCH_NATIVE);
        if (*rc == 0)
            *rc = seccomp_arch_add(ctx, arch);
    }
    if (*rc == 0) {
        uint32_t actual = arch == SCMP_ARCH_NATIVE ? seccomp_arch_native() : arch;
        *rc = add_rules(ctx, deny_ptrace, actual != SCMP_ARCH_X86,
                        actual == SCMP_ARCH_S390 || actual == SCMP_ARCH_S390X ? 1 : 0);
    }
    if (*rc != 0) {
        seccomp_release(ctx);
        return NULL;
    }
    return ctx;
}

/*
 * Build the filter and load it into this process (and so into everything it will execute).
 * no_new_privs must be set already (drop_privileges does; libseccomp would set it too): without
 * CAP_SYS_ADMIN the kernel accepts a filter only under no_new_privs.  Returns NULL, or a static
 * description of the failed step with errno set.
 */
static const char *install_seccomp(void)
{
    int deny_ptrace = !kernel_at_least(4, 8);
    uint32_t native = seccomp_arch_native();
    uint32_t extra[2];
    size_t nextra = 0;
    scmp_filter_ctx ctx;
    int rc;

    /* The other ABIs this kernel may run: each gets the same list, anything else is killed. */
    if (native == SCMP_ARCH_X86_64) {
        extra[nextra++] = SCMP_ARCH_X86;
        extra[nextra++] = SCMP_ARCH_X32;
    } else if (native == SCMP_ARCH_AARCH64) {
        extra[nextra++] = SCMP_ARCH_ARM;
    }
    ctx = arch_filter(SCMP_ARCH_NATIVE, deny_ptrace, &rc);
    if (ctx == NULL) {
        errno = -rc;
        return "build the seccomp filter";
    }
    for (size_t i = 0; i < nextra; i++) {
        scmp_filter_ctx other = arch_filter(extra[i], deny_ptrace, &rc);
        if (other != NULL) {
            rc = seccomp_merge(ctx, other); /* consumes other on success */
            if (rc != 0)
                seccomp_release(other);
        }
        if (rc != 0) {
            seccomp_release(ctx);
            errno = -rc;
            return "build the seccomp filter for a compat architecture";
        }
    }
    /* Syscalls sorted in a binary tree: a handful of comparisons per call instead of a scan of the
     * whole list.  Optional: an older libseccomp without it produces the linear filter. */
    (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc != 0) {
        errno = -rc;
        return "load the seccomp filter";
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* init: the sandbox's pid 1                                                                   */

static int report_fd = -1;

/* The argv strings of this process: pid 1 overwrites them so that /proc/1/cmdline inside the
 * sandbox does not show host paths (the root filesystem, the cgroups, where this binary lives). */
static char *args_area;
static size_t args_len;

static void hide_arguments(void)
{
    static const char title[] = "bolt-sandbox\0init";
    if (args_area == NULL || args_len < sizeof title)
        return;
    memset(args_area, 0, args_len);
    memcpy(args_area, title, sizeof title);
}

/* Report a setup failure to the waiting parent and end pid 1 (and with it the namespaces). */
/* An error message into msg: fmt with its arguments, then ": <strerror(saved)>" unless saved is 0,
 * cut to fit.  Returns its length.  Shared by the reports of `init` (setup_failed) and `enter`
 * (enter_failed), which differ only in where the message goes. */
static int format_error(char *msg, size_t size, int saved, const char *fmt, va_list ap)
{
    int n = vsnprintf(msg, size, fmt, ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= size)
        n = (int)size - 1;
    if (saved != 0)
        n += snprintf(msg + n, size - (size_t)n, ": %s", strerror(saved));
    if ((size_t)n >= size)
        n = (int)size - 1;
    return n;
}

static void setup_failed(const char *fmt, ...)
{
    char msg[1024];
    int saved = errno;
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = format_error(msg, sizeof msg, saved, fmt, ap);
    va_end(ap);
    if (report_fd >= 0 && write_all(report_fd, msg, (size_t)n) < 0)
        _exit(1);
    _exit(1);
}

#define CHECK(expr, ...)              \
    do {                              \
        errno = 0;                    \
        if ((expr) < 0)               \
            setup_failed(__VA_ARGS__); \
    } while (0)

/* A directory of the image that gets a mount: created when missing, refused when not a directory. */
static void ensure_dir(const char *path, mode_t mode)
{
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            errno = 0;
            setup_failed("%s in the root filesystem is not a directory", path);
        }
        return;
    }
    if (errno != ENOENT)
        setup_failed("stat %s", path);
    CHECK(mkdir(path, mode), "mkdir %s", path);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void bind_readonly(const char *path, unsigned long extra)
{
    CHECK(mount(path, path, NULL, MS_BIND | MS_REC, NULL), "bind %s", path);
    CHECK(mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | extra, NULL),
          "remount %s read-only", path);
}

struct device {
    const char *name;
    unsigned int major, minor;
};

static const struct device devices[] = {
    {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
};

/*
 * /dev: a tmpfs mounted nodev, with the six devices bind-mounted from the host's /dev onto empty
 * files.  Since the root filesystem, /dev and /dev/shm are all nodev, a device node that a sandbox
 * process creates with CAP_MKNOD cannot be opened (the job the devices cgroup does for Docker).
 */
static void setup_dev(void)
{
    char path[64];
    char target[64];
    struct stat st;

    CHECK(mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_STRICTATIME,
                "mode=755,size=65536k"),
          "mount tmpfs on /dev");
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
        const struct device *d = &devices[i];
        int fd;
        snprintf(target, sizeof target, "/dev/%s", d->name);
        snprintf(path, sizeof path, "dev/%s", d->name);
        CHECK(stat(target, &st), "stat host %s", target);
        if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != d->major || minor(st.st_rdev) != d->minor) {
            errno = 0;
            setup_failed("host %s is not the character device %u:%u", target, d->major, d->minor);
        }
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        CHECK(fd, "create %s", path);
        close(fd);
        CHECK(mount(target, path, NULL, MS_BIND, NULL), "bind %s", target);
        CHECK(mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC, NULL),
              "remount %s", path);
    }
    CHECK(symlink("/proc/self/fd", "dev/fd"), "symlink dev/fd");
    CHECK(symlink("/proc/self/fd/0", "dev/stdin"), "symlink dev/stdin");
    CHECK(symlink("/proc/self/fd/1", "dev/stdout"), "symlink dev/stdout");
    CHECK(symlink("/proc/self/fd/2", "dev/stderr"), "symlink dev/stderr");
    CHECK(symlink("pts/ptmx", "dev/ptmx"), "symlink dev/ptmx");
    CHECK(mkdir("dev/pts", 0755), "mkdir dev/pts");
    CHECK(mkdir("dev/shm", 01777), "mkdir dev/shm");
    CHECK(mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "mode=1777,size=65536k"),
          "mount tmpfs on /dev/shm");
}

static void setup_proc_sys(void)
{
    static const char *masked_files[] = {
        "proc/kcore", "proc/keys", "proc/timer_list", "proc/sched_debug",
        "proc/latency_stats", "proc/timer_stats",
    };
    static const char *masked_dirs[] = {
        "proc/acpi", "proc/scsi", "sys/firmware", "sys/devices/virtual/powercap",
    };
    static const char *readonly[] = {
        "proc/sys", "proc/sysrq-trigger", "proc/irq", "proc/bus", "proc/fs",
    };

    CHECK(mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount proc");
    CHECK(mount("sysfs", "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL),
          "mount sysfs");
    for (size_t i = 0; i < sizeof masked_files / sizeof masked_files[0]; i++) {
        if (!exists(masked_files[i]))
            continue;
        CHECK(mount("/dev/null", masked_files[i], NULL, MS_BIND, NULL), "mask %s", masked_files[i]);
        /* Not nodev: the mask is the null device, and reading it must give nothing, not EACCES. */
        CHECK(mount(NULL, masked_files[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL),
              "remount %s", masked_files[i]);
    }
    for (size_t i = 0; i < sizeof masked_dirs / sizeof masked_dirs[0]; i++) {
        if (!exists(masked_dirs[i]))
            continue;
        CHECK(mount("tmpfs", masked_dirs[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    "size=0,mode=555"),
              "mask %s", masked_dirs[i]);
    }
    for (size_t i = 0; i < sizeof readonly / sizeof readonly[0]; i++) {
        if (!exists(readonly[i]))
            continue;
        bind_readonly(readonly[i], MS_NOSUID | MS_NODEV | MS_NOEXEC);
    }
}

static void loopback_up(void)
{
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(s, "socket for loopback");
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    CHECK(ioctl(s, SIOCGIFFLAGS, &ifr), "get loopback flags");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    CHECK(ioctl(s, SIOCSIFFLAGS, &ifr), "bring loopback up");
    close(s);
}

/* The gid of group "tty" in the sandbox's own /etc/group (read after pivot_root), or -1. */
static long tty_gid(void)
{
    char line[1024];
    long gid = -1;
    FILE *f = fopen("/etc/group", "re");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        char *name = line, *pw, *id, *end;
        long long v;
        pw = strchr(name, ':');
        if (pw == NULL)
            continue;
        *pw++ = '\0';
        if (strcmp(name, "tty") != 0)
            continue;
        id = strchr(pw, ':');
        if (id == NULL)
            break;
        id++;
        end = strchr(id, ':');
        if (end == NULL)
            break;
        *end = '\0';
        if (parse_int(id, 0, 65535, &v) == 0)
            gid = (long)v;
        break;
    }
    fclose(f);
    return gid;
}

static void build_sandbox(const char *rootfs, const char *hostname, int last_cap)
{
    char opts[128];
    long gid;
    const char *failed;
    int null_fd;

    CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), "make / private");
    CHECK(mount(rootfs, rootfs, NULL, MS_BIND | MS_REC, NULL), "bind %s", rootfs);
    CHECK(mount(NULL, rootfs, NULL, MS_REMOUNT | MS_BIND | MS_NODEV, NULL), "remount %s nodev", rootfs);
    CHECK(chdir(rootfs), "chdir %s", rootfs);

    /* From here on every path is relative to the new root. */
    ensure_dir("proc", 0555);
    ensure_dir("sys", 0555);
    ensure_dir("dev", 0755);
    setup_proc_sys();
    setup_dev();

    CHECK(sethostname(hostname, strlen(hostname)), "sethostname");
    loopback_up();

    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves only the
     * sandbox's tree, without needing a directory for the old root inside the image. */
    CHECK(syscall(SYS_pivot_root, ".", "."), "pivot_root");
    CHECK(umount2(".", MNT_DETACH), "detach the host root");
    CHECK(chdir("/"), "chdir /");

    gid = tty_gid();
    if (gid >= 0)
        snprintf(opts, sizeof opts, "newinstance,ptmxmode=0666,mode=0620,gid=%ld", gid);
    else
        snprintf(opts, sizeof opts, "newinstance,ptmxmode=0666,mode=0620");
    CHECK(mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, opts), "mount devpts");

    null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    CHECK(null_fd, "open /dev/null");
    CHECK(dup2(null_fd, 0), "dup2 stdin");
    CHECK(dup2(null_fd, 1), "dup2 stdout");
    CHECK(dup2(null_fd, 2), "dup2 stderr");
    close(null_fd);
    close_fds_from(3, report_fd);

    errno = 0;
    failed = drop_privileges(last_cap);
    if (failed != NULL)
        setup_failed("%s", failed);
    /* Non-dumpable: sandbox processes cannot open /proc/1/exe (the host's helper binary), mem, etc. */
    CHECK(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "set non-dumpable");
    umask(022);
    /* Last: from here on pid 1 only reports, waits and signals. */
    errno = 0;
    failed = install_seccomp();
    if (failed != NULL)
        setup_failed("%s", failed);
}

static volatile sig_atomic_t unused_signal;

static void note_signal(int sig)
{
    unused_signal = sig;
}

static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void reap_all(void)
{
    int status;
    while (waitpid(-1, &status, WNOHANG) > 0)
        ;
}

static void pid1_loop(void)
{
    sigset_t all;
    struct sigaction sa;
    int stopping = 0;
    double deadline = 0;

    /* Handlers (not SIG_DFL) for the signals we act on: pid 1 of a namespace drops SIG_DFL signals. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = note_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);

    for (;;) {
        siginfo_t info;
        int sig;
        reap_all();
        if (stopping) {
            if ((kill(-1, 0) < 0 && errno == ESRCH) || monotonic_now() >= deadline)
                _exit(0);
            struct timespec tick = {0, 50 * 1000 * 1000};
            sig = sigtimedwait(&all, &info, &tick);
        } else {
            sig = sigwaitinfo(&all, &info);
        }
        if (sig == SIGTERM) {
            if (stopping)
                _exit(0);
            stopping = 1;
            deadline = monotonic_now() + STOP_GRACE_SECONDS;
            kill(-1, SIGTERM);
        }
        /* SIGCHLD: reaped at the top of the loop; anything else is ignored. */
    }
}

static int cmd_init(int argc, char **argv)
{
    const char *rootfs_arg = NULL, *hostname = NULL;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups = 0;
    char rootfs[PATH_MAX];
    struct stat st;
    int pipefd[2];
    int last_cap;
    pid_t pid;
    char buf[1100];
    size_t got = 0;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--rootfs") == 0 && i + 1 < argc)
            rootfs_arg = argv[++i];
        else if (strcmp(argv[i], "--hostname") == 0 && i + 1 < argc)
            hostname = argv[++i];
        else if (strcmp(argv[i], "--cgroup-procs") == 0 && i + 1 < argc) {
            if (ncgroups == MAX_CGROUPS) {
                fprintf(stderr, PROG ": init: too many --cgroup-procs\n");
                return 2;
            }
            cgroups[ncgroups++] = argv[++i];
        } else
            usage();
    }
    if (rootfs_arg == NULL || hostname == NULL)
        usage();
    if (!valid_hostname(hostname)) {
        fprintf(stderr, PROG ": init: invalid hostname '%s'\n", hostname);
        return 2;
    }
    if (rootfs_arg[0] != '/' || realpath(rootfs_arg, rootfs) == NULL || stat(rootfs, &st) < 0 ||
        !S_ISDIR(st.st_mode)) {
        fprintf(stderr, PROG ": init: root filesystem %s is not an absolute path to a directory\n",
                rootfs_arg);
        return 1;
    }
    if (strcmp(rootfs, "/") == 0) {
        fprintf(stderr, PROG ": init: the root filesystem cannot be the host's /\n");
        return 1;
    }
    last_cap = read_cap_last_cap();

    for (int i = 0; i < ncgroups; i++) {
        if (join_cgroup(cgroups[i]) < 0) {
            fprintf(stderr, PROG ": init: join cgroup %s: %s\n", cgroups[i], strerror(errno));
            return 1;
        }
    }
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        fprintf(stderr, PROG ": init: pipe: %s\n", strerror(errno));
        return 1;
    }
    if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID |
                CLONE_NEWCGROUP) < 0) {
        fprintf(stderr, PROG ": init: unshare: %s\n", strerror(errno));
        return 1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, PROG ": init: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        sigset_t all;
        close(pipefd[0]);
        report_fd = pipefd[1];
        sigfillset(&all);
        sigprocmask(SIG_BLOCK, &all, NULL);
        /* If the waiting parent dies during setup (the server cancelled the start), so do we. */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        setsid();
        umask(0);
        build_sandbox(rootfs, hostname, last_cap);
        prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
        /* If the parent is already gone this fails (pid 1 does not die of SIGPIPE): give up. */
        if (write_all(report_fd, "ok", 2) < 0)
            _exit(1);
        close(report_fd);
        report_fd = -1;
        hide_arguments();
        pid1_loop();
        _exit(0);
    }

    close(pipefd[1]);
    for (;;) {
        ssize_t n = read(pipefd[0], buf + got, sizeof buf - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == sizeof buf - 1)
            break;
    }
    buf[got] = '\0';
    close(pipefd[0]);
    if (got == 2 && memcmp(buf, "ok", 2) == 0) {
        if (printf("READY %d\n", (int)pid) < 0 || fflush(stdout) != 0) {
            kill(pid, SIGKILL);
            return 1;
        }
        return 0;
    }
    {
        int status;
        kill(pid, SIGKILL); /* normally already exiting */
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (got > 0)
            fprintf(stderr, PROG ": init: %s\n", buf);
        else if (WIFSIGNALED(status))
            fprintf(stderr, PROG ": init: sandbox setup died of signal %d\n", WTERMSIG(status));
        else
            fprintf(stderr, PROG ": init: sandbox setup exited with %d\n", WEXITSTATUS(status));
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* enter: run a command inside a running sandbox                                               */

static int status_fd = -1;

/* Fail before the command runs: "error <kind> <message>" on the status fd (or stderr), exit 125. */
static void enter_failed(const char *kind, const char *fmt, ...)
{
    char msg[1024];
    int saved = errno;
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = format_error(msg, sizeof msg, saved, fmt, ap);
    va_end(ap);
    if (status_fd >= 0) {
        char line[1100];
        int m = snprintf(line, sizeof line, "error %s %.*s\n", kind, n, msg);
        if (m > 0)
            (void)!write_all(status_fd, line, (size_t)m < sizeof line ? (size_t)m : sizeof line - 1);
    } else {
        fprintf(stderr, PROG ": %.*s\n", n, msg);
    }
    _exit(EXIT_SETUP);
}

/* Read KEY=VALUE\0... from fd until EOF into a NULL-terminated array. */
static char **read_env(int fd)
{
    size_t cap = 4096, len = 0, count = 0;
    char *data = malloc(cap + 1);
    char **env;
    if (data == NULL)
        enter_failed("setup", "out of memory");
    for (;;) {
        ssize_t n;
        if (len == cap) {
            if (cap >= MAX_ENV_BYTES) {
                errno = 0;
                enter_failed("setup", "environment larger than %d bytes", MAX_ENV_BYTES);
            }
            cap *= 2;
            data = realloc(data, cap + 1);
            if (data == NULL)
                enter_failed("setup", "out of memory");
        }
        n = read(fd, data + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            enter_failed("setup", "read environment");
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (len > 0 && data[len - 1] != '\0') {
        errno = 0;
        enter_failed("setup", "environment block does not end with NUL");
    }
    for (size_t i = 0; i < len; i++)
        if (data[i] == '\0')
            count++;
    env = calloc(count + 1, sizeof *env);
    if (env == NULL)
        enter_failed("setup", "out of memory");
    count = 0;
    for (size_t i = 0; i < len;) {
        char *entry = data + i;
        size_t elen = strlen(entry);
        if (elen == 0 || strchr(entry, '=') == NULL || entry[0] == '=') {
            errno = 0;
            enter_failed("setup", "malformed environment entry");
        }
        env[count++] = entry;
        i += elen + 1;
    }
    env[count] = NULL;
    return env;
}

/* Field 22 of /proc/PID/stat, read relative to an open /proc/PID directory. */
static int read_start_time(int dirfd, unsigned long long *out)
{
    char buf[1024];
    ssize_t n;
    char *p;
    int field;
    int fd = openat(dirfd, "stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    p++;
    /* p points just after the comm field (field 2); count fields 3..22. */
    for (field = 2; field < 22; field++) {
        while (*p == ' ')
            p++;
        if (field + 1 == 22)
            break;
        while (*p != ' ' && *p != '\0')
            p++;
        if (*p == '\0')
            return -1;
    }
    errno = 0;
    *out = strtoull(p, NULL, 10);
    return errno == 0 ? 0 : -1;
}

static volatile sig_atomic_t child_pid = -1;

/*
 * --pty-fd: a terminal from the sandbox's own devpts instance.  After setns(mnt), /dev/ptmx is the
 * sandbox's, so the pair belongs to the sandbox (its slave has a name there and `tty` works), never
 * to the host's devpts, whose other terminals a sandbox must not reach.  The slave is opened through
 * TIOCGPTPEER (no path lookup in a directory the sandbox controls); the master goes back to the
 * server over the unix socket FD with SCM_RIGHTS, and the command gets the slave as stdin, stdout,
 * stderr and controlling terminal.
 */
static int open_sandbox_pty(int sock, unsigned short rows, unsigned short cols)
{
    int master, slave, unlock = 0;
    char byte = 'P';
    struct iovec iov = {&byte, 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg;
    struct cmsghdr *cmsg;

    master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        enter_failed("setup", "open the sandbox's /dev/ptmx");
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0)
        enter_failed("setup", "unlock the terminal");
    slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0)
        enter_failed("setup", "open the terminal's slave");
    if (rows > 0 && cols > 0) {
        struct winsize ws = {rows, cols, 0, 0};
        if (ioctl(master, TIOCSWINSZ, &ws) < 0)
            enter_failed("setup", "set the window size");
    }
    memset(&control, 0, sizeof control);
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &master, sizeof(int));
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            enter_failed("setup", "hand the terminal to the server");
    close(master);
    close(sock);
    return slave;
}

static void forward_signal(int sig)
{
    if (child_pid > 0)
        kill((pid_t)child_pid, sig);
}

static int cmd_enter(int argc, char **argv)
{
    long long target = -1, start_time = -1, env_fd = -1, sfd = -1, pty_fd = -1;
    long long rows = 0, cols = 0;
    int slave = -1;
    const char *cwd = "/";
    const char *cgroups[MAX_CGROUPS];
    int ncgroups = 0, want_setsid = 0, i;
    char **cmd = NULL;
    char **env = NULL;
    int dirfd;
    char procpath[64];
    static const struct {
        const char *name;
        int type;
    } namespaces[] = {
        {"ns/cgroup", CLONE_NEWCGROUP}, {"ns/ipc", CLONE_NEWIPC}, {"ns/uts", CLONE_NEWUTS},
        {"ns/net", CLONE_NEWNET},       {"ns/pid", CLONE_NEWPID}, {"ns/mnt", CLONE_NEWNS},
    };
    int nsfd[sizeof namespaces / sizeof namespaces[0]];
    int last_cap;
    sigset_t forwarded, old;
    pid_t pid;
    int status;

    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            cmd = argv + i + 1;
            break;
        } else if (strcmp(argv[i], "--pid") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 1, INT_MAX, &target) < 0)
                usage();
        } else if (strcmp(argv[i], "--start-time") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 0, LLONG_MAX, &start_time) < 0)
                usage();
        } else if (strcmp(argv[i], "--cgroup-procs") == 0 && i + 1 < argc) {
            if (ncgroups == MAX_CGROUPS)
                usage();
            cgroups[ncgroups++] = argv[++i];
        } else if (strcmp(argv[i], "--cwd") == 0 && i + 1 < argc) {
            cwd = argv[++i];
        } else if (strcmp(argv[i], "--setsid") == 0) {
            want_setsid = 1;
        } else if (strcmp(argv[i], "--env-fd") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 3, INT_MAX, &env_fd) < 0)
                usage();
        } else if (strcmp(argv[i], "--status-fd") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 3, INT_MAX, &sfd) < 0)
                usage();
        } else if (strcmp(argv[i], "--pty-fd") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 3, INT_MAX, &pty_fd) < 0)
                usage();
        } else if (strcmp(argv[i], "--winsize") == 0 && i + 1 < argc) {
            char *comma = strchr(argv[++i], ',');
            if (comma == NULL)
                usage();
            *comma = '\0';
            if (parse_int(argv[i], 1, 10000, &rows) < 0 || parse_int(comma + 1, 1, 10000, &cols) < 0)
                usage();
        } else
            usage();
    }
    if (target < 0 || cmd == NULL || cmd[0] == NULL)
        usage();
    if (sfd >= 0) {
        if (fcntl((int)sfd, F_SETFD, FD_CLOEXEC) < 0) {
            fprintf(stderr, PROG ": enter: status fd %lld: %s\n", sfd, strerror(errno));
            return EXIT_SETUP;
        }
        status_fd = (int)sfd;
    }
    if (cwd[0] != '/') {
        errno = 0;
        enter_failed("setup", "working directory must be absolute");
    }
    if (env_fd >= 0)
        env = read_env((int)env_fd);
    last_cap = read_cap_last_cap();

    for (i = 0; i < ncgroups; i++)
        if (join_cgroup(cgroups[i]) < 0)
            enter_failed("setup", "join cgroup %s", cgroups[i]);

    /* Hold /proc/PID open: if the pid is reused after the start-time check, every openat below
     * fails instead of reaching another process's namespaces. */
    snprintf(procpath, sizeof procpath, "/proc/%lld", target);
    dirfd = open(procpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        if (errno == ENOENT || errno == ESRCH)
            enter_failed("gone", "sandbox process %lld is not running", target);
        enter_failed("setup", "open %s", procpath);
    }
    if (start_time >= 0) {
        unsigned long long actual;
        if (read_start_time(dirfd, &actual) < 0) {
            errno = 0;
            enter_failed("gone", "sandbox process %lld is not running", target);
        }
        if (actual != (unsigned long long)start_time) {
            errno = 0;
            enter_failed("gone", "process %lld is not the sandbox's pid 1 (start time %llu, expected %lld)",
                         target, actual, start_time);
        }
    }
    for (size_t n = 0; n < sizeof namespaces / sizeof namespaces[0]; n++) {
        nsfd[n] = openat(dirfd, namespaces[n].name, O_RDONLY | O_CLOEXEC);
        if (nsfd[n] < 0) {
            if (errno == ENOENT || errno == ESRCH)
                enter_failed("gone", "sandbox process %lld is not running", target);
            enter_failed("setup", "open %s/%s", procpath, namespaces[n].name);
        }
    }
    close(dirfd);
    for (size_t n = 0; n < sizeof namespaces / sizeof namespaces[0]; n++) {
        if (setns(nsfd[n], namespaces[n].type) < 0)
            enter_failed("setup", "setns %s", namespaces[n].name);
        close(nsfd[n]);
    }
    /* No sandbox process may open /proc/<pid>/exe (this binary, on the host) or our memory. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        enter_failed("setup", "set non-dumpable");
    if (pty_fd >= 0) {
        want_setsid = 1; /* a terminal needs a session of its own to be its controlling terminal */
        slave = open_sandbox_pty((int)pty_fd, (unsigned short)rows, (unsigned short)cols);
    }

    sigemptyset(&forwarded);
    sigaddset(&forwarded, SIGTERM);
    sigaddset(&forwarded, SIGINT);
    sigaddset(&forwarded, SIGHUP);
    sigprocmask(SIG_BLOCK, &forwarded, &old);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        enter_failed("setup", "fork");
    if (pid == 0) {
        struct sigaction dfl;
        sigset_t none;
        const char *failed;
        int e;

        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; sig++)
            sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL/SIGSTOP and RT internals: fine */
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);

        if (slave >= 0) {
            if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0)
                enter_failed("setup", "attach the terminal");
            close(slave);
        }
        if (want_setsid) {
            if (setsid() < 0)
                enter_failed("setup", "setsid");
            /* A terminal on stdin (the shell's pty) becomes our controlling terminal; steal it from
             * the helper's session, which we may still do while we hold CAP_SYS_ADMIN. */
            if (isatty(0) && ioctl(0, TIOCSCTTY, 1) < 0)
                enter_failed("setup", "make the terminal the controlling terminal");
        }
        if (chdir(cwd) < 0)
            enter_failed("setup", "cannot change to working directory %s", cwd);
        umask(022);
        errno = 0;
        failed = drop_privileges(last_cap);
        if (failed != NULL)
            enter_failed("setup", "%s", failed);
        if (env != NULL)
            environ = env;
        close_fds_from(3, status_fd);
        /* Last before exec (the terminal, the capabilities and no_new_privs are all set). */
        errno = 0;
        failed = install_seccomp();
        if (failed != NULL)
            enter_failed("setup", "%s", failed);
        execvp(cmd[0], cmd);
        e = errno;
        fprintf(stderr, PROG ": %s: %s\n", cmd[0], strerror(e));
        _exit(e == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXEC);
    }

    if (status_fd >= 0) {
        close(status_fd);
        status_fd = -1;
    }
    if (slave >= 0)
        close(slave); /* only the command holds the terminal: its exit hangs up the master */
    child_pid = pid;
    {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = forward_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);

    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return EXIT_SETUP;
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        struct rlimit nocore = {0, 0};
        sigset_t only;
        setrlimit(RLIMIT_CORE, &nocore);
        signal(sig, SIG_DFL);
        sigemptyset(&only);
        sigaddset(&only, sig);
        sigprocmask(SIG_UNBLOCK, &only, NULL);
        kill(getpid(), sig);
        /* Still alive: the signal's default action is not to terminate. */
        return 128 + sig;
    }
    return EXIT_SETUP;
}

int main(int argc, char **argv)
{
    ensure_stdio();
    if (argc < 2)
        usage();
    /* exec(2) lays the argument strings out back to back; check before relying on it. */
    args_area = argv[0];
    args_len = 0;
    for (int i = 0; i < argc; i++) {
        if (argv[i] != args_area + args_len) {
            args_area = NULL;
            break;
        }
        args_len += strlen(argv[i]) + 1;
    }
    if (strcmp(argv[1], "init") == 0)
        return cmd_init(argc - 2, argv + 2);
    if (strcmp(argv[1], "enter") == 0)
        return cmd_enter(argc - 2, argv + 2);
    usage();
    return 2;
}
