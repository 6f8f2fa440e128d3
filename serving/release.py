"""A checked release of a retrained model, and a rollback, against a running TorchServe.

    python -m serving.release --model digits --version 1.4    # make release MODEL=digits VERSION=1.4
    python -m serving.release --model digits --rollback       # make rollback MODEL=digits
    python -m serving.release --model numbers --version 1.4 --model-file build/numbers-corrected/numbers.pt

A release:
1. archives the new model file (``--model-file``; for digits by default make retrain's
   build/retrain/digits/digits.pt, for numbers a numbers.pt that training/train_numbers.py wrote)
   as ``<model>_<version>.mar`` in the server's model store (serving/archive.py);
2. registers it next to the current default through the management API;
3. replays the golden set (``--golden``, default build/golden/<model>.npz, written by
   training/golden.py: for digits MNIST test digits plus the development splits present, for
   numbers the model card's strings) and the held-out corrections (serving/feedback.py's
   ``is_held_out``, never trained on) against both versions, over HTTP;
4. makes it the default only when it is not worse on the golden set by more than ``--margin``
   (accuracy points) AND strictly better on the held-out corrections; otherwise unregisters it
   and says why.

An answer counts as right only when the model names the right digit (numbers: the whole
string); a declined answer (``"digit": null``, ``"text": null``) counts as wrong. The previous default stays registered, so a rollback is
one call: it makes the version the last release replaced the default again, and unregisters
the one it rolls back. Every step is appended, with a UTC timestamp and its figures, to
``releases.log`` in the server's run directory (build/run/releases.log for make serve); the
promotions a rollback undoes are kept in ``releases.json`` beside it.

TorchServe serves what config.properties names when it restarts (snapshots are off), so a
release lasts until ``make stop``; to ship it for good, copy the model file to model/<model>.pt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import requests

from serving.archive import build_archive
from serving.feedback import FeedbackStore, db_path, is_held_out
from serving.server import RUN_DIR, TorchServe, model_settings, read_properties

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "build" / "golden"  # <model>.npz, training/golden.py
MARGIN = 0.005  # the golden set may lose at most half a point: about 10 of 2,000 MNIST digits


@dataclass(frozen=True)
class Recipe:
    """What a release needs to know of a model: how to archive it, which field of an answer
    names what was read, how a correction's label reads, and where its new model file usually is."""
    archive: object       # (version, store, model_file) -> the .mar's path
    answer: str
    label: type
    model_file: Path | None
    made_by: str


RECIPES = {
    "digits": Recipe(build_archive, "digit", int, REPO / "build" / "retrain" / "digits" / "digits.pt",
                     "make retrain MODEL=digits"),
    "numbers": Recipe(partial(build_archive, model_name="numbers"), "text", str, None,
                      "training/train_numbers.py, given as --model-file (docs/feedback.md)"),
}


class ReleaseError(RuntimeError):
    """A release or rollback that cannot go on; the reason is logged."""


@dataclass
class Figures:
    """How one version did on one set: right answers, declined answers, count."""

    right: int
    declined: int
    count: int
    failed: int = 0  # answers that were not 200 (should be none)

    @property
    def accuracy(self) -> float:
        return self.right / self.count if self.count else 0.0

    def __str__(self) -> str:
        return f"{self.accuracy:.2%} ({self.right}/{self.count} right, {self.declined} declined" + \
               (f", {self.failed} failed)" if self.failed else ")")


class ReleaseLog:
    """Appends timestamped lines to releases.log and echoes them."""

    def __init__(self, path: Path, model: str, echo: bool = True):
        self.path, self.model, self.echo = Path(path), model, echo
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, version: str, step: str, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp} {self.model} {version} {step}: {text}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, flush=True)


def connect(run_dir: Path = RUN_DIR) -> TorchServe:
    """The running TorchServe of ``run_dir``, with the settings it was started with."""
    run_dir = Path(run_dir).resolve()
    config = run_dir / "config.properties"
    if not config.exists():
        raise ReleaseError(f"no TorchServe was started from {run_dir}; start one with make serve")
    props = read_properties(config)
    server = TorchServe(run_dir, Path(props["model_store"]), overrides=props)
    if not server.pid():
        raise ReleaseError(f"TorchServe is not running from {run_dir}; start it with make serve")
    return server


