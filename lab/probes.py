"""Wire probes for the LVS lab: raw ARP, ARP sender capture, a named TCP server and client.

Standard library only, so a probe runs anywhere the lab does, inside a namespace via
``ip netns exec NS python -m lab.probes ...`` (or as a function through ``Netns.call``).
Every probe is bounded (a window, a deadline or a timeout) and prints one JSON document on stdout.

Sub-commands::

    arp         IFACE IP [--window S]            who answers ARP for IP (one broadcast who-has)
    ndp         IFACE IP [--window S]            IPv6: who advertises IP (one solicitation)
    arp-watch   IFACE IP [--interval S] [--deadline S]
                                                 who-has every ~2 ms until SIGTERM/SIGINT/deadline
    arp-senders IFACE --mac MAC [--window S] [--count N] [--target IP]
                                                 sender IPs of ARP requests sent by MAC
    udp-send    --src IP --dst IP [--port N]     one UDP datagram from a bound source address
                                                 (makes the kernel ARP for DST if it has no entry)
    tcp-server  --port N [--name NAME] [--deadline S] [--echo]
                                                 answer every connection with "NAME LOCAL_IP:PORT"
    tcp-client  IP PORT [--iface IFACE] [--timeout S]
                                                 connect, print what came back, from which peer,
                                                 and the source MACs of the reply frames

Interface addresses are read with ioctls on the probe's own socket, never from /sys, so a probe
sees its own namespace even when it was forked into it with setns (where /sys still shows the
parent's devices).
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
SIOCGIFADDR = 0x8915
SIOCGIFHWADDR = 0x8927
BROADCAST = b"\xff" * 6
ARP_REQUEST = 1
ARP_REPLY = 2
ARP_FMT = "!HHBBH6s4s6s4s"  # htype ptype hlen plen op sha spa tha tpa
ARP_LEN = struct.calcsize(ARP_FMT)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def _ifreq(sock: socket.socket, request: int, iface: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", iface.encode()[:15]))


def iface_mac(iface: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return mac_str(_ifreq(sock, SIOCGIFHWADDR, iface)[18:24])


def iface_ipv4(iface: str) -> str:
    """The interface's primary IPv4 address (raises OSError when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return socket.inet_ntoa(_ifreq(sock, SIOCGIFADDR, iface)[20:24])


def _arp_socket(iface: str, proto: int = ETH_P_ARP) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    sock.bind((iface, proto))
    sock.setblocking(False)
    return sock


