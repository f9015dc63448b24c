#!/usr/bin/env python3
"""A gRPC upstream for tests: one unary method, ``/demo.Echo/Say``, on raw bytes (no protobuf).

    server.py --listen 127.0.0.1:0 [--tls-cert FILE --tls-key FILE]

It answers ``echo:`` followed by the request bytes and sets the trailing metadata
``x-seen-authorization`` to the ``authorization`` metadata it received (empty when none), so a
test can see what reached the upstream. Any other method gets UNIMPLEMENTED.

Plaintext (h2c) unless --tls-cert and --tls-key are given. Once bound it prints exactly one line,
``listening on HOST:PORT``, to stdout (flushed). It stops on SIGTERM or SIGINT, and when the
process that started it goes away.
"""

import argparse
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

METHOD = "/demo.Echo/Say"


def say(request, context):
    seen = ""
    for key, value in context.invocation_metadata():
        if key == "authorization":
            seen = value
            break
    context.set_trailing_metadata((("x-seen-authorization", seen),))
    return b"echo:" + request


class Echo(grpc.GenericRpcHandler):
    """Raw bytes in, raw bytes out: no serializers."""

    def service(self, handler_call_details):
        if handler_call_details.method == METHOD:
            return grpc.unary_unary_rpc_method_handler(say)
        return None


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 for an ephemeral one")
    parser.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if ":" not in args.listen:
        parser.error("--listen must be HOST:PORT")
    return args


def bind(server, args):
    """Binds the port; returns the bound port (0 when the bind failed)."""
    if args.tls_cert:
        with open(args.tls_key, "rb") as key, open(args.tls_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials(((key.read(), cert.read()),))
        return server.add_secure_port(args.listen, credentials)
    return server.add_insecure_port(args.listen)


def stop_when_orphaned(server):
    """Nothing started by a test may outlive it: stop once the parent process is gone."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            threading.Event().wait(1.0)
        server.stop(0)

    threading.Thread(target=watch, daemon=True).start()


def main():
    args = parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((Echo(),))
    try:
        port = bind(server, args)
    except (OSError, RuntimeError) as err:
        print(f"server.py: cannot listen on {args.listen}: {err}", file=sys.stderr)
        return 1
    if not port:
        print(f"server.py: cannot listen on {args.listen}", file=sys.stderr)
        return 1
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"listening on {host}:{port}", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop(0))
    stop_when_orphaned(server)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