def load_golden(path: Path) -> tuple[list[bytes], list[int], dict[str, int], list[str]]:
    """The golden set's images (bytes), labels, how many came from each source, and each
    image's source."""
    if not Path(path).exists():
        raise ReleaseError(f"no golden set at {path}: build it with python -m training.golden")
    with np.load(path) as z:
        blob, offsets, labels, sources = z["blob"].tobytes(), z["offsets"], z["labels"], z["sources"]
    items = [blob[offsets[i]:offsets[i + 1]] for i in range(len(labels))]
    names, counts = np.unique(sources, return_counts=True)
    return items, labels.tolist(), {str(n): int(c) for n, c in zip(names, counts)}, [str(x) for x in sources]


def held_out_corrections(db: Path, model: str) -> tuple[list[bytes], list[int | str]]:
    """The corrections of ``model`` that retraining never saw, with the labels people gave
    (a digit for digits, a string of digits for numbers)."""
    if not Path(db).exists():
        return [], []
    rows = [r for r in FeedbackStore(db).rows(model) if is_held_out(r["id"])]
    return [r["image"] for r in rows], [RECIPES[model].label(r["label"]) for r in rows]


def default_version(server: TorchServe, model: str) -> str:
    r = server.manage("GET", f"models/{model}")
    if r.status_code != 200:
        raise ReleaseError(f"the server has no model {model!r} (HTTP {r.status_code}: {r.text[:200]})")
    return r.json()[0]["modelVersion"]


def versions(server: TorchServe, model: str) -> list[str]:
    r = server.manage("GET", f"models/{model}/all")
    r.raise_for_status()
    return [m["modelVersion"] for m in r.json()]


def replay(server: TorchServe, model: str, version: str, images: list[bytes], labels: list[int | str],
           threads: int = 8) -> Figures:
    """Send every image to ``/predictions/<model>/<version>`` and count the right answers."""
    url = f"{server.inference_url}/predictions/{model}/{version}"
    key = RECIPES[model].answer

    def ask(body: bytes) -> tuple[int, object]:
        for attempt in range(3):  # a fresh key if TorchServe renewed them meanwhile
            r = requests.post(url, data=body, timeout=120,
                              headers={**server.headers("inference"), "X-Activations": "off"})
            if r.status_code != 400 or "InvalidKeyException" not in r.text:
                break
        if r.status_code != 200:
            return r.status_code, None
        return 200, r.json().get(key)

    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(ask, images))
    right = sum(status == 200 and digit == label for (status, digit), label in zip(answers, labels))
    declined = sum(status == 200 and digit is None for status, digit in answers)
    failed = sum(status != 200 for status, _ in answers)
    return Figures(right, declined, len(labels), failed)


def decide(golden_old: Figures, golden_new: Figures, corr_old: Figures, corr_new: Figures,
           margin: float) -> tuple[bool, str]:
    """Promote only when not worse on golden beyond ``margin`` and better on the corrections."""
    drop = golden_old.accuracy - golden_new.accuracy
    if golden_new.failed or corr_new.failed:
        return False, f"the new version failed {golden_new.failed + corr_new.failed} requests"
    if corr_new.count == 0:
        return False, "there are no held-out corrections to show that it learned anything"
    if drop > margin:
        return False, (f"worse on the golden set by {drop:.2%} ({golden_old.accuracy:.2%} -> "
                       f"{golden_new.accuracy:.2%}), more than the {margin:.2%} margin")
    if corr_new.right <= corr_old.right:
        return False, (f"no better on the held-out corrections ({corr_old.accuracy:.2%} -> "
                       f"{corr_new.accuracy:.2%})")
    return True, (f"golden {golden_old.accuracy:.2%} -> {golden_new.accuracy:.2%} (within the {margin:.2%} "
                  f"margin), held-out corrections {corr_old.accuracy:.2%} -> {corr_new.accuracy:.2%}")


def _history(server: TorchServe) -> Path:
    return server.run_dir / "releases.json"


