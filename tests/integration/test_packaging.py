"""Packaging: packaging/install.sh into a staging tree, bolt.service, the logrotate file, `make deb`.

Everything here runs the real tools as root: the install script (with --root, so the host's own
/etc, /opt and /var are not touched), systemd-analyze, logrotate, dpkg-buildpackage through
`make deb` (which installs missing build dependencies with apt on its first run).  The Debian
package is built once per test run and inspected by several tests; one of them (DebInstallTests)
installs it on this machine with apt as README.rst says, runs it and purges it again -- refusing to
run over an existing installation.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

import bolt
from tests.integration.support import require_root, require_tools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGING = os.path.join(REPO, "packaging")
INSTALL_SH = os.path.join(PACKAGING, "install.sh")
UNIT_FILE = os.path.join(PACKAGING, "bolt.service")
LOGROTATE_FILE = os.path.join(PACKAGING, "bolt.logrotate")
VENV = "/opt/bolt/venv"
TWISTD = VENV + "/bin/twistd"

#: Options the unit must not use, each because it breaks the server or its sandboxes (the reasons
#: are in packaging/bolt.service).
FORBIDDEN_UNIT_OPTIONS = (
    "User", "Group", "DynamicUser", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
    "PrivateMounts", "PrivateNetwork", "PrivateUsers", "PrivateIPC", "ReadWritePaths", "ReadOnlyPaths",
    "InaccessiblePaths", "MountFlags", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset", "ProtectClock",
    "ProtectHostname", "RestrictNamespaces", "RestrictSUIDSGID", "NoNewPrivileges", "SystemCallFilter",
    "SystemCallArchitectures", "RestrictAddressFamilies", "MemoryDenyWriteExecute",
    "CapabilityBoundingSet", "DeviceAllow", "DevicePolicy", "OOMScoreAdjust",
)


def debian_python() -> str:
    """The version ("3.11") of /usr/bin/python3, which the package's venv is built on."""
    return run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the tools: no make job server of an enclosing `make test`, no password."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "BOLT_ADMIN_PASSWORD",
                        "DEB_BUILD_OPTIONS", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


def run(argv: list[str], *, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", clean_env())
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}")
    return result


