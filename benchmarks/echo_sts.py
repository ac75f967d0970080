"""
The benchmark's echo STS: a deliberately lean WebSocket server that sends every ``audio`` message straight back.

It speaks just enough RFC 6455 for the two relays under test (one unfragmented text message per frame, client
frames masked, server frames not): the opening handshake, text frames, ping → pong, close → close. An ``audio``
message has the same JSON shape in both directions, so it is reflected byte for byte, without JSON or base64 work;
``init`` and ``dtmf_digit`` are ignored. This keeps the harness cheap enough that the relay under test, not the echo
server, is what the benchmark measures.

    python -m benchmarks.echo_sts --port 7100
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import struct

from twisted.internet.protocol import Factory, Protocol

from avr.writethrough import write_through

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_AUDIO_PREFIX = b'{"type":"audio"'
_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA
#: Largest frame accepted (the relays send 20 ms of audio per message: well under 2 KiB).
_MAX_FRAME = 1 << 20


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (a server's frames are never masked)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask``, as one big-integer operation (C speed, no Python loop)."""
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class EchoStsProtocol(Protocol):
    """One client connection: handshake, then frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._open = False

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self._write = write_through(self.transport)

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._open and not self._handshake():
            return
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            b0, b1 = buffer[pos], buffer[pos + 1]
            length = b1 & 0x7F
            at = pos + 2
            if length == 126:
                if size - at < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, at)
                at += 2
            elif length == 127:
                if size - at < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, at)
                at += 8
            if length > _MAX_FRAME or not b1 & 0x80:
                self.transport.loseConnection()  # unmasked client frame or absurd size: not a relay
                return
            end = at + 4 + length
            if end > size:
                break
            payload = unmask(bytes(buffer[at:at + 4]), bytes(buffer[at + 4:end]))
            pos = end
            opcode = b0 & 0x0F
            if opcode == _TEXT:
                if payload.startswith(_AUDIO_PREFIX):
                    self._write(server_frame(_TEXT, payload))
            elif opcode == _PING:
                self.transport.write(server_frame(_PONG, payload))
            elif opcode == _CLOSE:
                self.transport.write(server_frame(_CLOSE, payload[:2]))
                self.transport.loseConnection()
                return
        del buffer[:pos]

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        request = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[:end + 4]
        key = next((line.split(":", 1)[1].strip() for line in request.split("\r\n")[1:]
                    if line.lower().startswith("sec-websocket-key:")), None)
        if key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self._open = True
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    from twisted.internet import reactor  # the process edge

    factory = Factory.forProtocol(EchoStsProtocol)
    factory.noisy = False
    reactor.listenTCP(args.port, factory, interface=args.host, backlog=1024)
    reactor.run()


if __name__ == "__main__":
    main()
