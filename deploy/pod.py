"""What runs inside the container: TorchServe and the gateway in the foreground, the probes.

    python -m deploy.pod serve                  # the image's entrypoint (under tini)
    python -m deploy.pod ready                  # readiness: each served model has READY workers
    python -m deploy.pod manage GET models      # one management call, with the pod's own key

Settings come from ``config.properties`` (the image's copy of the repository's, or the
Kubernetes ConfigMap generated from it, mounted over it); the container changes only where the
gateway listens (``DIGITS_GATEWAY_HOST``, 0.0.0.0 in the image: the gateway is the pod's only
exposed port), which host names it accepts (``DIGITS_ALLOWED_HOSTS``) and where the page's
corrections go (``DIGITS_FEEDBACK_DB``, in the writable run volume). TorchServe's own
ports stay on 127.0.0.1 inside the pod. Keys are random per TorchServe process and expire, so
the readiness probe reads them from the pod's own ``key_file.json``; nothing outside the pod ever holds one.
The readiness probe works the same against ``make serve`` on a workstation (build/run).
Liveness needs no module: the kubelet asks the gateway's ``/api/health``, which asks
TorchServe's ``/ping`` with the inference key.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from serving.server import RUN_DIR, TorchServe, read_properties, served_archives

# Seconds one probe call may take; the kubelet's own timeoutSeconds is set above this.
PROBE_TIMEOUT_S = 3.0
# Seconds TorchServe gets to stop its workers once the gateway has drained (then they are killed).
STOP_TIMEOUT_S = 30


def instance(run_dir: Path) -> TorchServe:
    """The running TorchServe of ``run_dir``, with the addresses its own config.properties holds."""
    return TorchServe(run_dir, overrides=read_properties(Path(run_dir) / "config.properties"))


def container_settings(props: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """config.properties settings a container changes, from its environment: where the gateway
    listens (the host only: the port stays the configured one), the extra host names it accepts,
    and where it keeps the page's corrections (a writable volume, not the read-only app)."""
    from gateway.app import split_address

    host, port = split_address(props["gateway_address"])
    out = {"gateway_address": f"http://{env.get('DIGITS_GATEWAY_HOST', host)}:{port}"}
    if env.get("DIGITS_ALLOWED_HOSTS"):
        out["gateway_allowed_hosts"] = env["DIGITS_ALLOWED_HOSTS"]
    if env.get("DIGITS_FEEDBACK_DB") and "feedback_db" in props:
        out["feedback_db"] = env["DIGITS_FEEDBACK_DB"]
    return out


class Stopping(Exception):
    """SIGTERM while TorchServe was starting (TorchServe.start stops it on the way out)."""


def serve(run_dir: Path, start_timeout: float) -> int:
    """Start TorchServe, then the gateway in front of it; on SIGTERM stop the gateway first (it
    finishes the requests it holds, so TorchServe has none in flight), then TorchServe."""
    stopping, starting = False, True
    gateway: subprocess.Popen | None = None

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        if starting:
            raise Stopping()
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)  # uvicorn drains its open requests, then exits

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = TorchServe(run_dir)
    server.props.update(container_settings(server.props, dict(os.environ)))
    print(f"starting TorchServe from {server.run_dir} (logs in {server.run_dir / 'logs'}) ...", flush=True)
    try:
        server.start(timeout=start_timeout)
    except Stopping:
        print("stopped while starting", flush=True)
        return 0
    starting = False
    rc = 0
    if not stopping:
        print(f"digits answers; starting the gateway on {server.props['gateway_address']}", flush=True)
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--run-dir", str(server.run_dir)])
        rc = gateway.wait()
    left = server.stop(timeout=STOP_TIMEOUT_S)
    print(f"stopped (gateway exit {rc}; TorchServe {'killed ' + str(len(left)) + ' processes' if left else 'clean'})",
          flush=True)
    return 0 if stopping else (rc or 1)  # a gateway that exits by itself is a failure: let the pod restart


def ready(run_dir: Path, models: list[str] | None = None,
          timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Whether each model (by default each one config.properties loads at start) has a READY
    worker in its default version, asked of the management API.

    TorchServe's /ping says Healthy while workers are still loading, so it cannot gate traffic.
    One READY worker per model is enough: a worker restarting after a timeout must not take a
    pod whose other workers still answer out of the Service."""
    reasons = []
    try:
        server = instance(run_dir)
        names = models or list(dict.fromkeys(name for name, _, _ in served_archives(server.props)))
        for name in names:
            r = server.manage("GET", f"models/{name}", attempts=1, timeout=timeout)
            if r.status_code == 400 and "InvalidKeyException" in r.text:
                renew_management_key(server, timeout)  # keys expire (token_expiration_min)
                r = server.manage("GET", f"models/{name}", attempts=1, timeout=timeout)
            if r.status_code != 200:
                return False, f"GET models/{name}: HTTP {r.status_code} {r.text[:200]}"
            workers = [w for version in r.json() for w in version.get("workers", [])]
            n_ready = sum(w.get("status") == "READY" for w in workers)
            reasons.append(f"{name}: {n_ready} of {len(workers)} workers READY")
            if not n_ready:
                return False, "; ".join(reasons)
    except (OSError, ValueError, KeyError, requests.RequestException) as e:
        return False, f"management API unreachable or no key: {type(e).__name__}: {e}"
    return bool(reasons), "; ".join(reasons) or "no model to check"


def renew_management_key(server: TorchServe, timeout: float) -> None:
    """Ask TorchServe for a fresh management key (it rewrites key_file.json), with the API key,
    which does not expire."""
    requests.get(f"{server.management_url}/token", params={"type": "management"},
                 headers=server.headers("API"), timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path(os.environ.get("DIGITS_RUN_DIR", RUN_DIR)),
                        help="TorchServe's run directory (default: $DIGITS_RUN_DIR or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="TorchServe and the gateway in the foreground")
    p.add_argument("--start-timeout", type=float, default=float(os.environ.get("DIGITS_START_TIMEOUT_S", 300)))
    p = sub.add_parser("ready", help="exit 0 when each model's default version has a READY worker")
    p.add_argument("--model", action="append", help="a model to check (repeatable; default: each one loaded at start)")
    p.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_S)
    p = sub.add_parser("manage", help="one management call through serving's retrying helper; prints the answer")
    p.add_argument("method")
    p.add_argument("path", help="relative to the management API, e.g. 'models/digits/all'")
    args = parser.parse_args()
    if args.command == "serve":
        sys.exit(serve(args.run_dir, args.start_timeout))
    if args.command == "manage":
        r = instance(args.run_dir).manage(args.method, args.path)
        print(r.text)
        sys.exit(0 if r.ok else 1)
    ok, why = ready(args.run_dir, args.model, args.timeout)  # args.model: None or a list
    print(("ok: " if ok else "not ok: ") + why)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
