"""The lab's demo backend: an HTTP server that says who answered and whom it saw.

Every request (any path, GET or HEAD) gets ``200 OK`` with the body::

    backend=192.168.36.11 client=192.168.36.2

``backend`` is the node's own address (the address the server listens on) and
``client`` the source address of the connection as the backend saw it: after a
ClusterIP or NodePort hop it shows whether the proxy masqueraded (the node's address)
or kept the client's (``externalTrafficPolicy: Local``).

Standard library only, and free of any svcops import: ``svcops lab up`` runs it inside
each node's namespaces with the node's own python3 (``python3 -I -S - ARGS`` with this
file on standard input), where the machine's virtualenv is not visible. HTTP/1.0: one
request per connection, so every request is a new connection and a new choice of
backend for the rules in front of it. Requests are not logged: bounded load loops from
the tests would only fill the log.
"""

from __future__ import annotations

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def body(backend: str, client: str) -> bytes:
    return f"backend={backend} client={client}\n".encode()


class Handler(BaseHTTPRequestHandler):
    server_version = "svcops-lab-backend/1"
    sys_version = ""
    backend_address = "?"

    def _answer(self, with_body: bool) -> None:
        data = body(self.backend_address, self.client_address[0])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve(address: str, port: int) -> None:
    handler = type("BoundHandler", (Handler,), {"backend_address": address})
    with Server((address, port), handler) as server:
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="svcops-lab-backend", description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="the address to listen on (the node's own)")
    p.add_argument("--port", type=int, default=80)
    args = p.parse_args(argv)
    try:
        serve(args.address, args.port)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"svcops-lab-backend: cannot listen on {args.address}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