def _who_has(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    eth = BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack(
        ARP_FMT, 1, ETH_P_IP, 6, 4, ARP_REQUEST,
        src_mac, socket.inet_aton(src_ip), b"\x00" * 6, socket.inet_aton(target_ip),
    )
    return eth + arp


def _parse_arp(frame: bytes):
    """(eth_src, op, sha, spa, tha, tpa) for an Ethernet/IPv4 ARP frame, else None."""
    if len(frame) < 14 + ARP_LEN or frame[12:14] != b"\x08\x06":
        return None
    fields = struct.unpack(ARP_FMT, frame[14:14 + ARP_LEN])
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = fields
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return (mac_str(frame[6:12]), op, mac_str(sha), socket.inet_ntoa(spa),
            mac_str(tha), socket.inet_ntoa(tpa))


def _drain(sock: socket.socket, until):
    """Yield (monotonic time, frame, pkttype) for frames arriving before ``until``.

    ``until`` is a monotonic deadline, or a callable returning one (so a consumer can move it).
    """
    deadline = until if callable(until) else (lambda: until)
    while True:
        left = deadline() - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return
        while True:
            try:
                frame, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            yield time.monotonic(), frame, addr[2]


# --- (a) one broadcast who-has ------------------------------------------------------------------

def arp_probe(iface: str, target_ip: str, window: float = 0.3, src_ip: str | None = None) -> dict:
    """Broadcast one who-has for ``target_ip`` and collect every reply during ``window`` seconds."""
    src_mac = iface_mac(iface)
    src_ip = src_ip or iface_ipv4(iface)
    replies = []
    with _arp_socket(iface) as sock:
        start = time.monotonic()
        sock.send(_who_has(mac_bytes(src_mac), src_ip, target_ip))
        for now, frame, pkttype in _drain(sock, start + window):
            arp = _parse_arp(frame)
            if arp is None or pkttype == PACKET_OUTGOING:
                continue
            _eth_src, op, sha, spa, _tha, _tpa = arp
            if op == ARP_REPLY and spa == target_ip:
                replies.append({"mac": sha, "t": round(now - start, 6)})
    return {
        "probe": "arp", "iface": iface, "ip": target_ip, "window": window,
        "replies": replies, "macs": sorted({r["mac"] for r in replies}),
    }


def ndp_probe(iface: str, target_ip: str, window: float = 0.3, src_ip: str | None = None) -> dict:
    """IPv6: one Neighbour Solicitation for ``target_ip`` to its solicited-node group, and the
    link-layer addresses of every Neighbour Advertisement for it during ``window`` seconds."""
    target = ipaddress.IPv6Address(target_ip)
    solicited_node = int(ipaddress.IPv6Address("ff02::1:ff00:0"))
    group = ipaddress.IPv6Address(solicited_node | (int(target) & 0xFFFFFF))
    ifindex = socket.if_nametoindex(iface)
    own_mac = mac_bytes(iface_mac(iface))
    replies = []
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        if src_ip:
            sock.bind((src_ip, 0, 0, ifindex))
        sock.setblocking(False)
        # type 135, code 0, checksum (the kernel fills it in), reserved, target, SLLA option
        ns = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed + bytes([1, 1]) + own_mac
        start = time.monotonic()
        sock.sendto(ns, (str(group), 0, 0, ifindex))
        for now, data, _ in _drain_sock(sock, start + window):
            if len(data) < 24 or data[0] != 136 or data[8:24] != target.packed:
                continue
            mac = None
            opts = data[24:]
            while len(opts) >= 8 and opts[1]:
                if opts[0] == 2:  # target link-layer address
                    mac = mac_str(opts[2:8])
                opts = opts[opts[1] * 8:]
            replies.append({"mac": mac, "t": round(now - start, 6)})
    return {
        "probe": "ndp", "iface": iface, "ip": target_ip, "window": window,
        "replies": replies, "macs": sorted({r["mac"] for r in replies if r["mac"]}),
    }


def _drain_sock(sock: socket.socket, until: float):
    """Like _drain, for datagram-style sockets: yields (time, data, source address)."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            yield time.monotonic(), data, addr


# --- (b) continuous who-has until told to stop --------------------------------------------------

def arp_watch(iface: str, target_ip: str, interval: float = 0.002, deadline: float = 120.0,
              ready=None) -> dict:
    """Send a who-has every ``interval`` s until SIGTERM/SIGINT or ``deadline`` s, then summarize.

    ``ready`` (a callable) is invoked once the socket is open, so a caller can start the change it
    wants watched only when the probe is really listening.
    """
    src_mac = iface_mac(iface)
    request = _who_has(mac_bytes(src_mac), iface_ipv4(iface), target_ip)
    stop = {"signal": None}

    def _stop(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    replies: dict[str, dict] = {}
    sent = 0
    wall_start = time.time()
    try:
        with _arp_socket(iface) as sock:
            if ready:
                ready()
            start = time.monotonic()
            end = start + deadline
            next_send = start
            while stop["signal"] is None:
                now = time.monotonic()
                if now >= end:
                    stop["signal"] = "deadline"
                    break
                if now >= next_send:
                    try:
                        sock.send(request)
                        sent += 1
                    except OSError:  # a full queue must not end the watch
                        pass
                    next_send = max(next_send + interval, now)
                for t, frame, pkttype in _drain(sock, min(next_send, end)):
                    arp = _parse_arp(frame)
                    if arp is None or pkttype == PACKET_OUTGOING:
                        continue
                    _eth_src, op, sha, spa, _tha, _tpa = arp
                    if op != ARP_REPLY or spa != target_ip:
                        continue
                    rel = round(t - start, 6)
                    entry = replies.setdefault(sha, {"count": 0, "first": rel, "last": rel})
                    entry["count"] += 1
                    entry["last"] = rel
            duration = time.monotonic() - start
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {
        "probe": "arp-watch", "iface": iface, "ip": target_ip, "interval": interval,
        "started": wall_start, "duration": round(duration, 3), "stopped_by": stop["signal"],
        "sent": sent, "replies": replies,
    }


# --- (c) which sender IP does a host put in its own ARP requests --------------------------------

def arp_senders(iface: str, mac: str, window: float = 2.0, count: int = 0,
                grace: float = 0.2, ready=None, target: str | None = None) -> dict:
    """Listen for ARP requests sent by ``mac`` (asking for ``target``, when given) and report
    their sender (and target) IPs.

    Stops after ``window`` s, or ``grace`` s after the ``count``-th request when count > 0.
    """
    mac = mac.lower()
    requests = []
    with _arp_socket(iface) as sock:
        if ready:
            ready()
        start = time.monotonic()
        end = start + window
        for now, frame, _pkttype in _drain(sock, lambda: end):
            arp = _parse_arp(frame)
            if arp is None:
                continue
            eth_src, op, sha, spa, _tha, tpa = arp
            if op == ARP_REQUEST and mac in (eth_src, sha) and target in (None, tpa):
                requests.append({"sender_ip": spa, "target_ip": tpa, "t": round(now - start, 6)})
                if count and len(requests) >= count:
                    end = min(end, now + grace)
    return {
        "probe": "arp-senders", "iface": iface, "mac": mac, "requests": requests,
        "sender_ips": sorted({r["sender_ip"] for r in requests}),
    }


def udp_send(src: str, dst: str, port: int = 9, payload: bytes = b"lvs-lab") -> None:
    """Send one datagram from ``src`` (bound) to ``dst``; the kernel ARPs for dst if needed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src, 0))
        sock.sendto(payload, (dst, port))


