"""Run the gateway for one TorchServe instance (``make serve`` starts it through serving.server).

    python -m gateway [--run-dir build/run]

Addresses come from the instance's own ``config.properties`` in the run directory (written by
``serving.server`` from the repository's, overrides included): TorchServe's inference and
management addresses and ``gateway_address``, where this listens; ``feedback_db`` and
``feedback_per_minute`` for the page's corrections; ``gateway_allowed_hosts``, host names it answers to
besides loopback (a container's; comma-separated). Keys come from the ``key_file.json`` beside it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from gateway.app import create_app, split_address
from serving.feedback import DEFAULT_PER_MINUTE, FeedbackStore, db_path, known_models
from serving.server import RUN_DIR, read_properties


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="the TorchServe run directory (default: %(default)s)")
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    props = read_properties(run_dir / "config.properties")
    host, port = split_address(props["gateway_address"])
    # Host names besides loopback that clients may use, e.g. a Kubernetes Service's (deploy/pod.py).
    extra_hosts = [h.strip() for h in props.get("gateway_allowed_hosts", "").split(",") if h.strip()]
    # Corrections are kept only where the settings name a file for them (make serve's do).
    feedback = (FeedbackStore(db_path(props), int(props.get("feedback_per_minute", DEFAULT_PER_MINUTE)))
                if "feedback_db" in props else None)
    app = create_app(run_dir / "key_file.json", props["inference_address"], props["management_address"],
                     allowed_hosts=tuple(dict.fromkeys((host, "127.0.0.1", "localhost", *extra_hosts))),
                     feedback=feedback, models=known_models(props))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, proxy_headers=False)


if __name__ == "__main__":
    main()