def _load_history(server: TorchServe) -> dict[str, list[dict]]:
    path = _history(server)
    return json.loads(path.read_text()) if path.exists() else {}


def _save_history(server: TorchServe, history: dict) -> None:
    tmp = _history(server).with_suffix(".tmp")
    tmp.write_text(json.dumps(history, indent=2) + "\n")
    tmp.replace(_history(server))


def release(server: TorchServe, model: str, version: str, model_file: Path, golden: Path, db: Path,
            margin: float = MARGIN, workers: int | None = None) -> dict:
    """Run the checked release; returns its figures and decision (also in releases.log)."""
    if model not in RECIPES:
        raise ReleaseError(f"no release recipe for model {model!r}; known models: {', '.join(RECIPES)}")
    log = ReleaseLog(server.run_dir / "releases.log", model)
    started = time.perf_counter()
    try:
        model_file = Path(model_file)
        if not model_file.exists():
            raise ReleaseError(f"no model file {model_file}: it comes from {RECIPES[model].made_by}")
        old = default_version(server, model)
        if version in versions(server, model):
            raise ReleaseError(f"version {version} is already registered; pick a new version")
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:12]
        log(version, "start", f"release of {model_file} (sha256 {digest}) against the default {old}")
        images, labels, sources, source_of = load_golden(golden)
        corr_images, corr_labels = held_out_corrections(db, model)
        log(version, "sets", f"golden {len(labels)} images ({', '.join(f'{n} {k}' for k, n in sources.items())}) "
                             f"from {golden}; {len(corr_labels)} held-out corrections from {db}")
        mar = RECIPES[model].archive(version, server.model_store, model_file)
        log(version, "archive", f"{mar} ({mar.stat().st_size:,} bytes)")
    except ReleaseError as e:
        log(version, "refused", str(e))
        raise
    settings = model_settings(server.props, model=model)  # numbers has its own workers and batching
    workers = workers or int(settings["minWorkers"])
    r = server.manage("POST", f"models?url={mar.name}&model_name={model}&initial_workers={workers}"
                              f"&batch_size={settings['batchSize']}&max_batch_delay={settings['maxBatchDelay']}"
                              f"&response_timeout={settings.get('responseTimeout', 120)}&synchronous=true")
    if r.status_code != 200:
        log(version, "refused", f"registration failed: HTTP {r.status_code} {r.text[:300]}")
        raise ReleaseError(f"registration of {mar.name} failed: HTTP {r.status_code}")
    log(version, "register", f"registered next to {old} with {workers} workers")
    promoted = False
    try:
        figures = {}
        for v in (old, version):
            for source in sources:  # one replay per source, for figures per source too
                pick = [i for i, s in enumerate(source_of) if s == source]
                figures[source, v] = replay(server, model, v, [images[i] for i in pick], [labels[i] for i in pick])
            figures["golden", v] = Figures(*(sum(getattr(figures[src, v], k) for src in sources)
                                             for k in ("right", "declined", "count", "failed")))
            by_source = "; ".join(f"{src} {figures[src, v].accuracy:.2%}" for src in sources)
            log(version, "replay golden", f"{v}: {figures['golden', v]} [{by_source}]")
            figures["corrections", v] = replay(server, model, v, corr_images, corr_labels)
            log(version, "replay corrections", f"{v}: {figures['corrections', v]}")
        ok, why = decide(figures["golden", old], figures["golden", version],
                         figures["corrections", old], figures["corrections", version], margin)
        if ok:
            r = server.manage("PUT", f"models/{model}/{version}/set-default")
            if r.status_code != 200:
                raise ReleaseError(f"set-default failed: HTTP {r.status_code} {r.text[:300]}")
            promoted = True
            history = _load_history(server)
            history.setdefault(model, []).append({"from": old, "to": version,
                                                  "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            _save_history(server, history)
            log(version, "promoted", f"{version} is the default, {old} stays registered for a rollback: {why}")
        else:
            log(version, "refused", why)
    except Exception as e:
        if not promoted:
            log(version, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        if not promoted:
            r = server.manage("DELETE", f"models/{model}/{version}")
            log(version, "unregister", f"{version} unregistered (HTTP {r.status_code}); {old} stays the default")
    seconds = time.perf_counter() - started
    return {"model": model, "version": version, "previous": old, "promoted": promoted, "reason": why,
            "margin": margin, "seconds": round(seconds, 1), "sources": sources,
            "figures": {f"{name} {v}": {"accuracy": f.accuracy, "right": f.right, "declined": f.declined,
                                        "count": f.count} for (name, v), f in figures.items()}}


def rollback(server: TorchServe, model: str) -> str:
    """Make the version the last promotion replaced the default again; returns that version."""
    log = ReleaseLog(server.run_dir / "releases.log", model)
    history = _load_history(server)
    steps = history.get(model, [])
    current = default_version(server, model)
    registered = versions(server, model)
    while steps and steps[-1]["to"] not in registered:  # the server restarted since (make stop / serve)
        stale = steps.pop()
        log(current, "rollback", f"forgets the release of {stale['to']}: it is no longer registered")
    if not steps:
        _save_history(server, history)
        log(current, "rollback refused", "no release of this server to roll back")
        raise ReleaseError(f"nothing to roll back: no release of {model} was promoted on this server")
    last = steps[-1]
    if last["to"] != current:
        log(current, "rollback refused", f"the default is {current}, not {last['to']} as the last release left it")
        raise ReleaseError(f"the default is {current}, not {last['to']}: it was changed by hand; not rolling back")
    if last["from"] not in registered:
        log(current, "rollback refused", f"{last['from']} is no longer registered")
        raise ReleaseError(f"{last['from']} is no longer registered; register it again to roll back")
    r = server.manage("PUT", f"models/{model}/{last['from']}/set-default")
    if r.status_code != 200:
        log(current, "rollback failed", f"set-default {last['from']}: HTTP {r.status_code} {r.text[:300]}")
        raise ReleaseError(f"set-default {last['from']} failed: HTTP {r.status_code}")
    steps.pop()
    _save_history(server, history)
    log(current, "rollback", f"{last['from']} is the default again")
    r = server.manage("DELETE", f"models/{model}/{current}")
    log(current, "unregister", f"{current} unregistered (HTTP {r.status_code}); its archive stays in the model store")
    return last["from"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits", help="default: %(default)s")
    p.add_argument("--version", help="the new version's name, e.g. 1.3 (not with --rollback)")
    p.add_argument("--rollback", action="store_true", help="make the previous default the default again")
    p.add_argument("--model-file", type=Path,
                   help="the new model (default for digits: build/retrain/digits/digits.pt, make retrain; "
                        "numbers: none, give a numbers.pt from training/train_numbers.py)")
    p.add_argument("--golden", type=Path,
                   help="default: build/golden/<model>.npz (python -m training.golden --model <model>)")
    p.add_argument("--db", type=Path, help="the feedback file (default: feedback_db in config.properties)")
    p.add_argument("--margin", type=float, default=MARGIN,
                   help="largest golden-set accuracy loss accepted, as a fraction (default: %(default)s)")
    p.add_argument("--workers", type=int, help="workers of the new version (default: as config.properties)")
    p.add_argument("--run-dir", type=Path, default=RUN_DIR, help="the running TorchServe's (default: %(default)s)")
    args = p.parse_args()
    try:
        server = connect(args.run_dir)
        if args.rollback:
            print(f"{args.model}: {rollback(server, args.model)} is the default again")
            return
        if not args.version:
            p.error("--version is needed for a release (make release MODEL=digits VERSION=1.3)")
        recipe = RECIPES.get(args.model)
        model_file = args.model_file or (recipe and recipe.model_file)
        if recipe and not model_file:
            p.error(f"--model-file is needed for {args.model}: a model file from {recipe.made_by}")
        db = args.db or db_path(read_properties())
        golden = args.golden or GOLDEN_DIR / f"{args.model}.npz"
        result = release(server, args.model, args.version, Path(model_file or "none"), golden, db, args.margin,
                         args.workers)
    except ReleaseError as e:
        sys.exit(f"release: {e}")
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["promoted"] else 3)  # refused: a distinct status for scripts


if __name__ == "__main__":
    main()
