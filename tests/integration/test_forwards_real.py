"""Port forwards both ways, for real, through the API: busybox servers inside, clients on the host.

Traffic goes only to loopback, to the server's own gateway address and to the sandboxes' addresses,
all inside this machine and the namespaces the server made.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
import urllib.request

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.integration.server import RealServer, remove_chains
from tests.integration.support import cached_image_root, ensure_test_image, require_root, require_tools

BUSYBOX = "/bin/busybox"


def free_port(lo: int = 10000, hi: int = 19999) -> int:
    """A port in allowed_ports that nothing listens on."""
    import random
    for _ in range(200):
        port = random.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port")


def http_get(host: str, port: int, seconds: int = 3) -> str:
    """A shell command that GETs / from host:port with bash's /dev/tcp, giving up after ``seconds``.

    (busybox's own wget is statically linked against glibc and crashes resolving names here.)
    """
    return (f"timeout {seconds} bash -c 'exec 3<>/dev/tcp/{host}/{port} && "
            f"printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3' | sed -n '$p'")


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class HostServer:
    """A tiny HTTP server on the host answering its own name, for reverse forwards."""

    def __init__(self, host: str, port: int, text: str) -> None:
        body = text.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Forwards(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "iptables-restore", "ip", "nsenter", "busybox")
        yield ensure_test_image(reactor)
        self.server = RealServer(config={"base_image_dir": cached_image_root()})
        self.addCleanup(self.server.cleanup)
        self.server.start()
        for project in ("web", "ops"):
            self.assertEqual(self.server.api("POST", "/api/projects", {"name": project})[0], 201)

    def sandbox(self, project: str, name: str, text: str | None = None) -> dict:
        """A sandbox with busybox in it, serving ``text`` on port 80 when given."""
        code, sb = self.server.api("POST", f"/api/projects/{project}/sandboxes", {"name": name})
        self.assertEqual(code, 201, sb)
        rootfs = os.path.join(self.server.data_dir, "sandboxes", project, name, "rootfs")
        shutil.copy(BUSYBOX, os.path.join(rootfs, "usr", "local", "bin", "busybox"))
        if text is not None:
            self.run_in(project, name, f"mkdir -p /srv && echo {text} > /srv/index.html && "
                                       "busybox httpd -p 80 -h /srv")
        return sb

    def run_in(self, project: str, name: str, command: str, expect: int | None = 0) -> dict:
        code, result = self.server.api("POST", f"/api/projects/{project}/sandboxes/{name}/exec",
                                       {"command": command, "timeout": 30})
        self.assertEqual(code, 200, result)
        if expect is not None:
            self.assertEqual(result["exit_code"], expect, result)
        return result

    def rules_tagged(self, tag: str) -> list[str]:
        out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if f'"{tag}"' in line or f" {tag} " in line]

    def test_forward_from_the_host_and_reverse_forward_from_inside(self):
        a = self.sandbox("web", "a", "hello-from-a")
        host_port = free_port()
        code, body = self.server.api("POST", "/api/projects/web/sandboxes/a/ports",
                                     {"host_port": host_port, "container_port": 80})
        self.assertEqual((code, body["port_mappings"]), (200, {str(host_port): 80}))
        self.assertEqual(fetch(f"http://127.0.0.1:{host_port}/").strip(), "hello-from-a")
        self.assertEqual(fetch(f"http://{a['gateway']}:{host_port}/").strip(), "hello-from-a")

        # A host service on 127.0.0.1 only, reached from inside through a reverse forward.
        private_port = free_port()
        private = HostServer("127.0.0.1", private_port, "host-private")
        self.addCleanup(private.close)
        code, body = self.server.api("POST", "/api/projects/web/sandboxes/a/reverse_ports",
                                     {"container_port": 8080, "host_port": private_port})
        self.assertEqual((code, body["reverse_port_mappings"]), (200, {"8080": private_port}))
        out = self.run_in("web", "a", http_get("127.0.0.1", 8080))
        self.assertEqual(out["stdout"].strip(), "host-private")
        out = self.run_in("web", "a", http_get(a["gateway"], 8080))
        self.assertEqual(out["stdout"].strip(), "host-private")

        # A host service that is not reverse-forwarded is out of reach, even listening everywhere.
        public_port = free_port()
        public = HostServer("0.0.0.0", public_port, "host-public")
        self.addCleanup(public.close)
        self.assertEqual(fetch(f"http://127.0.0.1:{public_port}/"), "host-public")  # it does answer
        for host, port in ((a["gateway"], public_port), ("127.0.0.1", private_port), (a["gateway"], private_port)):
            out = self.run_in("web", "a", http_get(host, port, 2), expect=None)
            self.assertEqual(out["stdout"], "", (host, port))

        code, status = self.server.api("GET", "/api/status")
        web = [p for p in status["projects"] if p["name"] == "web"][0]
        self.assertEqual(web["sandboxes"][0]["port_mappings"], {str(host_port): 80})
        self.assertEqual(web["sandboxes"][0]["reverse_port_mappings"], {"8080": private_port})

        # Removing them ends both.
        self.assertEqual(self.server.api("DELETE", f"/api/projects/web/sandboxes/a/ports/{host_port}")[0], 200)
        self.assertEqual(self.server.api("DELETE", "/api/projects/web/sandboxes/a/reverse_ports/8080")[0], 200)
        with self.assertRaises(OSError):
            fetch(f"http://127.0.0.1:{host_port}/", timeout=2)
        out = self.run_in("web", "a", http_get("127.0.0.1", 8080, 2), expect=None)
        self.assertEqual(out["stdout"], "")

    def test_projects_are_isolated_from_each_other(self):
        self.sandbox("web", "a", "a")
        a2 = self.sandbox("web", "a2", "a2")
        b = self.sandbox("ops", "b", "b")
        out = self.run_in("web", "a", http_get(a2["address"], 80))
        self.assertEqual(out["stdout"].strip(), "a2")  # same project: reachable
        out = self.run_in("web", "a", http_get(b["address"], 80, 2), expect=None)
        self.assertEqual(out["stdout"], "")             # other project: not
        out = self.run_in("ops", "b", http_get(a2["address"], 80, 2), expect=None)
        self.assertEqual(out["stdout"], "")

    def test_bad_forward_requests(self):
        self.sandbox("web", "a")
        listening = HostServer("127.0.0.1", free_port(), "busy")
        self.addCleanup(listening.close)
        busy = listening.httpd.server_address[1]
        port = free_port()
        cases = [({"host_port": 80, "container_port": 80}, 400), ({"host_port": port, "container_port": 0}, 400),
                 ({"host_port": str(port), "container_port": 80}, 400), ({"container_port": 80}, 400),
                 ({"host_port": busy, "container_port": 80}, 409)]
        for body, status in cases:
            code, answer = self.server.api("POST", "/api/projects/web/sandboxes/a/ports", body)
            self.assertEqual(code, status, (body, answer))
        self.assertEqual(self.server.api("POST", "/api/projects/web/sandboxes/a/ports",
                                         {"host_port": port, "container_port": 80})[0], 200)
        self.assertEqual(self.server.api("POST", "/api/projects/web/sandboxes/a/ports",
                                         {"host_port": port, "container_port": 81})[0], 409)
        self.assertEqual(self.server.api("DELETE", "/api/projects/web/sandboxes/a/ports/12")[0], 404)
        self.assertEqual(self.server.api("POST", "/api/projects/web/sandboxes/zz/ports",
                                         {"host_port": port, "container_port": 80})[0], 404)

    def test_delete_leaves_no_rule_or_link(self):
        a = self.sandbox("web", "a", "a")
        port = free_port()
        self.server.api("POST", "/api/projects/web/sandboxes/a/ports", {"host_port": port, "container_port": 80})
        self.server.api("POST", "/api/projects/web/sandboxes/a/reverse_ports", {"container_port": 81, "host_port": port + 1 if port < 19999 else port - 1})
        self.assertTrue(self.rules_tagged("bolt:web/a"))
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        self.assertIn(self.server.instance, links)
        self.assertEqual(self.server.api("DELETE", "/api/projects/web/sandboxes/a")[0], 200)
        self.assertEqual(self.rules_tagged("bolt:web/a"), [])
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        self.assertNotIn(self.server.instance, links)
        self.assertNotIn(a["address"], subprocess.run(["ip", "route"], capture_output=True, text=True).stdout)

    def test_forwards_survive_a_crash_and_a_flush(self):
        self.sandbox("web", "a", "still-here")
        port = free_port()
        self.server.api("POST", "/api/projects/web/sandboxes/a/ports", {"host_port": port, "container_port": 80})
        self.server.kill()  # the server is gone; its sandbox and forward are not
        self.assertEqual(fetch(f"http://127.0.0.1:{port}/").strip(), "still-here")
        remove_chains(self.server.instance.upper() + "-")  # as `iptables -F` would leave it
        with self.assertRaises(OSError):
            fetch(f"http://127.0.0.1:{port}/", timeout=2)
        self.server.start()  # rebuilt from the stored state
        self.assertEqual(fetch(f"http://127.0.0.1:{port}/").strip(), "still-here")
        self.server.stop()
        self.server.start()
        self.assertEqual(fetch(f"http://127.0.0.1:{port}/").strip(), "still-here")
