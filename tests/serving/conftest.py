"""Integration fixtures: a real redis-server on a free loopback port, tiny real models, a live
uvicorn server in a thread. Tests that need Redis or Chromium FAIL when they are missing
(`make services` / scripts/install-test-services.sh installs both)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RESPONSES = {
    "weather": {"zh": "今天北京晴，15-25℃。", "en": "It is sunny in Beijing today, 15-25°C."},
    "order": {"zh": "您的订单已发货。", "en": "Your order has shipped."},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: run scripts/install-test-services.sh (apt-get install redis-server)"
        )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail(f"redis-server did not start on port {port}")
    server = RedisServer(url=f"redis://127.0.0.1:{port}/0", process=process)
    yield server
    if process.poll() is None:
        server.kill()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from chatforge.serving.tiny import build_tiny_causal_lm, build_tiny_classifier

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    return {
        "lm": build_tiny_causal_lm(root / "lm"),
        "clf": build_tiny_classifier(root / "clf", responses=RESPONSES, calibration_temperature=0.5),
    }


@pytest.fixture
def base_params(tiny_models: dict[str, Path], tmp_path: Path, repo_root: Path) -> dict[str, Any]:
    return {
        "confidence_threshold": 0.0,
        "personas": {"friendly": {"temperature": 1.0, "top_p": 0.95, "system_prompt": "Be friendly."}},
        "variants": [{"name": "lm", "model": str(tiny_models["lm"]), "backend": "torch"}],
        "database_url": f"sqlite:///{tmp_path / 'serve.db'}",
        "filter": {
            "lexicons": [
                str(repo_root / "lexicons/sensitive/zh.txt"),
                str(repo_root / "lexicons/sensitive/en.txt"),
            ]
        },
        "limits": {"max_tokens": 16, "default_max_tokens": 8},
    }


@pytest.fixture
def api_key(tmp_path: Path) -> tuple[Path, str]:
    from chatforge.serving.auth import add_key

    path = tmp_path / "keys.json"
    _, plain = add_key(path, name="tests")
    return path, plain


def _build_app(params: dict[str, Any], keys: Path):
    from chatforge.params import ServeParams
    from chatforge.serving.app import create_app
    from chatforge.serving.config import ServeConfig

    return create_app(ServeConfig(params=ServeParams.model_validate(params), api_keys_file=keys))


@pytest.fixture
def make_client(api_key: tuple[Path, str]):
    """make_client(params) -> a TestClient on a fresh app, the test key in its headers."""
    from fastapi.testclient import TestClient

    def make(params: dict[str, Any]) -> TestClient:
        client = TestClient(_build_app(params, api_key[0]))
        client.headers["Authorization"] = f"Bearer {api_key[1]}"
        return client

    return make


@dataclass
class LiveServer:
    url: str
    app: Any
    key: str


@pytest.fixture
def live_server(base_params: dict[str, Any], api_key: tuple[Path, str]) -> Iterator[LiveServer]:
    """The real app under uvicorn on a free loopback port, in a background thread."""
    import uvicorn

    app = _build_app(base_params, api_key[0])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    else:
        pytest.fail("uvicorn did not start")
    yield LiveServer(url=f"http://127.0.0.1:{port}", app=app, key=api_key[1])
    server.should_exit = True
    thread.join(timeout=10)
