"""LiteLLM's proxy on loopback, the gateway most self-hosted and multi-provider setups put in
front of an API.

    with LiteLLM(upstream_base_url) as gateway:
        ... --api_base gateway.base_url, key gateway.master_key ...

It runs from its own venv (``.venv-litellm`` beside the project, made by README's command 2 from
``tests/support/litellm-requirements.txt``: its fastapi/starlette/httpx pins would fight
apache-beam's), as ``litellm --config CONF --host 127.0.0.1 --port P``, with a generated config:
one model group per id asked for, each an ``openai/<id>`` deployment at ``upstream`` (our
recording API), ``num_retries: 0`` and ``disable_cooldowns`` (the README's advice: the job
retries itself and must see the provider's 429s), a master key and no database (so any other
key is answered ``400 no_db_connection``, as a real proxy checking a virtual key without its
database does). No network: the cost map is the package's own copy, telemetry is off.

Startup takes about 8 s (importing the proxy). Without the venv the test is skipped, or failed
under ``CI``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.net import free_port
from tests.support.nginx import missing, tail

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VISION_ENRICH_LITELLM_VENV", ROOT / ".venv-litellm"))
INSTALL = (
    "python3 -m venv .venv-litellm && .venv-litellm/bin/pip install -r "
    "tests/support/litellm-requirements.txt (README's command 2 does it)"
)


class LiteLLM:
    def __init__(
        self,
        upstream: str,
        models: tuple[str, ...] = ("gpt-4o",),
        master_key: str = "sk-litellm-master-0123456789",
        startup_timeout: float = 90.0,
    ):
        self.upstream = upstream.rstrip("/")
        self.models = models
        self.master_key = master_key
        self.startup_timeout = startup_timeout
        self.port = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _config(self) -> dict:
        return {
            "model_list": [
                {
                    "model_name": model,
                    "litellm_params": {
                        "model": f"openai/{model}",
                        "api_base": self.upstream,
                        "api_key": "sk-upstream-not-secret",
                    },
                }
                for model in self.models
            ],
            "litellm_settings": {"num_retries": 0, "request_timeout": 30},
            "router_settings": {"disable_cooldowns": True},
            "general_settings": {"master_key": self.master_key},
        }

    def __enter__(self) -> LiteLLM:
        binary = VENV / "bin" / "litellm"
        if not binary.exists():
            missing(f"LiteLLM's proxy is not installed at {VENV}: {INSTALL}")
        self._dir = tempfile.TemporaryDirectory(prefix="ve-litellm-")
        folder = Path(self._dir.name)
        config = folder / "config.yaml"
        config.write_text(json.dumps(self._config()))  # JSON is YAML
        log = folder / "proxy.log"
        self.port = free_port()
        env = {
            "PATH": f"{VENV / 'bin'}:/usr/bin:/bin",
            "HOME": str(folder),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        self._log = open(log, "wb")
        self._proc = subprocess.Popen(
            [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{self.port}/health/liveliness"
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self._proc.returncode}: {tail(log)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"litellm did not start in {self.startup_timeout:g} s")
            time.sleep(0.25)

    def log(self) -> str:
        return tail(Path(self._dir.name) / "proxy.log") if self._dir else ""

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
