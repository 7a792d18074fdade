"""Local stand-ins for the paid APIs, over real HTTP on 127.0.0.1 (brightdata.py, openai.py)."""

import itertools
import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    """A threaded HTTP server on a free port of 127.0.0.1, serving `handler` while used as a context
    manager; `url` is its base URL, `lock` guards the emulator's state, `next_id()` numbers what it makes."""

    def __init__(self, handler):
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def next_id(self) -> int:
        return next(self._ids)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()  # poll 50 ms
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
