"""The batch status benchmark's wrk script (bench/wrk_load.py): what it sends and what it reads back."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bench.wrk_load import WrkLoad, wrk_load


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
    seen: ClassVar[list[tuple[str, str, str, bytes]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.seen.append((self.path, self.headers["Authorization"], self.headers["Content-Type"], body))
            refuse = len(self.seen) % 10 == 0  # every tenth answered 503, to be counted as such
        answer = b'{"statuses":[],"unknown":[]}'
        self.send_response(503 if refuse else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_wrk_sends_the_batches_and_reports_what_came_back(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    ids = [f"wrk-{n:04d}" for n in range(300)]
    result = wrk_load(server.server_address[1], "tok.en-\"x\"", ids, tmp_path, WrkLoad(2, 50, 1.0))

    assert not result.missing, result.missing
    seen = list(Recorder.seen)
    assert result.requests > 10 and abs(result.requests - len(seen)) <= 2  # wrk counts what was answered
    assert result.non_2xx == pytest.approx(len(seen) // 10, abs=1) and result.socket_errors == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    for path, auth, kind, body in seen:
        assert (path, auth, kind) == ("/restaurants/status/query", 'Bearer tok.en-"x"', "application/json")
        asked = json.loads(body)["ids"]
        assert len(asked) == len(set(asked)) == 50 and set(asked) <= set(ids)
    assert len({body for *_, body in seen}) > 1, "every request asked the same ids"
