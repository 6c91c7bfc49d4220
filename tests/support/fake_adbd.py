"""A device end of the ADB protocol over TCP (what adbd speaks on port 5555), enough to test a
host-side client against the wire format: the CNXN handshake (no AUTH), `shell:` streams (the
command run by /bin/sh on this machine, output in WRTE packets, each acknowledged before the
next) and the `sync:` file service (SEND / DATA / DONE, STAT, RECV, QUIT).

Messages are 24-byte headers (command, arg0, arg1, data length, byte sum of the data, command
xor 0xffffffff, little-endian) and the data; file-sync packets travel inside WRTE data as
(id, length) headers and payloads, and may span WRTE packets."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading

HEADER = struct.Struct("<6I")
VERSION, MAX_DATA = 0x01000000, 256 * 1024
BANNER = b"device::ro.product.name=fake;ro.product.model=fake;ro.product.device=fake;\0"


def _wire(cmd: bytes) -> int:
    return struct.unpack("<I", cmd)[0]


def _pack(cmd: bytes, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    w = _wire(cmd)
    return HEADER.pack(w, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, w ^ 0xFFFFFFFF) + data


class _Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.next_id = 1

    def read(self) -> tuple[bytes, int, int, bytes]:
        head = self._exact(HEADER.size)
        cmd, a0, a1, n, _, magic = HEADER.unpack(head)
        if magic != cmd ^ 0xFFFFFFFF:
            raise ConnectionError("bad ADB magic")
        return struct.pack("<I", cmd), a0, a1, self._exact(n) if n else b""

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise ConnectionError("client closed")
            buf += part
        return buf

    def send(self, cmd: bytes, a0: int, a1: int, data: bytes = b"") -> None:
        self.sock.sendall(_pack(cmd, a0, a1, data))

    def wait_okay(self) -> None:
        while True:
            cmd, *_ = self.read()
            if cmd == b"OKAY":
                return
            if cmd == b"CLSE":
                raise ConnectionError("stream closed by the client")

    def write(self, mine: int, theirs: int, data: bytes) -> None:
        for i in range(0, len(data), MAX_DATA):
            self.send(b"WRTE", mine, theirs, data[i:i + MAX_DATA])
            self.wait_okay()

    def close_stream(self, mine: int, theirs: int) -> None:
        self.send(b"CLSE", mine, theirs)
        while True:
            cmd, *_ = self.read()
            if cmd == b"CLSE":
                return


class FakeAdbd:
    """Serves ADB on 127.0.0.1:port in a thread; `stop()` closes the listener and connections."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.commands: list[str] = []  # shell commands run, in order
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(sock)
            threading.Thread(target=self._session, args=(sock,), daemon=True).start()

    def _session(self, sock: socket.socket) -> None:
        c = _Conn(sock)
        try:
            while True:
                cmd, a0, a1, data = c.read()
                if cmd == b"CNXN":
                    c.send(b"CNXN", VERSION, MAX_DATA, BANNER)
                elif cmd == b"OPEN":
                    mine, c.next_id = c.next_id, c.next_id + 1
                    service = data.rstrip(b"\0").decode()
                    c.send(b"OKAY", mine, a0)
                    if service.startswith("shell:"):
                        self._shell(c, mine, a0, service[len("shell:"):])
                    elif service == "sync:":
                        self._sync(c, mine, a0)
                    else:
                        c.close_stream(mine, a0)
        except (ConnectionError, OSError):
            pass
        finally:
            sock.close()

    def _shell(self, c: _Conn, mine: int, theirs: int, command: str) -> None:
        self.commands.append(command)
        r = subprocess.run(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if r.stdout:
            c.write(mine, theirs, r.stdout)
        c.close_stream(mine, theirs)

    def _sync(self, c: _Conn, mine: int, theirs: int) -> None:
        buf = b""
        out = None
        while True:
            cmd, _, _, data = c.read()
            if cmd == b"CLSE":
                c.send(b"CLSE", mine, theirs)
                return
            if cmd != b"WRTE":
                continue
            c.send(b"OKAY", mine, theirs)
            buf += data
            while len(buf) >= 8:
                ident, n = buf[:4], struct.unpack("<I", buf[4:8])[0]
                if ident == b"DONE":  # the size field carries the mtime
                    buf = buf[8:]
                    if out is not None:
                        out.close()
                        out = None
                    c.write(mine, theirs, b"OKAY" + struct.pack("<I", 0))
                    continue
                if ident == b"QUIT":
                    buf = buf[8:]
                    continue
                if len(buf) < 8 + n:
                    break
                payload, buf = buf[8:8 + n], buf[8 + n:]
                if ident == b"SEND":
                    path, _, _mode = payload.decode().rpartition(",")
                    out = open(path, "wb")
                elif ident == b"DATA":
                    out.write(payload)
                elif ident == b"STAT":
                    try:
                        st = os.stat(payload.decode())
                        reply = struct.pack("<4I", _wire(b"STAT"), st.st_mode, st.st_size,
                                            int(st.st_mtime))
                    except OSError:
                        reply = struct.pack("<4I", _wire(b"STAT"), 0, 0, 0)
                    c.write(mine, theirs, reply)
                elif ident == b"RECV":
                    with open(payload.decode(), "rb") as f:
                        body = f.read()
                    msg = b"".join(b"DATA" + struct.pack("<I", len(body[i:i + 65536]))
                                   + body[i:i + 65536] for i in range(0, len(body), 65536))
                    c.write(mine, theirs, msg + b"DONE" + struct.pack("<I", 0))
