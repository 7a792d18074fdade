"""The CLI tests' shared toy model (the session's tiny base + a perturbed LoRA) and a `serve` over it."""

import contextlib
import threading
import time

import pytest

from tests.webtune.models.test_inference import make_adapter
from webtune.cli.serve import create_app
from webtune.models.inference import ChatModel


@pytest.fixture(scope="package")
def toy_adapter(tiny_base, tmp_path_factory):
    return make_adapter(tiny_base, tmp_path_factory.mktemp("cli") / "adapter", perturb=True)


@pytest.fixture(scope="package")
def chat(tiny_base, toy_adapter) -> ChatModel:
    return ChatModel.load(tiny_base, toy_adapter)


@contextlib.contextmanager
def serving(app):
    """`app` served on 127.0.0.1 (a free port) by uvicorn in a thread; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="package")
def server(chat):
    """`serve` over the toy model as "toy"; its base URL."""
    with serving(create_app(chat, model_name="toy")) as url:
        yield url
