"""
Replaying one real ARI capture against a fresh fake Asterisk (`Replay`): its REST requests at their recorded times,
with the events sockets it used, and the mapping of the ids and names Asterisk chose onto the fake's, so that
`test_fake_ari` can compare statuses, bodies, headers and event sequences.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fake_ari_harness import Harness, Socket, basic, load_fixture


def fixture_auth(value: str) -> str:
    """Turn a capture's ``Basic <user:pass>`` (written in clear by the capture) into a real header value."""
    match = re.fullmatch(r"Basic <([^:>]*):([^>]*)>", value)
    return basic(match.group(1), match.group(2)) if match else value


GENERATED_ID = re.compile(r"^(\d+\.\d+(;2)?|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
VOLATILE_KEYS = frozenset({"timestamp", "creationtime", "startup_time", "last_reload_time", "duration", "date"})
_ID_CHARS = r"[A-Za-z0-9_.;-]"


class Replay:
    """
    Replays the REST requests of one capture against a fresh fake at the capture's request times, with the events
    sockets it used, and maps the server-chosen ids and names of the capture onto the fake's.

    :ivar rest: ``(fixture entry, our status, our headers, our raw body)`` per REST entry.
    :ivar sockets: our socket per capture socket label.
    """

    def __init__(self, name: str, *, skip_urls: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.fixture = load_fixture(name)
        self.h = Harness(**kwargs)
        if self.fixture.get("dialplan"):
            self.h.fake.load_dialplan(self.fixture["dialplan"])
        self.idmap: dict[str, str] = {}
        self.namemap: dict[str, str] = {}
        self.rest: list[tuple[dict, int, Any, bytes]] = []
        self.sockets: dict[str, Socket] = {}
        self.handshakes: dict[str, Any] = {}
        self.skip_urls = skip_urls

    # -- running ------------------------------------------------------------------------------------------------------

    def actions(self) -> list[tuple[float, int, dict]]:
        """The capture's client actions, in the order the client performed them."""
        out = []
        for index, entry in enumerate(self.fixture["entries"]):
            kind = entry.get("kind")
            if kind in ("rest", "ws_handshake"):
                out.append((entry.get("t_request_ms", entry["t_ms"]), index, entry))
            elif kind == "ws_client_close_sent":
                out.append((entry["t_ms"], index, entry))
        return sorted(out, key=lambda item: (item[0], item[1]))

    def run(self) -> Replay:
        """Perform every action at its time, then let the fake run until the capture's last entry."""
        now = 0.0
        for t_ms, _index, entry in self.actions():
            self.h.advance(max(t_ms / 1000 - now, 0.0))
            now = max(now, t_ms / 1000)
            kind = entry["kind"]
            if kind == "ws_handshake":
                self._handshake(entry)
            elif kind == "rest":
                if not any(s in entry["url"] for s in self.skip_urls):
                    self._rest(entry)
            else:
                sock = self.sockets.get(entry["ws"])
                if sock is not None:
                    sock.close()
        last = max(e["t_ms"] for e in self.fixture["entries"])
        self.h.advance(max(last / 1000 - now, 0.0) + 0.2)
        return self

    def _handshake(self, entry: dict) -> None:
        request_line = entry["request"][0]
        query = request_line.split(" ")[1].partition("?")[2]
        params = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
        headers = {}
        for line in entry["request"][1:]:
            if line.lower().startswith("authorization:"):
                headers["Authorization"] = basic("avr", "avrpass")
        extra = "".join(f"&{k}={v}" for k, v in params.items() if k not in ("app", "api_key"))
        sock = self.h.connect(params.get("app", ""), params.get("api_key"), extra, headers=headers or None)
        self.handshakes[entry["ws"]] = sock
        if entry["status_line"].split(" ")[1] == "101":
            self.sockets[entry["ws"]] = sock

    def map_text(self, text: str) -> str:
        """Replace the capture's ids and names in ``text`` by the fake's."""
        for old in sorted(self.namemap, key=len, reverse=True):
            text = text.replace(old, self.namemap[old])
        for old in sorted(self.idmap, key=len, reverse=True):
            text = re.sub(rf"(?<!{_ID_CHARS}){re.escape(old)}(?!{_ID_CHARS})", self.idmap[old], text)
        return text

    def _rest(self, entry: dict) -> None:
        self._learn_from_events()
        headers = {}
        for key, value in entry["request_headers"].items():
            if key.lower() == "authorization":
                headers["Authorization"] = fixture_auth(value)
            elif key.lower() == "content-type":
                headers["Content-Type"] = value
        body = entry.get("request_body")
        raw_body = None
        if isinstance(body, (dict, list)):
            raw_body = json.dumps(body).encode()
        elif isinstance(body, str):
            raw_body = body.encode()
        response, raw = self.h.raw_request(entry["method"], self.map_text(entry["url"]), headers, raw_body)
        self.rest.append((entry, response.code, response.headers, raw))
        is_json = raw and (response.headers.getRawHeaders(b"content-type") or [b""])[0] == b"application/json"
        if is_json and isinstance(entry.get("response_body"), dict):  # lists may come in another order
            self._learn(entry["response_body"], json.loads(raw))

    def _learn(self, theirs: Any, ours: Any) -> None:
        """Learn id/name mappings from two structurally equal JSON values."""
        if isinstance(theirs, dict) and isinstance(ours, dict):
            for key in ("id", "name"):
                a, b = theirs.get(key), ours.get(key)
                if isinstance(a, str) and isinstance(b, str) and a != b:
                    if key == "id" and GENERATED_ID.match(a):
                        self.idmap.setdefault(a, b)
                    elif "/" in a:
                        self.namemap.setdefault(a, b)
                        if a.endswith(";1") and b.endswith(";1"):
                            self.namemap.setdefault(a[:-2] + ";2", b[:-2] + ";2")
            for key in theirs.keys() & ours.keys():
                self._learn(theirs[key], ours[key])
        elif isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
            for a, b in zip(theirs, ours, strict=True):
                self._learn(a, b)

    def _learn_from_events(self) -> None:
        ours: dict[str, str] = {}
        for sock in self.sockets.values():
            for event in sock.events:
                for ch in _channels_of(event):
                    ours[ch["name"]] = ch["id"]
        for entry in self.fixture["entries"]:
            if entry.get("kind") == "event":
                for ch in _channels_of(entry["event"]):
                    mapped = self.namemap.get(ch["name"], ch["name"])
                    if mapped in ours and ours[mapped] != ch["id"] and GENERATED_ID.match(ch["id"]):
                        self.idmap.setdefault(ch["id"], ours[mapped])

    # -- comparing ----------------------------------------------------------------------------------------------------

    def normalize(self, value: Any, theirs: bool) -> Any:
        """A JSON value without volatile fields, with the capture's ids and names mapped (``theirs``)."""
        if isinstance(value, dict):
            return {k: self.normalize(v, theirs) for k, v in value.items() if k not in VOLATILE_KEYS}
        if isinstance(value, list):
            return [self.normalize(v, theirs) for v in value]
        if isinstance(value, str):
            if theirs:
                value = self.map_text(value)
            return re.sub(r"(Announcer|Recorder)/ARI-[0-9a-f]{8}", r"\1/ARI-N", value)
        return value

    def fixture_events(self, label: str) -> list[dict]:
        """The events the capture's socket ``label`` received."""
        self._learn_from_events()
        return [e["event"] for e in self.fixture["entries"] if e.get("kind") == "event" and e["ws"] == label]

    def groups(self, events: list[dict], theirs: bool) -> dict[str, list[dict]]:
        """Events grouped by the channel, bridge, playback or recording they concern, in order, normalized."""
        out: dict[str, list[dict]] = {}
        for event in events:
            norm = self.normalize(event, theirs)
            for key in _event_keys(norm):
                out.setdefault(key, []).append(norm)
        return out


def _channels_of(event: dict) -> list[dict]:
    return [event[k] for k in ("channel", "peer") if isinstance(event.get(k), dict) and "name" in event[k]]


def _event_keys(event: dict) -> list[str]:
    keys = [f"channel:{ch['id']}" for ch in _channels_of(event)]
    if isinstance(event.get("bridge"), dict):
        keys.append(f"bridge:{event['bridge']['id']}")
    for field_name in ("playback", "recording"):
        obj = event.get(field_name)
        if isinstance(obj, dict):
            keys.append(obj["target_uri"])
            keys.append(f"{field_name}:{obj.get('id') or obj.get('name')}")
    return keys or ["application"]
