"""A real S3 endpoint for tests: moto's server over HTTP on 127.0.0.1, behind a plug that can be pulled.

DVC talks to the plug's port. The plug forwards bytes both ways until it is pulled: then it stops
listening and cuts every open connection, which is what an endpoint going down mid-transfer looks like
to a client (connection reset, then connection refused). `cut_after(n)` pulls it by itself once `n`
bytes have gone up, so a push is cut at a known point of its uploads, not at a timing-dependent one.
The bucket itself lives in moto (in this process) and survives the plug being pulled.
"""

import contextlib
import logging
import socket
import threading

import boto3
from moto.server import ThreadedMotoServer


class Plug:
    """A TCP pass-through on 127.0.0.1 in front of `upstream` (host, port)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._budget: int | None = None  # upload bytes left before the plug pulls itself
        self.plug_in()

    def plug_in(self) -> None:
        """Listen (again, on the same port) and forward."""
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut_after(self, upload_bytes: int) -> None:
        self._budget = upload_bytes

    def pull(self) -> None:
        """Stop listening and cut every open connection."""
        self._budget = None
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            _shut(s)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the plug was pulled
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while data := src.recv(65536):
                if upload and self._spend(len(data)):
                    self.pull()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src)
            _shut(dst)

    def _spend(self, n: int) -> bool:
        with self._lock:
            if self._budget is None:
                return False
            self._budget -= n
            return self._budget <= 0


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


class S3Endpoint:
    """moto's S3 server with one bucket, reached through a Plug; `client` talks to moto directly."""

    def __init__(self, bucket: str):
        self.bucket = bucket
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request drowns a failure
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        # The test's own view of the bucket (to count, corrupt or delete objects); never DVC's credentials.
        self.client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                                   aws_access_key_id="moto-admin", aws_secret_access_key="moto-admin")
        self.client.create_bucket(Bucket=bucket)
        self.plug = Plug((host, port))
        self.url = f"http://127.0.0.1:{self.plug.port}"

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        self.plug.pull()
        self._moto.stop()
