"""What one service instance runs with: the `serve` params section plus deployment values.

Knobs that shape answers (threshold, personas, variants, filter, limits) come from params.yaml so
they are reviewed like any other change; values that differ per machine (keys file, Redis and
database URLs, host/port/workers) come from flags or environment variables. uvicorn workers are
separate processes, so the resolved config travels to them as JSON in CHATFORGE_SERVE_CONFIG.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from chatforge.params import DEFAULT_PARAMS_PATH, ServeParams, load_section

CONFIG_ENV = "CHATFORGE_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    params: ServeParams
    api_keys_file: Path | None = None  # JSON written by `chatforge keys add`
    require_auth: bool = True  # False only with --no-auth (local experiments)
    threads: int | None = None  # torch CPU threads per process; None keeps torch's default (all cores)
    providers: tuple[str, ...] | None = None  # ONNX Runtime execution providers (quantize.providers); None: CPU

    def to_json(self) -> str:
        return json.dumps(
            {
                "params": self.params.model_dump(mode="json"),
                "api_keys_file": str(self.api_keys_file) if self.api_keys_file else None,
                "require_auth": self.require_auth,
                "threads": self.threads,
                "providers": list(self.providers) if self.providers else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data = json.loads(text)
        keys = data.get("api_keys_file")
        return cls(
            params=ServeParams.model_validate(data["params"]),
            api_keys_file=Path(keys) if keys else None,
            require_auth=bool(data.get("require_auth", True)),
            threads=data.get("threads"),
            providers=tuple(data["providers"]) if data.get("providers") else None,
        )


def load_serve_config(
    params_path: Path | str = DEFAULT_PARAMS_PATH,
    *,
    api_keys_file: Path | str | None = None,
    require_auth: bool = True,
    redis_url: str | None = None,
    database_url: str | None = None,
    threads: int | None = None,
) -> ServeConfig:
    """Validate the serve section (raises ParamsError) and apply deployment overrides."""
    params = load_section("serve", path=Path(params_path))
    # ONNX variants run where the build checked them: quantize.providers (validated when opened)
    providers = tuple(load_section("quantize", path=Path(params_path)).providers)
    updates: dict[str, object] = {}
    if redis_url is not None:
        updates["redis_url"] = redis_url or None  # an empty string switches Redis off
    if database_url:
        updates["database_url"] = database_url
    if updates:
        params = params.model_copy(update=updates)
    if require_auth and api_keys_file is None:
        raise ValueError(
            "no API keys file: pass --keys FILE (or CHATFORGE_API_KEYS) after creating a key with "
            "`chatforge keys add NAME --keys FILE`, or --no-auth for a local experiment."
        )
    return ServeConfig(
        params=params,
        api_keys_file=Path(api_keys_file) if api_keys_file else None,
        require_auth=require_auth,
        threads=threads,
        providers=providers,
    )


def check_files(params: ServeParams) -> None:
    """Raise ValueError naming the key, the paths and the fix when a word list or a variant's model
    folder is missing: said before any model loads, instead of a traceback from inside the server."""
    here = Path.cwd()

    def shown(paths: list[str]) -> str:
        return ", ".join(repr(str(path)[:120]) for path in paths[:3]) + (" ..." if len(paths) > 3 else "")

    lexicons = [path for path in params.filter.lexicons if not Path(path).is_file()]
    if lexicons:
        raise ValueError(
            f"serve.filter.lexicons: {len(lexicons)} sensitive-word file(s) not found from {here}: {shown(lexicons)}. "
            "Relative paths are read from the folder you start `chatforge serve` in (the project root for the "
            "default lexicons/sensitive/*.txt): start it there, give absolute paths, or set `lexicons: []` in "
            "the serve section to serve without a word filter."
        )
    models = [v.model for v in params.variants if v.model is not None and not Path(v.model).is_dir()]
    if models:
        raise ValueError(
            f"serve.variants[].model: {len(models)} model folder(s) not found from {here}: {shown(models)}. "
            "Build them with `dvc repro` (models/onnx is the default), or point `model` at a folder the pipeline wrote."
        )


def with_params(config: ServeConfig, **updates: object) -> ServeConfig:
    """A copy with some serve params changed (validated again)."""
    data = config.params.model_dump() | updates
    return replace(config, params=ServeParams.model_validate(data))


def config_from_env() -> ServeConfig:
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set: start the service with `chatforge serve`.")
    return ServeConfig.from_json(text)


__all__ = ["CONFIG_ENV", "ServeConfig", "check_files", "config_from_env", "load_serve_config", "with_params"]
