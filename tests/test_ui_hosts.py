"""Contract of the page's server against DNS rebinding (issue 29): `vitsearch ui` started as a user
starts it answers only the Host names it is served on (loopback, --host, --allowed-hosts), on
every HTTP route and on its websocket, and opens no websocket from another origin; through the
names it is served on, the page works (a session over the real websocket renders it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
from browser import ui_server

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]
REBIND = "rebind.attacker.example"


def handshake(port: int, host: str, origin: str | None) -> tuple[int, str]:
    """A websocket handshake as a browser sends it to the page's stream: the status and the answer."""
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: streamlit\r\n" + (f"Origin: {origin}\r\n" if origin else "") + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := s.recv(65536)):
            answer += chunk
        if b" 101 " not in answer.split(b"\r\n", 1)[0]:
            while chunk := s.recv(65536):  # a refusal: its body, to the close
                answer += chunk
    text = answer.decode("latin-1")
    return int(text.split(" ", 2)[1]), text


def rendered_elements(port: int) -> list[str]:
    """Run the page once over its websocket at 127.0.0.1 (a browser's first message) and return
    the labels and bodies of the elements it sends, until the script finishes."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    shown = []
    with connect(
        f"ws://127.0.0.1:{port}/_stcore/stream",
        subprotocols=["streamlit"],
        origin=f"http://127.0.0.1:{port}",
        open_timeout=30,
    ) as ws:
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        ws.send(rerun.SerializeToString())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv(timeout=120))
            if msg.WhichOneof("type") == "script_finished":
                break
            if msg.WhichOneof("type") == "delta" and msg.delta.WhichOneof("type") == "new_element":
                element = getattr(msg.delta.new_element, msg.delta.new_element.WhichOneof("type"))
                shown.append(getattr(element, "label", "") or getattr(element, "body", ""))
    return shown


@pytest.mark.slow
def test_the_page_answers_only_the_hosts_it_is_served_on(indexed, tmp_path):
    _, uri = indexed
    with ui_server(uri, tmp_path / "ui.log", "--allowed-hosts", "photos.lan") as url:
        port = int(url.rsplit(":", 1)[1])
        served = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"photos.lan:{port}", "PHOTOS.LAN"]
        for path in ("/", "/duplicates", "/_stcore/host-config", "/favicon.png"):
            for host in served:
                assert httpx.get(f"{url}{path}", headers={"Host": host}).status_code == 200, (path, host)
            for host in (f"{REBIND}:{port}", REBIND, "photos.lan.attacker.example", "127.0.0.1.nip.io"):
                r = httpx.get(f"{url}{path}", headers={"Host": host})
                assert r.status_code == 400 and "is not a name this server is served on" in r.json()["detail"]
        upload = httpx.put(f"{url}/_stcore/upload_file/session/file", headers={"Host": REBIND}, files={"file": b"x"})
        assert upload.status_code == 400
        assert httpx.get(f"{url}/_stcore/health", headers={"Host": "10.1.2.3"}).text == "ok"  # liveness only

        # The websocket: a rebinding page sends its own name as Host and as Origin.
        status, text = handshake(port, f"{REBIND}:{port}", f"http://{REBIND}:{port}")
        assert status == 400 and "is not a name this server is served on" in text
        for origin in (f"http://{REBIND}:{port}", "null", f"http://user@{REBIND}", f"file://127.0.0.1:{port}"):
            status, text = handshake(port, f"127.0.0.1:{port}", origin)
            assert status == 400 and "is refused: not a page of this server" in text, origin
        for host in (f"127.0.0.1:{port}", f"photos.lan:{port}"):  # the names it is served on: opened
            assert handshake(port, host, f"http://{host}")[0] == 101, host
        assert handshake(port, f"localhost:{port}", None)[0] == 101  # no Origin: not a browser

        # Through them the page works: a session over the websocket renders it.
        shown = rendered_elements(port)
        assert "Drop a photo to find similar images" in shown and "Images" in shown, shown
    log = (tmp_path / "ui.log").read_text()
    assert "answers to Host localhost, 127.0.0.1, [::1], photos.lan" in log and "Traceback" not in log


def test_a_bad_allowed_host_is_one_line_and_exit_2(db_uri):
    out = subprocess.run(
        [*VITSEARCH, "ui", "--uri", db_uri, "--allowed-hosts", "photos.lan,https://evil.example/"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "'https://evil.example/' is not a host name or address" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
