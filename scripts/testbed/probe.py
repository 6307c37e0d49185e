#!/usr/bin/env python3
"""Throughput probe for ferry's test bed: one TCP stream from a sender to a receiver.

  probe.py recv --bind ADDR [--port P] [--timeout S]
      accepts one connection, reads to EOF and prints one JSON line: bytes, seconds (first to
      last byte), gbps, as measured at the receiver.
  probe.py send --to ADDR [--port P] [--bind ADDR] [--seconds S] [--timeout S]
      connects (retrying until --timeout while the receiver starts) and sends for S seconds.

scripts/testbed.sh probe runs the two inside two namespaces over one rail. Every step has a
timeout; a failure prints a clear message and exits non-zero.
"""
import argparse
import json
import socket
import sys
import time

CHUNK = 1 << 20


def recv(args):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    srv.settimeout(args.timeout)
    print("listening", file=sys.stderr, flush=True)
    try:
        conn, peer = srv.accept()
    except socket.timeout:
        sys.exit(f"probe: no sender connected to {args.bind}:{args.port} within {args.timeout} s")
    conn.settimeout(args.timeout)
    buf = bytearray(CHUNK)
    total = 0
    first = last = None
    while True:
        try:
            n = conn.recv_into(buf)
        except socket.timeout:
            sys.exit(f"probe: the stream from {peer[0]} stalled for {args.timeout} s")
        if n == 0:
            break
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        total += n
    if not total or last == first:
        sys.exit("probe: received nothing")
    secs = last - first
    print(json.dumps({"from": peer[0], "to": args.bind, "bytes": total, "seconds": round(secs, 4),
                      "gbps": round(total * 8 / secs / 1e9, 4)}), flush=True)


def send(args):
    deadline = time.monotonic() + args.timeout
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if args.bind:
            s.bind((args.bind, 0))
        s.settimeout(args.timeout)
        try:
            s.connect((args.to, args.port))
            break
        except OSError as e:
            s.close()
            if time.monotonic() > deadline:
                sys.exit(f"probe: cannot connect to {args.to}:{args.port}: {e}")
            time.sleep(0.05)
    data = bytes(CHUNK)
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            s.sendall(data)
    except socket.timeout:
        sys.exit(f"probe: sending to {args.to} stalled for {args.timeout} s")
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait for the receiver to close: every byte has arrived
    s.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, default=5201)
    r.add_argument("--timeout", type=float, default=20)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--bind")
    s.add_argument("--port", type=int, default=5201)
    s.add_argument("--seconds", type=float, default=3)
    s.add_argument("--timeout", type=float, default=20)
    args = p.parse_args()
    recv(args) if args.cmd == "recv" else send(args)


if __name__ == "__main__":
    main()