def unit_settings(text: str) -> dict[str, list[str]]:
    """The unit's ``Key=value`` lines, every value of a key in order (systemd allows repeats)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def verify_unit(testcase, unit_text: str, twistd: str) -> None:
    """`systemd-analyze verify` on the unit with ExecStart pointing at an existing twistd.

    verify insists that the ExecStart binary exists, so the unit is checked in a temporary
    directory with the binary path replaced; every other line is the one under test.  verify
    reports unknown keys and bad values only as warnings, so its output must be empty too.
    """
    require_tools(testcase, "systemd-analyze")
    testcase.assertIn(f"ExecStart={TWISTD} ", unit_text)
    directory = tempfile.mkdtemp(prefix="bolt-unit-")
    testcase.addCleanup(shutil.rmtree, directory)
    path = os.path.join(directory, "bolt.service")
    with open(path, "w") as f:
        f.write(unit_text.replace(f"ExecStart={TWISTD} ", f"ExecStart={twistd} "))
    result = run(["systemd-analyze", "verify", path], check=False)
    testcase.assertEqual((result.returncode, result.stdout), (0, ""),
                         f"systemd-analyze verify {path} complained")


class UnitFileTests(SynchronousTestCase):
    """packaging/bolt.service as shipped."""

    def setUp(self) -> None:
        require_root(self)
        with open(UNIT_FILE) as f:
            self.text = f.read()
        self.settings = unit_settings(self.text)

    def test_verify(self) -> None:
        """The shipped unit passes systemd-analyze verify (with this checkout's twistd)."""
        verify_unit(self, self.text, os.path.join(os.path.dirname(sys.executable), "twistd"))

    def test_command(self) -> None:
        """twistd in the foreground with the documented options, logging through systemd to the log file."""
        (command,) = self.settings["ExecStart"]
        self.assertEqual(command.split(), [
            TWISTD, "--nodaemon", "--pidfile=", "--logger=bolt.logs.observer", "bolt", "--host", "0.0.0.0",
            "--port", "5000", "--config", "/etc/bolt/config.json", "--data-dir", "/var/bolt"])
        self.assertEqual(self.settings["StandardOutput"], ["append:/var/log/bolt_server.log"])
        self.assertEqual(self.settings["StandardError"], ["journal"])
        self.assertEqual(self.settings["Type"], ["exec"])
        self.assertEqual(self.settings["Restart"], ["always"])
        self.assertEqual(self.settings["WantedBy"], ["multi-user.target"])

    def test_sandboxes_survive_stop(self) -> None:
        """Only the main process is signalled; Bolt's cgroups are not delegated below the unit."""
        self.assertEqual(self.settings["KillMode"], ["process"])
        self.assertEqual(self.settings["Delegate"], ["no"])
        self.assertEqual(self.settings["TasksMax"], ["infinity"])

    def test_hardening(self) -> None:
        """Root, with only the hardening that leaves mounts, namespaces and sandboxes working."""
        present = sorted(set(FORBIDDEN_UNIT_OPTIONS) & set(self.settings))
        self.assertEqual(present, [], "options that break Bolt or its sandboxes")
        self.assertEqual(self.settings["RestrictRealtime"], ["yes"])
        self.assertEqual(self.settings["LockPersonality"], ["yes"])
        self.assertEqual(self.settings["UMask"], ["0027"])


class InstallScriptTests(SynchronousTestCase):
    """packaging/install.sh --root: install, install again, uninstall, purge."""

    def setUp(self) -> None:
        require_root(self)
        require_tools(self, "groupadd", "mount")
        self.root = tempfile.mkdtemp(prefix="bolt-install-")
        self.addCleanup(self._remove_root)

    def _remove_root(self) -> None:
        target = os.path.join(self.root, "var/bolt/sandboxes/demo")
        if os.path.ismount(target):
            subprocess.run(["umount", target], check=False)
        shutil.rmtree(self.root)

    def path(self, target: str) -> str:
        return os.path.join(self.root, target.lstrip("/"))

    def install(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([INSTALL_SH, "--root", self.root, *args], check=check, timeout=600)

    def bolt_gid(self) -> int:
        with open(self.path("/etc/group")) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[0] == "bolt":
                    return int(fields[2])
        self.fail("no bolt group in the staging tree's /etc/group")

    def snapshot(self) -> dict[str, tuple]:
        """Every path of the tree outside the venv: type, mode, owner, and content or link target."""
        found = {}
        for directory, dirs, files in os.walk(self.root):
            if os.path.relpath(directory, self.root) == "opt/bolt":
                dirs.remove("venv")
            for name in dirs + files:
                path = os.path.join(directory, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    content = os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        content = f.read()
                else:
                    content = None
                found[os.path.relpath(path, self.root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                           st.st_uid, st.st_gid, content)
        return found

    def assertInstalled(self) -> None:
        gid = self.bolt_gid()
        for directory in ("/etc/bolt", "/var/bolt", "/var/bolt/projects", "/var/bolt/sandboxes",
                          "/var/bolt/base_images"):
            st = os.lstat(self.path(directory))
            self.assertTrue(stat.S_ISDIR(st.st_mode), directory)
            self.assertEqual((oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid), (oct(0o750), 0, 0), directory)
        log = os.lstat(self.path("/var/log/bolt_server.log"))
        self.assertEqual((oct(stat.S_IMODE(log.st_mode)), log.st_uid, log.st_gid), (oct(0o640), 0, gid))

        # The configuration, made by the server's own code, with the generated password beside it.
        for secret in ("/etc/bolt/config.json", "/etc/bolt/initial-admin-password"):
            self.assertEqual(mode(self.path(secret)), 0o600, secret)
        with open(self.path("/etc/bolt/config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["base_image_dir"], "/var/bolt/base_images")
        self.assertTrue(config["admin_password"].startswith("scrypt$"))

        unit = self.path("/etc/systemd/system/bolt.service")
        self.assertEqual(mode(unit), 0o644)
        with open(unit) as f, open(UNIT_FILE) as g:
            self.assertEqual(f.read(), g.read())
        wants = self.path("/etc/systemd/system/multi-user.target.wants/bolt.service")
        self.assertEqual(os.readlink(wants), "/etc/systemd/system/bolt.service")
        # The client on PATH, a link into the venv that runs.
        self.assertEqual(os.readlink(self.path("/usr/local/bin/bolt")), VENV + "/bin/bolt")
        self.assertIn("usage: bolt", run([self.path(VENV + "/bin/bolt"), "--help"]).stdout)
        logrotate = self.path("/etc/logrotate.d/bolt")
        self.assertEqual(mode(logrotate), 0o644)
        with open(logrotate) as f, open(LOGROTATE_FILE) as g:
            self.assertEqual(f.read(), g.read())

        # The venv: twistd lists the bolt plugin, whose cache the script wrote.
        twistd = self.path(TWISTD)
        self.assertTrue(os.access(twistd, os.X_OK), twistd)
        usage = run([twistd, "--help"]).stdout
        self.assertRegex(usage, r"(?m)^\s+bolt\s+Bolt sandbox server")
        self.assertTrue(glob.glob(self.path(VENV + "/lib/python3.*/site-packages/twisted/plugins/dropin.cache")))

    def test_install_reinstall_uninstall_purge(self) -> None:
        first = self.install()
        self.assertIn("/etc/bolt/initial-admin-password", first.stdout)
        self.assertInstalled()
        with open(self.path("/etc/systemd/system/bolt.service")) as f:
            verify_unit(self, f.read(), self.path(TWISTD))
        before = self.snapshot()

        # Again, after modes drifted: the same tree, the configuration and its password untouched.
        os.chmod(self.path("/var/bolt"), 0o777)
        os.chmod(self.path("/var/log/bolt_server.log"), 0o666)
        second = self.install()
        self.assertNotIn("initial-admin-password", second.stdout)
        self.assertInstalled()
        self.assertEqual(self.snapshot(), before)

        # No purge while something is mounted below /var/bolt (a sandbox's root filesystem).
        target = self.path("/var/bolt/sandboxes/demo")
        os.mkdir(target)
        run(["mount", "-t", "tmpfs", "-o", "size=1m", "bolt-test", target])
        refused = self.install("--uninstall", "--purge", check=False)
        self.assertNotEqual(refused.returncode, 0, refused.stdout)
        self.assertIn("still mounted", refused.stdout)
        self.assertTrue(os.path.exists(self.path("/etc/systemd/system/bolt.service")))
        run(["umount", target])
        os.rmdir(target)

        # Uninstall: the service is gone, the configuration and data stay.
        self.install("--uninstall")
        for gone in ("/etc/systemd/system/bolt.service", "/etc/systemd/system/multi-user.target.wants/bolt.service",
                     "/etc/logrotate.d/bolt", "/opt/bolt", "/usr/local/bin/bolt"):
            self.assertFalse(os.path.lexists(self.path(gone)), gone)
        for kept in ("/etc/bolt/config.json", "/var/bolt/projects", "/var/bolt/sandboxes", "/var/bolt/base_images",
                     "/var/log/bolt_server.log"):
            self.assertTrue(os.path.exists(self.path(kept)), kept)

        # Purge: configuration, data and log go; the group stays.
        self.install("--uninstall", "--purge")
        for gone in ("/etc/bolt", "/var/bolt", "/var/log/bolt_server.log"):
            self.assertFalse(os.path.lexists(self.path(gone)), gone)
        self.bolt_gid()

    def test_someone_elses_bolt_command_is_left_alone(self) -> None:
        os.makedirs(self.path("/usr/local/bin"))
        with open(self.path("/usr/local/bin/bolt"), "w") as f:
            f.write("#!/bin/sh\necho not ours\n")
        installed = self.install()
        self.assertIn("not linking /usr/local/bin/bolt", installed.stdout)
        self.install("--uninstall")
        with open(self.path("/usr/local/bin/bolt")) as f:
            self.assertEqual(f.read(), "#!/bin/sh\necho not ours\n")

    def test_refuses_bad_arguments(self) -> None:
        result = run([INSTALL_SH, "--purge"], check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--purge goes with --uninstall", result.stdout)
        result = run([INSTALL_SH, "--root", "/"], check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--root / is the real system", result.stdout)


_deb: dict[str, object] = {}


def built_deb() -> str:
    """Build the package with `make deb` once per test run; return its path."""
    if "error" in _deb:
        raise AssertionError(f"make deb failed earlier in this run:\n{_deb['error']}")
    if "path" not in _deb:
        result = run(["make", "-C", REPO, "deb"], check=False, timeout=900)
        if result.returncode != 0:
            _deb["error"] = result.stdout[-20000:]
            raise AssertionError(f"make deb exited with {result.returncode}:\n{_deb['error']}")
        arch = run(["dpkg", "--print-architecture"]).stdout.strip()
        path = os.path.join(REPO, "build", f"bolt_{bolt.__version__}_{arch}.deb")
        if not os.path.isfile(path):
            raise AssertionError(f"make deb did not produce {path}:\n{result.stdout[-5000:]}")
        _deb["path"] = path
    return _deb["path"]


class DebPackageTests(SynchronousTestCase):
    """`make deb`: the package's metadata, contents, virtualenv, maintainer scripts and logrotate file."""

    def setUp(self) -> None:
        require_root(self)
        require_tools(self, "make", "dpkg-deb", "apt-get")
        self.deb = built_deb()

    def extract(self) -> str:
        directory = tempfile.mkdtemp(prefix="bolt-deb-")
        self.addCleanup(shutil.rmtree, directory)
        run(["dpkg-deb", "-R", self.deb, directory])
        return directory

    def test_metadata(self) -> None:
        """bolt_<version>_<arch>.deb, depending on the interpreter of its venv and the host tools."""
        fields = {}
        for name in ("Package", "Version", "Architecture", "Depends", "Recommends"):
            fields[name] = run(["dpkg-deb", "-f", self.deb, name]).stdout.strip()
        self.assertEqual(fields["Package"], "bolt")
        self.assertEqual(fields["Version"], bolt.__version__)
        # Compiled code inside (the bolt-sandbox helper, extension modules): not "all".
        self.assertEqual(fields["Architecture"], run(["dpkg", "--print-architecture"]).stdout.strip())
        depends = {d.split()[0] for d in fields["Depends"].split(", ")}
        self.assertIn(f"python{debian_python()}", depends)
        for tool in ("libc6", "debootstrap", "iptables", "iproute2", "mount", "util-linux", "openssl", "passwd"):
            self.assertIn(tool, depends)
        self.assertEqual(fields["Recommends"], "logrotate")
        info = run(["dpkg-deb", "-I", self.deb]).stdout
        for script in ("preinst", "postinst", "prerm", "postrm", "conffiles"):
            self.assertRegex(info, rf"(?m)^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+{script}\b")

    def test_contents(self) -> None:
        """Files and modes, as `dpkg-deb -c` lists them."""
        listing = {}
        for line in run(["dpkg-deb", "-c", self.deb]).stdout.splitlines():
            perms, owner, _size, _date, _time, name = line.split(None, 5)
            name, _, target = name.partition(" -> ")
            listing[name.rstrip("/")] = (perms, owner, target or None)
        expected = {
            "./etc/bolt": ("drwxr-x---", "root/root"),
            "./var/bolt": ("drwxr-x---", "root/root"),
            "./var/bolt/projects": ("drwxr-x---", "root/root"),
            "./var/bolt/sandboxes": ("drwxr-x---", "root/root"),
            "./var/bolt/base_images": ("drwxr-x---", "root/root"),
            "./lib/systemd/system/bolt.service": ("-rw-r--r--", "root/root"),
            "./etc/logrotate.d/bolt": ("-rw-r--r--", "root/root"),
            "./opt/bolt/venv/bin/twistd": ("-rwxr-xr-x", "root/root"),
            "./opt/bolt/venv/bin/bolt": ("-rwxr-xr-x", "root/root"),
            "./usr/share/doc/bolt/copyright": ("-rw-r--r--", "root/root"),
        }
        for name, (perms, owner) in expected.items():
            self.assertIn(name, listing)
            self.assertEqual(listing[name][:2], (perms, owner), name)
        site = f"./opt/bolt/venv/lib/python{debian_python()}/site-packages"
        self.assertIn(f"{site}/twisted/plugins/bolt_plugin.py", listing)
        self.assertIn(f"{site}/bolt/service.py", listing)
        # The client on PATH: /usr/bin/bolt, a link to the venv's.
        perms, _, target = listing["./usr/bin/bolt"]
        self.assertTrue(perms.startswith("l"), perms)
        self.assertEqual(os.path.normpath(os.path.join("/usr/bin", target)), "/opt/bolt/venv/bin/bolt")
        python = listing["./opt/bolt/venv/bin/python3"]
        self.assertTrue(python[0].startswith("l"))
        # Nothing built for the build machine only: no byte code, no plugin cache, no config or log.
        for name in listing:
            self.assertNotIn("__pycache__", name)
            self.assertFalse(name.endswith(("dropin.cache", "config.json", ".log")), name)

    def test_unit_and_logrotate_are_the_shipped_files(self) -> None:
        root = self.extract()
        for packaged, source in (("lib/systemd/system/bolt.service", UNIT_FILE),
                                 ("etc/logrotate.d/bolt", LOGROTATE_FILE)):
            with open(os.path.join(root, packaged)) as f, open(source) as g:
                self.assertEqual(f.read(), g.read(), packaged)
        with open(os.path.join(root, "DEBIAN", "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/logrotate.d/bolt"])

    def test_packaged_venv(self) -> None:
        """The venv runs from the package: Bolt imports, twistd finds the plugin, the helper is there."""
        root = self.extract()
        venv = os.path.join(root, VENV.lstrip("/"))
        with open(os.path.join(venv, "bin", "twistd")) as f:
            self.assertEqual(f.readline().strip(), f"#!{VENV}/bin/python")
        with open(os.path.join(venv, "pyvenv.cfg")) as f:
            self.assertNotIn(REPO, f.read())  # no trace of the build directory
        probe = run([os.path.join(venv, "bin", "python"), "-c", (
            "import os, sys\n"
            "from twisted.application.service import IServiceMaker\n"
            "from twisted.plugin import getPlugins\n"
            "import bolt, bolt.service\n"
            "assert bolt.__file__.startswith(sys.prefix), bolt.__file__\n"
            "assert any(p.tapname == 'bolt' for p in getPlugins(IServiceMaker))\n"
            "from bolt.host import native\n"
            "print(native.binary_path())\n")], env=clean_env(PYTHONDONTWRITEBYTECODE="1"))
        helper = probe.stdout.strip().splitlines()[-1]
        self.assertTrue(helper.startswith(venv) and os.access(helper, os.X_OK), probe.stdout)
        with open(helper, "rb") as f:
            self.assertEqual(f.read(4), b"\x7fELF")

    def test_maintainer_scripts(self) -> None:
        """The scripts parse; the postinst prepares everything before debhelper starts the service."""
        root = self.extract()
        for script in ("preinst", "postinst", "prerm", "postrm"):
            run(["sh", "-n", os.path.join(root, "DEBIAN", script)])
        with open(os.path.join(root, "DEBIAN", "postinst")) as f:
            postinst = f.read()
        start = postinst.index("deb-systemd-invoke")
        for step in ("groupadd --system bolt", "install -m 0640 -o root -g bolt", "getPlugins", "config.load"):
            self.assertLess(postinst.index(step), start, step)

    def test_logrotate(self) -> None:
        """The packaged logrotate file is valid, and a rotation keeps modes and an O_APPEND writer working.

        logrotate is a build dependency of the package (the build checks the file with it), so it
        is installed once `make deb` has run.
        """
        require_tools(self, "logrotate")
        root = self.extract()
        config = os.path.join(root, "etc", "logrotate.d", "bolt")
        state = os.path.join(root, "logrotate.state")
        result = run(["logrotate", "--debug", "--state", state, config])
        self.assertIn("/var/log/bolt_server.log", result.stdout)
        self.assertNotIn("error", result.stdout.lower())

        # A forced rotation of a copy of the log, opened with O_APPEND as systemd opens it.
        logdir = os.path.join(root, "log")
        os.mkdir(logdir, 0o755)
        log = os.path.join(logdir, "bolt_server.log")
        gid = 4242  # stands for the bolt group, which need not exist on this host
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.addCleanup(os.close, fd)
        os.fchown(fd, 0, gid)
        os.fchmod(fd, 0o640)
        os.write(fd, b"before rotation\n" * 100)
        with open(config) as f:
            text = f.read().replace("/var/log/bolt_server.log", log)
        rewritten = os.path.join(root, "logrotate.conf")
        with open(rewritten, "w") as f:
            f.write(text)
        run(["logrotate", "--force", "--state", state, rewritten])
        os.write(fd, b"after rotation\n")
        with open(log, "rb") as f:
            self.assertEqual(f.read(), b"after rotation\n")  # no hole of zeros before it
        with open(log + ".1", "rb") as f:
            self.assertEqual(f.read(), b"before rotation\n" * 100)
        for path in (log, log + ".1"):
            st = os.stat(path)
            self.assertEqual((oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid), (oct(0o640), 0, gid), path)



class DebInstallTests(SynchronousTestCase):
    """README's `apt install ./build/bolt_<version>_<arch>.deb` on this very machine, then `apt purge bolt`.

    No systemd runs here (so the service is enabled, not started); the packaged twistd is started by
    hand instead, on loopback with a configuration of its own, and answered through the packaged
    `bolt` command.  The test refuses to run over an existing installation rather than replace it,
    and removes the package (and the bolt group, if it made it) whatever happens.
    """

    PATHS = ("/opt/bolt", "/etc/bolt", "/var/bolt", "/var/log/bolt_server.log", "/usr/bin/bolt",
             "/lib/systemd/system/bolt.service", "/etc/logrotate.d/bolt")

    def setUp(self) -> None:
        require_root(self)
        require_tools(self, "apt", "dpkg-query", "groupdel")
        installed = run(["dpkg-query", "-W", "-f=${Status}", "bolt"], check=False).stdout
        if "installed" in installed and "not-installed" not in installed:
            self.fail("the bolt package is installed on this machine: this test would replace and purge it")
        for path in self.PATHS:
            if os.path.lexists(path):
                self.fail(f"{path} exists: this test installs Bolt system-wide and would replace it")
        self.deb = built_deb()
        self.had_group = run(["getent", "group", "bolt"], check=False).returncode == 0
        self.addCleanup(self._purge)

    def _purge(self) -> None:
        run(["apt-get", "purge", "-y", "-q", "bolt"], check=False, env=clean_env(DEBIAN_FRONTEND="noninteractive"))
        if not self.had_group:
            run(["groupdel", "bolt"], check=False)

    def test_apt_install_run_and_purge(self) -> None:
        from tests.integration.server import RealServer
        from tests.integration.support import cached_image_root

        env = clean_env(DEBIAN_FRONTEND="noninteractive")
        installed = run(["apt", "install", "-y", "--no-install-recommends", self.deb], env=env, timeout=900)
        self.assertIn("/etc/bolt/initial-admin-password", installed.stdout)
        status = run(["dpkg-query", "-W", "-f=${Status} ${Version}", "bolt"]).stdout
        self.assertEqual(status, f"install ok installed {bolt.__version__}")

        # What the package put in place, as an administrator would look at it.
        self.assertEqual(mode("/etc/bolt/config.json"), 0o600)
        self.assertEqual(mode("/etc/bolt/initial-admin-password"), 0o600)
        gid = int(run(["getent", "group", "bolt"]).stdout.split(":")[2])
        log = os.lstat("/var/log/bolt_server.log")
        self.assertEqual((mode("/var/log/bolt_server.log"), log.st_uid, log.st_gid), (0o640, 0, gid))
        self.assertEqual(os.path.realpath("/usr/bin/bolt"), VENV + "/bin/bolt")
        self.assertRegex(run([TWISTD, "--help"]).stdout, r"(?m)^\s+bolt\s+Bolt sandbox server")
        with open("/lib/systemd/system/bolt.service") as f:
            verify_unit(self, f.read(), TWISTD)
        self.assertTrue(os.path.islink("/etc/systemd/system/multi-user.target.wants/bolt.service"))

        # The packaged server runs and answers the packaged client.
        server = RealServer(twistd=TWISTD, config={"base_image_dir": cached_image_root()})
        try:
            server.start()
            home = tempfile.mkdtemp(prefix="bolt-cli-home-")
            self.addCleanup(shutil.rmtree, home)
            client_env = clean_env(HOME=home, BOLT_PASSWORD=server.password)
            run(["/usr/bin/bolt", "remote", "add", "local", server.url, "--user", "admin", "--yes"],
                env=client_env)
            status = json.loads(run(["/usr/bin/bolt", "status", "--json"], env=client_env).stdout)
            self.assertEqual(status["version"], bolt.__version__)
            self.assertEqual(status["projects"], [])
        finally:
            server.cleanup()

        # Purge: everything the package made is gone (the group stays, as Debian does it).
        run(["apt-get", "purge", "-y", "-q", "bolt"], env=env, timeout=600)
        for path in self.PATHS + ("/etc/systemd/system/multi-user.target.wants/bolt.service",):
            self.assertFalse(os.path.lexists(path), path)
        self.assertEqual(run(["getent", "group", "bolt"], check=False).returncode, 0)
