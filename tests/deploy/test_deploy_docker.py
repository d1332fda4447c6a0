"""deploy/docker: the Dockerfiles' structure and build context, the health-check
script against a real HTTP server, and the requirements rewriting."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu", "Dockerfile.train")


# ------------------------------------------------------------------ parsing
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions(path):
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
    return defaults


def base_image(path: Path) -> str:
    image = final_stage(path)[0][1].split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults(path)[m.group(1)], image)


def copy_sources(path: Path) -> list[str]:
    sources = []
    for keyword, args in instructions(path):
        if keyword in ("COPY", "ADD"):
            parts = [p for p in args.split() if not p.startswith("--")]
            if any(p.startswith("--from") for p in args.split()):
                continue
            sources.extend(parts[:-1])
    return sources


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""

    def to_regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = to_regex(pattern.lstrip("!").strip("/"))
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def ignore_patterns(dockerfile: str) -> list[str]:
    text = (DOCKER / f"{dockerfile}.dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# -------------------------------------------------------------------- tests
def test_base_images():
    assert base_image(DOCKER / "Dockerfile") == "python:3.11-slim"
    assert base_image(DOCKER / "Dockerfile.train") == "python:3.11-slim"
    gpu = base_image(DOCKER / "Dockerfile.gpu")
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", gpu), gpu


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_service_images_run_quakescan_as_non_root_with_a_health_check(name):
    final = final_stage(DOCKER / name)
    keywords = dict(final)  # last occurrence of each instruction
    assert keywords["ENTRYPOINT"] == '["quakescan"]'
    user = keywords["USER"]
    assert user not in ("root", "0") and "useradd" in " ".join(a for _, a in final)
    health = keywords["HEALTHCHECK"]
    assert "quakescan-healthcheck" in health and "python" in health
    assert json.loads(keywords["CMD"])[0] == "worker"
    # directories a named volume is initialised from must exist, owned by the user
    run = " ".join(a for k, a in final if k == "RUN")
    for path in ("/var/lib/quakescan/spool", "/var/lib/quakescan/catalogs"):
        assert path in run
    assert "chown -R quakescan:quakescan /var/lib/quakescan" in run
    assert "/usr/share/quakescan/sample/" in " ".join(a for k, a in final if k == "COPY")


def test_cpu_image_has_no_torch_and_uses_the_cpu_runtime():
    text = " ".join(a for _, a in instructions(DOCKER / "Dockerfile"))
    assert "--onnxruntime cpu" in text
    assert "--no-deps ." in text
    assert '! /opt/quakescan/bin/python -c "import torch"' in text  # the build proves it
    assert "torch==" not in text and "[train]" not in text


def test_gpu_image_pins_a_cuda_13_onnxruntime():
    path = DOCKER / "Dockerfile.gpu"
    assert re.fullmatch(r"1\.(3[1-9]|[4-9]\d)\.\d+", arg_defaults(path)["ORT_GPU_VERSION"])
    text = " ".join(a for _, a in instructions(path))
    assert '--onnxruntime "gpu==${ORT_GPU_VERSION}"' in text
    assert "'CUDAExecutionProvider' in p" in text  # the build fails without the CUDA provider


def test_training_image_installs_torch_cpu_first():
    path = DOCKER / "Dockerfile.train"
    assert arg_defaults(path)["TORCH_VERSION"] == "2.13.0"
    assert arg_defaults(path)["TORCH_INDEX_URL"].endswith("/whl/cpu")
    runs = [a for k, a in instructions(path) if k == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    extra_at = next(i for i, r in enumerate(runs) if "--extra train" in r)
    assert torch_at < extra_at


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_build_context(name):
    patterns = ignore_patterns(name)
    for source in copy_sources(DOCKER / name):
        assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
        assert not dockerignore_excludes(patterns, source), f"{name}: {source} is ignored"


def test_dockerignore_copies_are_identical():
    texts = {(DOCKER / f"{n}.dockerignore").read_text() for n in DOCKERFILES}
    assert len(texts) == 1


def test_dockerignore_keeps_package_data_and_drops_the_rest():
    patterns = ignore_patterns("Dockerfile")
    kept = ["pyproject.toml", "serving/cli.py", "detector/models/convnetquake.onnx"]
    kept += [str(p.relative_to(ROOT)) for p in (ROOT / "detector/data/sample").glob("*.mseed")]
    for path in kept:
        assert not dockerignore_excludes(patterns, path), path
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "runs/d1/best.pt",
        "tests/conftest.py",
        "deploy/.env",
        "serving/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(patterns, path), path


# ------------------------------------------------------------ requirements.py
def _requirements(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), str(ROOT / "pyproject.toml"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _names(lines: list[str]) -> list[str]:
    return [re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower() for line in lines]


def test_requirements_cpu_swaps_onnxruntime_gpu_for_the_cpu_wheel():
    proc = _requirements("--onnxruntime", "cpu")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    names = _names(lines)
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert "torch" not in names
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    others = {n for n in _names(declared) if not n.startswith("onnxruntime")}
    assert others <= set(names), "a runtime dependency was dropped"
    assert not any(";" in line for line in lines if line.startswith("onnxruntime"))


def test_requirements_gpu_pins_and_train_extra():
    proc = _requirements("--onnxruntime", "gpu==1.31.1", "--extra", "train")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert "onnxruntime-gpu==1.31.1" in lines
    assert "onnxruntime" not in _names(lines)
    assert "torch" in _names(lines)


def test_requirements_rejects_unknown_extra_and_runtime():
    proc = _requirements("--extra", "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr
    proc = _requirements("--onnxruntime", "rocm")
    assert proc.returncode == 2 and "rocm" in proc.stderr


# --------------------------------------------------------------- healthcheck
def _healthcheck_module():
    spec = importlib.util.spec_from_file_location(
        "quakescan_healthcheck", DOCKER / "healthcheck.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def health_server(status: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            code = status if self.path == "/healthz" else 404
            body = json.dumps({"status": "ok" if code == 200 else "failing"}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_healthcheck(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_healthcheck_passes_on_200():
    with health_server(200) as port:
        proc = _run_healthcheck(str(port))
    assert proc.returncode == 0, proc.stdout
    assert '"status": "ok"' in proc.stdout


def test_healthcheck_fails_on_503():
    with health_server(503) as port:
        proc = _run_healthcheck(str(port))
    assert proc.returncode == 1
    assert "503" in proc.stdout


def test_healthcheck_fails_when_nothing_listens():
    proc = _run_healthcheck(str(_closed_port()))
    assert proc.returncode == 1
    assert "nothing answers" in proc.stdout


def test_healthcheck_uses_the_metrics_port_from_the_environment():
    with health_server(200) as port:
        proc = _run_healthcheck(env={"QUAKESCAN_METRICS_PORT": str(port)})
    assert proc.returncode == 0, proc.stdout


def test_healthcheck_probes_the_default_ports_in_turn(monkeypatch, capsys):
    module = _healthcheck_module()
    monkeypatch.delenv("QUAKESCAN_METRICS_PORT", raising=False)
    with health_server(200) as port:
        monkeypatch.setattr(module, "DEFAULT_PORTS", (_closed_port(), port))
        assert module.main([]) == 0
    assert f":{port}/healthz: 200" in capsys.readouterr().out
    with health_server(500) as port:
        monkeypatch.setattr(module, "DEFAULT_PORTS", (_closed_port(), port))
        assert module.main([]) == 1
