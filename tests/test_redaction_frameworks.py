"""Masked log records still work with the logging of real servers and frameworks (issue 14, item 7).

uvicorn and gunicorn are run as they are in production (a subprocess serving a small app on
loopback, the middleware started by its start-up line); their access lines must still be
written, with the key in a request masked and no "--- Logging error ---". Django's
``django.server``/``django.request`` records, structlog's ``ProcessorFormatter`` and loguru's
``InterceptHandler`` (the standard-library bridges from their docs) are run in a subprocess too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import GATEWAY_KEY, OPENAI_KEY, PYTHON

KEY = OPENAI_KEY
MASKED = "sk-proj-...6789"  # what KEY looks like masked


def middleware_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("YIBU_")}
    env.update(YIBU_ENABLED="1", YIBU_NODES="http://127.0.0.1:9/v1", YIBU_API_KEY=GATEWAY_KEY, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess; its output (stdout and stderr together) once it has stopped."""

    def __init__(self, command: list[str], cwd: Path, port: int) -> None:
        self.port = port
        self.log = cwd / "server.log"
        self._out = self.log.open("w")
        self.process = subprocess.Popen(
            command, cwd=cwd, env=middleware_env(), stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"server did not listen: {self.log.read_text()}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the whole group: gunicorn's workers too
            self.process.wait(timeout=30)
        self._out.close()
        return self.log.read_text()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def check_output(output: str, tracebacks: int = 0) -> None:
    assert "Logging error" not in output, output
    assert KEY not in output, output
    assert output.count("Traceback") == tracebacks, output  # only those the app logged


ASGI_APP = """
import logging

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    logging.getLogger("uvicorn.error").warning("app saw authorization: %s", "Bearer %s")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_uvicorn_writes_its_access_lines(tmp_path: Path, servers: list[Server]) -> None:
    (tmp_path / "asgi_app.py").write_text(ASGI_APP.replace("Bearer %s", f"Bearer {KEY}"))
    port = free_port()
    server = Server(
        [PYTHON, "-m", "uvicorn", "asgi_app:app", "--host", "127.0.0.1", "--port", str(port)], tmp_path, port
    )
    servers.append(server)
    assert server.get(f"/v1/models?api_key={KEY}") == 200
    assert server.get("/health") == 200
    output = server.stop()
    check_output(output)
    assert f'"GET /v1/models?api_key={MASKED} HTTP/1.1" 200' in output, output
    assert '"GET /health HTTP/1.1" 200' in output, output
    assert f"app saw authorization: Bearer {MASKED}" in output, output


WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def test_gunicorn_writes_its_access_lines(tmp_path: Path, servers: list[Server]) -> None:
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    port = free_port()
    # The format prints a secret request header, and one that is missing (gunicorn's atoms
    # mapping answers "-" for it: the mapping must stay gunicorn's own kind).
    access_format = '%(h)s "%(r)s" %(s)s key=%({x-api-key}i)s fwd=%({x-forwarded-for}i)s'
    command = [PYTHON, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    command += ["--access-logfile", "-", "--access-logformat", access_format, "wsgi_app:app"]
    server = Server(command, tmp_path, port)
    servers.append(server)
    assert server.get(f"/v1/models?key={KEY}", headers={"x-api-key": KEY}) == 200
    assert server.get("/health") == 200
    output = server.stop()
    check_output(output)
    assert f'"GET /v1/models?key={MASKED} HTTP/1.1" 200 key={MASKED} fwd=-' in output, output
    assert '"GET /health HTTP/1.1" 200 key=- fwd=-' in output, output


DJANGO_APP = """
import sys

from django.conf import settings
from django.http import HttpResponse
from django.urls import path

settings.configure(DEBUG=True, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["127.0.0.1"], SECRET_KEY="not-a-secret-x" * 4)


def fails(request):
    raise RuntimeError("upstream refused Bearer %s")


urlpatterns = [path("ok", lambda request: HttpResponse("ok")), path("fails", fails)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], "runserver", sys.argv[1], "--noreload", "--skip-checks"])
"""


def test_django_server_and_request_records(tmp_path: Path, servers: list[Server]) -> None:
    (tmp_path / "django_app.py").write_text(DJANGO_APP.replace("Bearer %s", f"Bearer {KEY}"))
    port = free_port()
    server = Server([PYTHON, "django_app.py", f"127.0.0.1:{port}"], tmp_path, port)
    servers.append(server)
    assert server.get(f"/ok?token={KEY}") == 200
    assert server.get(f"/missing?token={KEY}") == 404
    assert server.get("/fails") == 500
    output = server.stop()
    assert "Logging error" not in output and KEY not in output, output
    assert f'"GET /ok?token={MASKED} HTTP/1.1" 200' in output, output  # django.server
    assert f'"GET /missing?token={MASKED} HTTP/1.1" 404' in output, output
    assert "Not Found: /missing" in output, output  # django.request
    assert "Internal Server Error: /fails" in output and f"upstream refused Bearer {MASKED}" in output, output


STRUCTLOG_APP = """
import logging, sys

