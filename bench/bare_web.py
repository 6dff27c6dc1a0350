"""The floor of the API figure: a bare twisted.web resource on TLS, in a process of its own.

Same reactor type as twistd picks on Linux (epoll), same certificate and TLS options as Bolt's API
(:func:`bolt.tls.context_factory`), HTTP/1.1 keep-alive, and a resource that answers every GET with
a JSON body built per request from the same document Bolt's ``/api/status`` returned.  No
authentication, no routing beyond twisted.web's, no access log.

    python -m bench.bare_web PORT CERT KEY BODY.json
"""

from __future__ import annotations

import json
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.web import resource, server  # noqa: E402

from bolt.tls import context_factory  # noqa: E402


class Status(resource.Resource):
    isLeaf = True

    def __init__(self, document) -> None:
        super().__init__()
        self.document = document

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(self.document).encode("utf-8") + b"\n"


class QuietSite(server.Site):
    def log(self, request) -> None:
        pass


def main() -> None:
    port, cert, key, body = sys.argv[1:5]
    with open(body) as f:
        document = json.load(f)
    reactor.listenSSL(int(port), QuietSite(Status(document)), context_factory(cert, key), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