# --- (d) named TCP server and a client that reports the path --------------------------------------

def _echo(conn: socket.socket) -> None:
    """Keep a connection open and echo each line back until the peer closes it."""
    with conn:
        conn.settimeout(None)
        buf = b""
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                conn.sendall(line + b"\n")


def tcp_server(port: int, name: str | None = None, deadline: float = 600.0, ready=None,
               echo: bool = False) -> dict:
    """Answer each connection with ``"<name> <local ip>:<local port>\\n"`` until SIGTERM or
    ``deadline`` seconds. With ``echo`` the connection then stays open and every line sent is
    echoed back (a long-lived connection, to check that draining and edits do not cut it)."""
    name = name or socket.gethostname()
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    served = 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(64)
        srv.settimeout(0.2)
        if ready:
            ready()
        end = time.monotonic() + deadline
        while not stop["flag"] and time.monotonic() < end:
            try:
                conn, _peer = srv.accept()
            except (socket.timeout, InterruptedError):
                continue
            local_ip, local_port = conn.getsockname()[:2]
            try:
                conn.settimeout(2.0)
                conn.sendall(f"{name} {local_ip}:{local_port}\n".encode())
                served += 1
            except OSError:
                conn.close()
                continue
            if echo:
                threading.Thread(target=_echo, args=(conn,), daemon=True).start()
            else:
                conn.close()
    return {"probe": "tcp-server", "port": port, "name": name, "served": served}


