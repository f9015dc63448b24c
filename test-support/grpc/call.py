#!/usr/bin/env python3
"""One unary gRPC call on raw bytes (no protobuf), its outcome as one JSON line.

    call.py --target HOST:PORT --method /demo.Echo/Say --message TEXT
            [--ca FILE [--authority NAME]] [--token T] [--timeout 5]

With --ca the call goes over TLS trusting that CA, and --authority names the server it expects
(``grpc.ssl_target_name_override``: the name checked in the certificate and sent as
``:authority``); without --ca it is plaintext h2c, --authority then only sets ``:authority``.
--token sends ``authorization: Bearer T``.

It prints ``{"code": "OK"|"PERMISSION_DENIED"|..., "code_number": 0|7|..., "details": "...",
"reply": "..."|null, "trailers": {...}}`` and exits 0 whatever the gRPC status; it exits
non-zero only for bad usage (argparse's 2, or an unreadable --ca).
"""

import argparse
import json
import sys

import grpc


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("--message", required=True, help="the request, as UTF-8 bytes")
    parser.add_argument("--ca", help="CA certificate (PEM): call over TLS")
    parser.add_argument("--authority", help="the server name to expect and send as :authority")
    parser.add_argument("--token", help="sent as authorization: Bearer TOKEN")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    return parser.parse_args()


def channel(args):
    # A proxy from the environment must not carry a loopback test call.
    options = [("grpc.enable_http_proxy", 0)]
    if args.ca is None:
        if args.authority:
            options.append(("grpc.default_authority", args.authority))
        return grpc.insecure_channel(args.target, options=options)
    try:
        with open(args.ca, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    except OSError as err:
        print(f"call.py: --ca: {err}", file=sys.stderr)
        sys.exit(2)
    if args.authority:
        options.append(("grpc.ssl_target_name_override", args.authority))
    return grpc.secure_channel(args.target, credentials, options=options)


def outcome(code, details, reply, trailers):
    return {
        "code": code.name,
        "code_number": code.value[0],
        "details": details or "",
        "reply": None if reply is None else reply.decode("utf-8", errors="replace"),
        "trailers": {key: value if isinstance(value, str) else value.hex() for key, value in trailers or ()},
    }


def main():
    args = parse_args()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token is not None else []
    with channel(args) as chan:
        rpc = chan.unary_unary(args.method)
        try:
            reply, call = rpc.with_call(args.message.encode(), timeout=args.timeout, metadata=metadata)
            result = outcome(call.code(), call.details(), reply, call.trailing_metadata())
        except grpc.RpcError as err:
            result = outcome(err.code(), err.details(), None, err.trailing_metadata())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