import structlog

KEY = sys.argv[1]
pre_chain = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name]
structlog.configure(
    processors=[*pre_chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
)
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(
    structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # formats record.exc_info itself, not exc_text
            structlog.processors.JSONRenderer(),
        ],
        foreign_pre_chain=pre_chain,
    )
)
root = logging.getLogger()
root.addHandler(handler)
root.setLevel(logging.INFO)

structlog.get_logger("native").info("calling", authorization="Bearer " + KEY, attempt=2)
logging.getLogger("foreign").info("calling %s with %s", "gpt-4o", "Bearer " + KEY)
logging.getLogger("foreign").info("plain %s %d", "line", 7)
try:
    raise RuntimeError("upstream refused Bearer " + KEY)
except RuntimeError:
    logging.getLogger("foreign").exception("call failed")
"""


def test_structlog_processor_formatter(tmp_path: Path) -> None:
    (tmp_path / "structlog_app.py").write_text(STRUCTLOG_APP)
    result = subprocess.run(
        [PYTHON, "structlog_app.py", KEY],
        cwd=tmp_path,
        env=middleware_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    check_output(result.stdout + result.stderr, tracebacks=1)
    native, foreign, plain, failed = (json.loads(line) for line in result.stdout.splitlines())
    # structlog's own event dict reaches its formatter as a dict, its values masked.
    assert native["event"] == "calling" and native["attempt"] == 2, native
    assert native["authorization"] == f"Bearer {MASKED}", native
    assert foreign["event"] == f"calling gpt-4o with Bearer {MASKED}", foreign
    assert plain["event"] == "plain line 7", plain
    assert failed["event"] == "call failed" and f"RuntimeError: upstream refused Bearer {MASKED}" in failed["exception"]


LOGURU_APP = """
import inspect, logging, sys

from loguru import logger

KEY = sys.argv[1]


class InterceptHandler(logging.Handler):  # as in loguru's documentation
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


logger.remove()
# diagnose=False, as loguru advises in production: with it, loguru prints the variables of each
# frame of a traceback, which are no part of the log record (the README says so).
logger.add(sys.stdout, format="{level} {name} {message}", diagnose=False)
logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
logging.getLogger("sdk").info("headers %s", {"x-api-key": KEY, "accept": "application/json"})
logging.getLogger("sdk").info("plain %s %d", "line", 7)
try:
    raise RuntimeError("upstream refused Bearer " + KEY)
except RuntimeError:
    logging.getLogger("sdk").exception("call failed")  # loguru formats record.exc_info itself
"""


def test_loguru_intercept_handler(tmp_path: Path) -> None:
    (tmp_path / "loguru_app.py").write_text(LOGURU_APP)
    result = subprocess.run(
        [PYTHON, "loguru_app.py", KEY], cwd=tmp_path, env=middleware_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    check_output(result.stdout + result.stderr, tracebacks=1)
    assert f"INFO __main__ headers {{'x-api-key': '{MASKED}', 'accept': 'application/json'}}" in result.stdout
    assert "INFO __main__ plain line 7" in result.stdout, result.stdout
    assert f"RuntimeError: upstream refused Bearer {MASKED}" in result.stdout, result.stdout


def test_gunicorn_atoms_keep_their_kind() -> None:
    """In process: the masked args of a gunicorn access record are still gunicorn's mapping."""
    import logging

    from gunicorn.glogging import SafeAtoms

    import yibu_middleware

    yibu_middleware.install({"api_key": GATEWAY_KEY, "nodes": ["http://127.0.0.1:9/v1"]})
    atoms = SafeAtoms({"r": f"GET /?key={KEY} HTTP/1.1", "s": "200"})
    record = logging.getLogger("gunicorn.access").makeRecord(
        "gunicorn.access", logging.INFO, __file__, 1, "%(r)s %(s)s %({x-real-ip}i)s", (atoms,), None
    )
    assert type(record.args) is SafeAtoms and record.msg == "%(r)s %(s)s %({x-real-ip}i)s"
    assert record.getMessage() == f"GET /?key={MASKED} HTTP/1.1 200 -"
