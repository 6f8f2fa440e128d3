"""`make bulk`: read every image of a folder or file list once, on Ray Data, with the server's handler.

    python -m bulk IN OUT [--model digits|numbers] [--workers N] [--batch-size 64]

IN is a folder (every file under it, recursively) or a text file listing one path per line.
OUT gets one JSON line per input, written as batches complete and flushed:

    {"path": ..., "model": "digits", "version": "1.4", "status": 200, "digit": 7, "confidence": ..., ...}
    {"path": ..., "model": "digits", "version": "1.4", "status": 400, "error": "not_an_image", "detail": ...}

The answer is the server's own (``handler/digits_handler.py``, or ``handler/numbers_handler.py``
for ``--model numbers``, run through ``serving/local.py``,
as a TorchServe worker runs it), without the 28x28 ``input`` PNG and without activation maps.
A file that cannot be read or decoded is a line with its error; the job goes on. Run again
with the same OUT, it reads only the paths OUT does not hold yet (a half-written last line from
an interrupted run is dropped and its path read again).

Ray's batch-inference shape: ``Reader.__init__`` loads the handler once per actor,
``Reader.__call__`` reads a batch; ``map_batches`` runs a pool of them, one CPU each. A local
Ray is started unless ``RAY_ADDRESS`` names a cluster (then the project's packages travel as
``py_modules``; the nodes need requirements.txt installed and the input paths mounted).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from handler.spine import outcome_of
from model.preprocess import MAX_BYTES
from serving import local
from serving.archive import MODEL_FILE, NUMBERS_FILE, stored_version

REPO = Path(__file__).resolve().parent.parent
NO_MAPS = {"X-Activations": "off"}  # a bulk answer has no use for the activation maps
DROPPED = ("input",)  # the 28x28 PNG the model saw: for the page, not for a results file
PROJECT_PACKAGES = ("bulk", "handler", "model", "serving")  # what a cluster's workers import


class UnknownModel(ValueError):
    """A model name that has no handler here."""


def _digits():
    return local.load_handler(MODEL_FILE, version=stored_version(MODEL_FILE))


def _numbers():
    from handler.numbers_handler import NumbersHandler

    return local.load_handler(NUMBERS_FILE, version=stored_version(NUMBERS_FILE), handler_class=NumbersHandler,
                              model_name=NumbersHandler.MODEL_NAME)


# Model name -> how to load its handler as a TorchServe worker would. Another model adds its
# loader here; listing, the lines, errors and resuming stay the same.
MODELS: dict[str, Callable[[], object]] = {"digits": _digits, "numbers": _numbers}


def check_model(name: str) -> None:
    """UnknownModel, naming the models there are, for a name without a handler here."""
    if name not in MODELS:
        raise UnknownModel(f"no model {name!r} here; bulk jobs can read with: {', '.join(sorted(MODELS))}")


def load_model(name: str):
    """The named model's handler, initialised as a TorchServe worker initialises it."""
    check_model(name)
    return MODELS[name]()


def read_file(path: str) -> bytes:
    """The file's bytes; one byte over the server's limit is enough for the handler to refuse it."""
    with open(path, "rb") as f:
        return f.read(MAX_BYTES + 1)


def read_paths(handler, paths: list[str]) -> list[dict]:
    """One result per path, in order: the handler's answer, or the error that stopped this file."""
    common = {"model": handler.model_name, "version": handler.version}
    out: list[dict | None] = [None] * len(paths)
    bodies, owners = [], []
    for i, path in enumerate(paths):
        try:
            bodies.append(read_file(path))
            owners.append(i)
        except OSError as e:
            out[i] = {"path": path, **common, "status": None, "error": "unreadable",
                      "detail": f"{e.strerror or type(e).__name__}: {path}"}
    if bodies:
        answers, _ = local.handle(handler, [{"body": b} for b in bodies], NO_MAPS)
        for i, (status, answer) in zip(owners, answers):
            for key in DROPPED:
                answer.pop(key, None)
            out[i] = {"path": paths[i], **common, "status": status, **answer}
    return out