def tcp_client(ip: str, port: int, iface: str | None = None, timeout: float = 3.0) -> dict:
    """Connect to ip:port, read the answer, and (with ``iface``) record which MACs the frames
    of this connection were sent to and came back from."""
    sniff = None
    if iface:
        sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sniff.bind((iface, ETH_P_ALL))
        sniff.setblocking(False)
    result: dict = {"probe": "tcp-client", "ip": ip, "port": port}
    try:
        try:
            with socket.create_connection((ip, port), timeout=timeout) as conn:
                local = conn.getsockname()
                peer = conn.getpeername()
                chunks = []
                while True:  # the server's answer is one line (an echo server keeps the
                    data = conn.recv(4096)  # connection open after it)
                    if not data:
                        break
                    chunks.append(data)
                    if b"\n" in data:
                        break
            reply = b"".join(chunks).decode(errors="replace").strip()
            result.update(ok=True, reply=reply, peer=f"{peer[0]}:{peer[1]}",
                          local=f"{local[0]}:{local[1]}")
            parts = reply.split()
            if len(parts) == 2:
                result.update(server=parts[0], server_local=parts[1])
        except OSError as exc:
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            local = None
        if sniff is not None:
            to_macs, from_macs = set(), set()
            for _t, frame, pkttype in _drain(sniff, time.monotonic() + 0.1):
                parsed = _parse_tcp(frame)
                if parsed is None or local is None:
                    continue
                eth_dst, eth_src, sip, dip, sport, dport = parsed
                if pkttype == PACKET_OUTGOING and dip == ip and dport == port and sport == local[1]:
                    to_macs.add(eth_dst)
                elif (pkttype != PACKET_OUTGOING and sip == ip and sport == port
                      and dport == local[1]):
                    from_macs.add(eth_src)
            result.update(sent_to_macs=sorted(to_macs), reply_from_macs=sorted(from_macs))
    finally:
        if sniff is not None:
            sniff.close()
    return result


def _parse_tcp(frame: bytes):
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != socket.IPPROTO_TCP or len(frame) < 14 + ihl + 4:
        return None
    sip = socket.inet_ntoa(frame[26:30])
    dip = socket.inet_ntoa(frame[30:34])
    sport, dport = struct.unpack("!HH", frame[14 + ihl:14 + ihl + 4])
    return mac_str(frame[0:6]), mac_str(frame[6:12]), sip, dip, sport, dport


# --- command line -------------------------------------------------------------------------------

def _say_ready():
    print("ready", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.probes",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("arp", help="one broadcast who-has, every reply in a window")
    p.add_argument("iface")
    p.add_argument("ip")
    p.add_argument("--window", type=float, default=0.3)
    p.add_argument("--src-ip")

    p = sub.add_parser("ndp", help="IPv6: one neighbour solicitation, every advertisement")
    p.add_argument("iface")
    p.add_argument("ip")
    p.add_argument("--window", type=float, default=0.3)
    p.add_argument("--src-ip")

    p = sub.add_parser("arp-watch", help="who-has every interval until SIGTERM or deadline")
    p.add_argument("iface")
    p.add_argument("ip")
    p.add_argument("--interval", type=float, default=0.002)
    p.add_argument("--deadline", type=float, default=120.0)

    p = sub.add_parser("arp-senders", help="sender IPs of ARP requests from a MAC")
    p.add_argument("iface")
    p.add_argument("--mac", required=True)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--target", help="only requests asking for this IP")

    p = sub.add_parser("udp-send", help="one UDP datagram from a bound source")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, default=9)

    p = sub.add_parser("tcp-server", help="answer each connection with name and local address")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name")
    p.add_argument("--deadline", type=float, default=600.0)
    p.add_argument("--echo", action="store_true", help="keep connections open, echo lines")

    p = sub.add_parser("tcp-client", help="connect and report reply, peer and frame MACs")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("--iface")
    p.add_argument("--timeout", type=float, default=3.0)

    args = parser.parse_args(argv)
    if args.cmd == "arp":
        out = arp_probe(args.iface, args.ip, args.window, args.src_ip)
    elif args.cmd == "ndp":
        out = ndp_probe(args.iface, args.ip, args.window, args.src_ip)
    elif args.cmd == "arp-watch":
        out = arp_watch(args.iface, args.ip, args.interval, args.deadline, ready=_say_ready)
    elif args.cmd == "arp-senders":
        out = arp_senders(args.iface, args.mac, args.window, args.count, ready=_say_ready,
                          target=args.target)
    elif args.cmd == "udp-send":
        udp_send(args.src, args.dst, args.port)
        out = {"probe": "udp-send", "src": args.src, "dst": args.dst, "port": args.port}
    elif args.cmd == "tcp-server":
        out = tcp_server(args.port, args.name, args.deadline, ready=_say_ready, echo=args.echo)
    else:
        out = tcp_client(args.ip, args.port, args.iface, args.timeout)
    print(json.dumps(out), flush=True)
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
