"""Integration fixtures: a real redis-server on a free loopback port, tiny real models, a live
uvicorn server in a thread; for the deployed architecture a real PostgreSQL, real `chatforge serve`
processes and nginx running deploy/nginx.conf. Tests that need Redis, Chromium, PostgreSQL or nginx
FAIL when they are missing (`make services` / scripts/install-test-services.sh installs them)."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

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

    from tinymodels import build_tiny_causal_lm, build_tiny_classifier

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


# ---- the deployed architecture (issue 13): PostgreSQL, nginx and `chatforge serve` processes ----
# Each is a real server started here on a free loopback port and stopped after the test; a missing
# one FAILS the test (scripts/install-test-services.sh installs PostgreSQL and nginx).

INSTALL_HINT = "run scripts/install-test-services.sh (apt-get install postgresql nginx)"


def _system_binary(name: str, *extra_dirs: str) -> str | None:
    """`name` on PATH, else in the given folders (Debian keeps server programs off PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in extra_dirs:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _postgres_bindir() -> Path | None:
    """The folder with initdb and postgres: PATH first, else the newest /usr/lib/postgresql/<N>/bin."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).resolve().parent / "postgres").exists():
        return Path(initdb).resolve().parent
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin")
         if (p / "initdb").exists() and (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def _unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when the tests run as root (postgres refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    pytest.fail("the tests run as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    process: subprocess.Popen
    log: Path
    _databases: int = 0

    def url(self, database: str) -> str:
        """The SQLAlchemy URL chatforge takes (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"chatforge_{self._databases}"
        with psycopg.connect(
            f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL (initdb in a temp dir, password auth, TCP on 127.0.0.1 only, no fsync) for
    the whole session; tests take a fresh database each from `postgres_url`. As root the server
    runs as the `postgres` system user (or `nobody`)."""
    try:
        import psycopg
    except ImportError:
        pytest.fail("the PostgreSQL driver is missing: `make env` installs it (psycopg[binary])")
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.fail(f"PostgreSQL server (initdb, postgres) is not installed: {INSTALL_HINT}")
    owner = _unprivileged_user()
    as_user: dict[str, Any] = (
        {"user": owner[0], "group": owner[1], "extra_groups": []} if owner is not None else {}
    )
    # under /tmp, not pytest's tmp_path: its 0700 root-owned parents would keep the postgres user out
    root = Path(tempfile.mkdtemp(prefix="chatforge-pg-"))
    password = secrets.token_hex(12)
    pwfile = root / "password"
    pwfile.write_text(password + "\n", encoding="utf-8")
    pwfile.chmod(0o600)
    if owner is not None:
        os.chown(root, *owner)
        os.chown(pwfile, *owner)
    data = root / "data"
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "chatforge", "--pwfile", str(pwfile),
         "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
        cwd=root, capture_output=True, text=True, timeout=120, check=False, **as_user,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
    port = free_port()
    log = root / "postgres.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", "",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            cwd=root, stdout=out, stderr=subprocess.STDOUT, **as_user,
        )
    server = PostgresServer("127.0.0.1", port, "chatforge", password, process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"postgres exited ({process.returncode}): {log.read_text()[-2000:]}")
            try:
                psycopg.connect(
                    f"postgresql://chatforge:{password}@127.0.0.1:{port}/postgres", connect_timeout=2
                ).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"postgres did not accept connections within 60 s: {log.read_text()[-2000:]}")
                time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, stop
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database: its SQLAlchemy URL (postgresql+psycopg://...)."""
    return postgres_server.create_database()


@dataclass
class ServeInstance:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]


@pytest.fixture
def chatforge_serve(tmp_path: Path) -> Iterator[Callable[..., list[ServeInstance]]]:
    """start(serve_params, keys_file, instances=1, workers=1) -> that many `chatforge serve` processes
    (the real CLI, each on its own free port, all started at once), once every one answers /healthz.
    All are stopped after the test."""
    running: list[ServeInstance] = []
    chatforge = shutil.which("chatforge") or str(Path(sys.executable).parent / "chatforge")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["CHATFORGE_THREADS"] = "1"

    def start(
        params: dict[str, Any], keys: Path, *, instances: int = 1, workers: int = 1
    ) -> list[ServeInstance]:
        import httpx

        params_file = tmp_path / f"serve-params-{len(running)}.yaml"
        params_file.write_text(yaml.safe_dump({"serve": params}), encoding="utf-8")
        started = []
        for _ in range(instances):
            port = free_port()
            log = tmp_path / f"serve-{port}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    [chatforge, "serve", "--params", str(params_file), "--keys", str(keys),
                     "--port", str(port), "--workers", str(workers)],
                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                )
            instance = ServeInstance(f"http://127.0.0.1:{port}", port, process, log)
            running.append(instance)
            started.append(instance)
        deadline = time.monotonic() + 120
        for instance in started:
            while True:
                if instance.process.poll() is not None:
                    pytest.fail(f"chatforge serve on port {instance.port} exited: {instance.log_tail()}")
                try:
                    if httpx.get(f"{instance.url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"chatforge serve on port {instance.port}: no /healthz answer within 120 s")
                time.sleep(0.2)
        return started

    yield start
    for instance in running:
        if instance.process.poll() is None:
            instance.process.terminate()
    for instance in running:
        try:
            instance.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            instance.process.wait(timeout=10)


NGINX_TEMPLATE = "deploy/nginx.conf"


def render_nginx_site(template: str, *, upstreams: list[str], port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with the upstream servers, listen port and TLS files of this test machine;
    everything else (balancing, proxy settings, body limit, locations) as committed. Each substitution
    must match exactly once, so a restructured config fails here instead of being tested half."""

    def sub_once(pattern: str, replace: Any, text: str) -> str:
        out, n = re.subn(pattern, replace, text, flags=re.MULTILINE)
        if n != 1:
            raise AssertionError(f"{NGINX_TEMPLATE}: expected one match of {pattern!r}, found {n}")
        return out

    block = re.search(r"^upstream\s+chatforge\s*\{\n(.*?)^\}", template, flags=re.MULTILINE | re.DOTALL)
    if block is None:
        raise AssertionError(f"{NGINX_TEMPLATE}: no `upstream chatforge {{ ... }}` block")
    server_line = re.compile(r"^(\s*)server\s+\S+?:\d+(\s[^;]*)?;[^\n]*\n", flags=re.MULTILINE)
    body = block.group(1)
    first = server_line.search(body)
    if first is None:
        raise AssertionError(f"{NGINX_TEMPLATE}: the upstream block lists no `server host:port` line")
    indent, options = first.group(1), first.group(2) or ""  # max_fails=... as committed
    ours = "".join(f"{indent}server {address}{options};\n" for address in upstreams)
    body = body[: first.start()] + ours + server_line.sub("", body[first.start():])
    text = template[: block.start(1)] + body + template[block.end(1):]
    text = sub_once(r"^(\s*listen\s+)443\b", rf"\g<1>127.0.0.1:{port}", text)
    text = sub_once(r"^(\s*ssl_certificate\s+)\S+;", lambda m: f"{m.group(1)}{cert};", text)
    text = sub_once(r"^(\s*ssl_certificate_key\s+)\S+;", lambda m: f"{m.group(1)}{key};", text)
    return text


@dataclass
class NginxServer:
    url: str  # https://127.0.0.1:<port>
    cert: Path  # the self-signed certificate it serves (trust it: ssl_context())
    access_log: Path  # one line per request: "<status> <upstream address> <method> <uri>"
    process: subprocess.Popen

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def served_by(self) -> list[tuple[str, str, str]]:
        """(status, upstream address, "METHOD /path") per request logged so far, in order."""
        rows = []
        for line in self.access_log.read_text(encoding="utf-8").splitlines():
            status, upstream, request = line.split(" ", 2)
            rows.append((status, upstream, request))
        return rows


@pytest.fixture
def nginx(tmp_path: Path, repo_root: Path) -> Iterator[Callable[[list[str]], NginxServer]]:
    """start(["127.0.0.1:PORT", ...]) -> nginx in the foreground (`daemon off`) with the committed
    deploy/nginx.conf (upstreams, listen port and a fresh self-signed certificate substituted),
    pid, logs and temp folders in tmp_path, on a free loopback port. Stopped after the test."""
    binary = _system_binary("nginx", "/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
    if binary is None:
        pytest.fail(f"nginx is not installed: {INSTALL_HINT}")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (it makes the test certificate): apt-get install openssl")
    shown = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30, check=False).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", shown)
    version = tuple(int(n) for n in found.groups()) if found else (0, 0, 0)
    running: list[subprocess.Popen] = []

    def start(upstreams: list[str]) -> NginxServer:
        import httpx

        root = tmp_path / f"nginx-{len(running)}"
        root.mkdir()
        cert, key = root / "cert.pem", root / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )
        port = free_port()
        site = render_nginx_site(
            (repo_root / NGINX_TEMPLATE).read_text(encoding="utf-8"),
            upstreams=upstreams, port=port, cert=cert, key=key,
        )
        (root / "chatforge.conf").write_text(site, encoding="utf-8")
        # as root the workers would switch to `nobody`, which cannot enter pytest's 0700 tmp folders
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {kind}_temp_path {root / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (root / "nginx.conf").write_text(
            f"daemon off;\nmaster_process on;\nworker_processes 1;\n{user}"
            f"pid {root / 'nginx.pid'};\nerror_log {root / 'error.log'} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "    log_format upstream '$status $upstream_addr $request_method $uri';\n"
            f"    access_log {root / 'access.log'} upstream;\n"
            f"{temp}\n"
            f"    include {root / 'chatforge.conf'};\n"
            "}\n",
            encoding="utf-8",
        )
        (root / "access.log").touch()
        # -e (nginx >= 1.19.5): the log for start-up errors, before error_log above applies
        early_log = ["-e", str(root / "error.log")] if version >= (1, 19, 5) else []
        with (root / "stderr.log").open("w") as err:
            process = subprocess.Popen(
                [binary, "-p", f"{root}/", *early_log, "-c", str(root / "nginx.conf")],
                stdout=subprocess.DEVNULL, stderr=err,
            )
        running.append(process)
        server = NginxServer(f"https://127.0.0.1:{port}", cert, root / "access.log", process)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                errors = (root / "stderr.log").read_text() + (
                    (root / "error.log").read_text() if (root / "error.log").exists() else ""
                )
                pytest.fail(f"nginx exited ({process.returncode}) with {NGINX_TEMPLATE} rendered as "
                            f"{root / 'chatforge.conf'}: {errors[-2000:]}")
            # answered by nginx itself (the config keeps /metrics off the balancer): no instance counts it
            try:
                probe = httpx.get(f"{server.url}/metrics", verify=server.ssl_context(), timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not accept TLS connections within 30 s")
                time.sleep(0.05)
        assert probe.status_code == 404, f"{NGINX_TEMPLATE} should refuse /metrics on the balancer: {probe}"
        return server

    yield start
    for process in running:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
