"""Fixtures for serving unit tests: tiny real models (2 layers, 64 dims) and an app factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

RESPONSES = {
    "weather": {"zh": "今天北京晴，15-25℃。", "en": "It is sunny in Beijing today, 15-25°C."},
    "order": {"zh": "您的订单已发货。", "en": "Your order has shipped."},
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from tinymodels import build_tiny_causal_lm, build_tiny_classifier

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    return {
        "lm": build_tiny_causal_lm(root / "lm"),
        "clf": build_tiny_classifier(root / "clf", responses=RESPONSES, calibration_temperature=0.5),
    }


@pytest.fixture(scope="session")
def tiny_backends(tiny_models: dict[str, Path]) -> dict[str, Any]:
    from chatforge.serving.backends import open_backend

    return {"lm": open_backend(tiny_models["lm"], backend="torch"), "clf": open_backend(tiny_models["clf"])}


@pytest.fixture
def serve_params(tiny_models: dict[str, Path], tmp_path: Path, repo_root: Path) -> dict[str, Any]:
    """A serve section as a dict (tests change what they need, then build a config)."""
    return {
        "confidence_threshold": 0.0,
        "personas": {
            "friendly": {"temperature": 1.0, "top_p": 0.95, "system_prompt": "Be friendly."},
            "precise": {"temperature": 0.7, "top_p": 0.9, "system_prompt": "Be precise."},
        },
        "variants": [{"name": "lm", "model": str(tiny_models["lm"]), "weight": 1.0, "backend": "torch"}],
        "database_url": f"sqlite:///{tmp_path / 'serve.db'}",
        "filter": {
            "lexicons": [
                str(repo_root / "lexicons/sensitive/zh.txt"),
                str(repo_root / "lexicons/sensitive/en.txt"),
            ],
            "mode": "block",
        },
        "limits": {"max_messages": 4, "max_chars": 200, "max_tokens": 16, "default_max_tokens": 6},
        "rate_limit": {"requests_per_minute": 600, "burst": 50},
    }


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, str]:
    from chatforge.serving.auth import add_key

    path = tmp_path / "keys.json"
    _, plain = add_key(path, name="tests")
    return path, plain


@pytest.fixture
def make_client(tiny_backends: dict[str, Any], keys_file: tuple[Path, str]):
    """make_client(params_dict) -> a TestClient with the test key already in its headers."""
    from fastapi.testclient import TestClient

    from chatforge.params import ServeParams
    from chatforge.serving.app import create_app
    from chatforge.serving.config import ServeConfig

    def make(params: dict[str, Any], *, auth: bool = True) -> TestClient:
        config = ServeConfig(
            params=ServeParams.model_validate(params), api_keys_file=keys_file[0], require_auth=auth
        )
        names = {v["name"] for v in params["variants"]}
        client = TestClient(create_app(config, backends={n: tiny_backends[n] for n in names}))
        client.headers["Authorization"] = f"Bearer {keys_file[1]}"
        return client

    return make
