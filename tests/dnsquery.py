"""A few lines of DNS over UDP for the DNS tests (standard library only, so that it
starts fast inside a network namespace):

    python dnsquery.py serve ADDRESS NAME=IP...   the stand-in "outside world": answers A
                                                  for those names, NXDOMAIN for the rest
    python dnsquery.py ask SERVER NAME [TYPE]     one query, its repr() on stdout
    python dnsquery.py loop SERVER SECONDS MAX NAME...
                                                  asks the names in turn until SECONDS or
                                                  MAX queries, one line per answer:
                                                  "<monotonic time sent> <name> <rcode> <values>"
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

TYPES = {"A": 1, "CNAME": 5, "SRV": 33, "AAAA": 28}
_NAMES = {v: k for k, v in TYPES.items()}


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def _read_name(data: bytes, off: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    while True:
        n = data[off]
        if n & 0xC0 == 0xC0:  # compression pointer
            end = end or off + 2
            off = ((n & 0x3F) << 8) | data[off + 1]
            continue
        if n == 0:
            return ".".join(labels) + ".", end or off + 1
        labels.append(data[off + 1 : off + 1 + n].decode())
        off += 1 + n


def query(server: str, name: str, rtype: str = "A", timeout: float = 2.0) -> tuple[int, list[tuple[str, str, str]]]:
    """(rcode, [(owner, type, data)]) of the answer section; asks as a stub resolver (RD set)."""
    qid = int.from_bytes(os.urandom(2), "big")
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _qname(name) + struct.pack(">HH", TYPES[rtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server, 53))
        while True:
            data = s.recv(4096)
            if struct.unpack(">H", data[:2])[0] == qid:
                break
    flags, qd, an = struct.unpack(">HHH", data[2:8])
    off = 12
    for _ in range(qd):
        off = _read_name(data, off)[1] + 4
    answers = []
    for _ in range(an):
        owner, off = _read_name(data, off)
        t, _class, _ttl, rdlen = struct.unpack(">HHIH", data[off : off + 10])
        rd = off + 10
        if t == 1:
            value = socket.inet_ntoa(data[rd : rd + 4])
        elif t == 5:
            value = _read_name(data, rd)[0]
        elif t == 33:
            prio, weight, port = struct.unpack(">HHH", data[rd : rd + 6])
            value = f"{prio} {weight} {port} {_read_name(data, rd + 6)[0]}"
        else:
            value = data[rd : rd + rdlen].hex()
        answers.append((owner, _NAMES.get(t, str(t)), value))
        off = rd + rdlen
    return flags & 0x000F, answers


def serve(address: str, records: dict[str, list[str]]) -> None:
    """Authoritative for `records` (A only; other types of those names: no data)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 53))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        qid, flags = struct.unpack(">HH", data[:4])
        name, off = _read_name(data, 12)
        qtype = struct.unpack(">H", data[off : off + 2])[0]
        question = data[12 : off + 4]
        ips = records.get(name.lower())
        answers = [socket.inet_aton(ip) for ip in ips] if ips and qtype == 1 else []
        rcode = 3 if ips is None else 0
        header = struct.pack(">HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, len(answers), 0, 0)
        rrs = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + a for a in answers)
        s.sendto(header + question + rrs, peer)


def loop(server: str, seconds: float, limit: int, names: list[str]) -> None:
    deadline = time.monotonic() + seconds
    n = 0
    print("ready", flush=True)
    while n < limit and time.monotonic() < deadline:
        for name in names:
            sent = time.monotonic()
            try:
                rcode, answers = query(server, name, "A", 1.0)
                values = ",".join(sorted(a[2] for a in answers))
                print(f"{sent} {name} {rcode} {values}", flush=True)
            except OSError as e:
                print(f"{sent} {name} timeout {e}", flush=True)
            n += 1


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "serve":
        records: dict[str, list[str]] = {}
        for arg in argv[2:]:
            name, ip = arg.split("=")
            records.setdefault(name.lower().rstrip(".") + ".", []).append(ip)
        serve(argv[1], records)
    elif cmd == "ask":
        try:
            print(repr(query(argv[1], argv[2], argv[3] if len(argv) > 3 else "A", float(argv[4]) if len(argv) > 4 else 2.0)))
        except OSError:
            print("None")
    elif cmd == "loop":
        loop(argv[1], float(argv[2]), int(argv[3]), argv[4:])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