class Reader:
    """A Ray Data actor: the handler loaded once, then batches of paths in, JSON lines out."""

    def __init__(self, model: str):
        self.handler = load_model(model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        results = read_paths(self.handler, paths)
        return {"path": np.array(paths, dtype=object),
                "line": np.array([json.dumps(r, separators=(",", ":")) for r in results], dtype=object),
                "failed": np.array(["error" in r for r in results]),
                "unsure": np.array([outcome_of(r) == "unsure" for r in results])}


# ---------------------------------------------------------------- inputs and resuming

def list_inputs(source: Path) -> list[str]:
    """Absolute paths: every file under a folder (sorted), or the lines of a list file, each once."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(str(p.resolve()) for p in source.rglob("*") if p.is_file())
    else:
        lines = source.read_text().splitlines()
        paths = [os.path.abspath(line.strip()) for line in lines if line.strip()]
    return list(dict.fromkeys(paths))


def resume(out: Path) -> set[str]:
    """The paths OUT already answers. Lines that are not whole JSON results (an interrupted
    run's last line) are dropped from OUT, so new lines append after the last whole one."""
    if not out.exists():
        return set()
    kept, done = [], set()
    for line in out.read_bytes().split(b"\n"):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and isinstance(result.get("path"), str) and result["path"] not in done:
            done.add(result["path"])
            kept.append(line)
    text = b"".join(line + b"\n" for line in kept)
    if text != out.read_bytes():
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(text)
        os.replace(tmp, out)
    return done


# ---------------------------------------------------------------- the job

def start_ray(cpus: int | None = None, object_store_mb: int | None = None) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local Ray on this machine's (or ``cpus``) cores."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"py_modules": [str(REPO / p) for p in PROJECT_PACKAGES]},
                 log_to_driver=False)
    else:  # "local": a new Ray for this job, never one a stray `ray start` left behind
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=object_store_mb * 2**20 if object_store_mb else None,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    # Ray's ports listen on every interface; its token keeps others out, but Ray writes the
    # token file readable by every user of the machine.
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if token.exists():
        token.chmod(0o600)


def dataset(paths: list[str], model: str, workers: int, batch_size: int):
    """The Ray Data pipeline: paths in blocks of a batch, read by a pool of ``workers`` Readers."""
    import ray

    ds = ray.data.from_items([{"path": p} for p in paths],
                             override_num_blocks=max(1, math.ceil(len(paths) / batch_size)))
    return ds.map_batches(Reader, fn_constructor_args=(model,), batch_size=batch_size,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)


def run(source: Path, out: Path, model: str = "digits", workers: int | None = None, batch_size: int = 64,
        progress: bool = True, log: Callable[[str], None] = print,
        on_batch: Callable[[int], None] | None = None) -> dict:
    """Read every input OUT lacks and append its line to OUT; returns counts for the summary.
    ``on_batch`` is called with the number of lines after each batch is written (the benchmark's clock)."""
    import ray
    from tqdm import tqdm

    check_model(model)  # before Ray starts: a typo should cost nothing
    paths = list_inputs(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = resume(out)
    todo = [p for p in paths if p not in done]
    summary = {"inputs": len(paths), "already_in_out": len(paths) - len(todo), "read": 0, "unsure": 0, "errors": 0}
    if not todo:
        log(f"nothing to read: all {len(paths)} inputs are in {out}")
        return summary
    start_ray()
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts lines written
    log(f"reading {len(todo)} of {len(paths)} inputs with {model} on {workers} Ray workers "
        f"({'cluster ' + os.environ['RAY_ADDRESS'] if os.environ.get('RAY_ADDRESS') else 'local Ray'})")
    with out.open("a") as f, tqdm(total=len(todo), unit="img", disable=not progress) as bar:
        for batch in dataset(todo, model, workers, batch_size).iter_batches(batch_size=None, batch_format="numpy"):
            lines = list(batch["line"])
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            summary["read"] += len(lines)
            summary["errors"] += int(batch["failed"].sum())
            summary["unsure"] += int(batch["unsure"].sum())
            bar.update(len(lines))
            if on_batch:
                on_batch(len(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bulk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a folder of images, or a text file with one path per line")
    parser.add_argument("out", type=Path, help="results, one JSON line per input (appended to; resumable)")
    parser.add_argument("--model", default="digits", help="which model reads them (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="Ray actors, one CPU each (default: every CPU Ray has)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per handler call (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.source.exists():
        parser.error(f"{args.source} does not exist")
    try:
        summary = run(args.source, args.out, args.model, args.workers, args.batch_size)
    except UnknownModel as e:
        parser.error(str(e))
    print(f"{args.out}: {summary['read']} read ({summary['unsure']} unsure, with a guess for a person to check; "
          f"{summary['errors']} with an error), "
          f"{summary['already_in_out']} already there, {summary['inputs']} inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
