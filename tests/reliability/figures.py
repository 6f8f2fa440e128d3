"""Figures the reliability tests measure, printed after the run and written as a report.

Each test puts its figures under a section of ``figures``, and the timed ones (recovery time,
throughput) also under ``targets`` with the target they are compared with. Tests never fail on
a time: CI's machine may be busy. After the run the figures and the comparison are printed in
the terminal summary and written to ``build/reliability.md``; set ``DIGITS_RELIABILITY_REPORT``
to a path (``make soak`` uses docs/reliability.md) to write the report there as well, and
``DIGITS_JUDGE_TARGETS=1`` (``make soak`` does) to make a missed target fail the run.

Under ``make test``'s workers (pytest-xdist) the reliability tests run in a worker process:
each worker hands its figures to the controlling process as it finishes (``send``, ``take``),
and the controller, which runs no tests itself, prints and writes them.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from serving.machine import describe_machine

REPO = Path(__file__).resolve().parent.parent.parent
FIGURES: dict[str, dict[str, object]] = {}
TARGETS: list[dict] = []  # {"what", "measured", "target", "unit", "met"}
_HANDED = "digits_reliability"  # the key of the figures in a pytest-xdist worker's output


def send(config) -> None:
    """In a pytest-xdist worker: put this process's figures in the output it returns to the controller."""
    config.workeroutput[_HANDED] = json.dumps({"figures": FIGURES, "targets": TARGETS}, default=str)


def take(workeroutput: dict) -> None:
    """In the controller: add a finished worker's figures to this process's."""
    if _HANDED in workeroutput:
        handed = json.loads(workeroutput[_HANDED])
        for section, values in handed["figures"].items():
            FIGURES.setdefault(section, {}).update(values)
        TARGETS.extend(handed["targets"])


def machine() -> str:
    import torch
    import ts
    return (f"{platform.node()}: {describe_machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"TorchServe {ts.__version__}, load average at the end {os.getloadavg()[0]:.1f}")


def cell(value: object) -> str:
    """A value fit for one cell of a markdown table."""
    if isinstance(value, (list, tuple, set)):
        value = "; ".join(str(v) for v in value)
    return " ".join(str(value).split()).replace("|", "\\|")


def report() -> str:
    lines = ["# Reliability figures", "",
             "Measured by `tests/reliability` against a real TorchServe on loopback "
             "(`make test` runs them with a 15 s soak; `make soak` with a longer one and writes this file). "
             "Every request under load is checked against the answer its image gets when sent alone: "
             "a wrong answer counts as an error. Scaling down through the management API under load is "
             "a TorchServe 0.12 limitation (it kills workers with what they hold: those requests get 500, and now and then one is never answered until the client gives up); the zero-loss way "
             "down moves the traffic to a version with fewer workers (README, Versions and workers).",
             "", f"- When: {time.strftime('%Y-%m-%d %H:%M %Z')}", f"- Machine: {machine()}",
             f"- Soak: {os.environ.get('DIGITS_SOAK_SECONDS', '15')} s", ""]
    if TARGETS:
        lines += ["## Targets", "", "Timed figures against their targets: a busy machine misses them without "
                  "anything being broken, so `make test` only reports them and `make soak` judges them.", "",
                  "| figure | measured | target | |", "|---|---:|---:|---|"]
        lines += [f"| {cell(t['what'])} | {t['measured']:.1f} {t['unit']} | {t['target']:.0f} {t['unit']} | "
                  f"{'met' if t['met'] else '**missed**'} |" for t in TARGETS]
        lines.append("")
    for section, values in FIGURES.items():
        lines += [f"## {section}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {cell(name)} | {cell(value)} |" for name, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def summary(terminalreporter) -> None:
    """Print the figures after the run and write the report (nothing when no reliability test ran)."""
    if not FIGURES:
        return
    text = report()
    terminalreporter.write_sep("=", "reliability figures")
    terminalreporter.write_line(text)
    targets = [REPO / "build" / "reliability.md"]
    if os.environ.get("DIGITS_RELIABILITY_REPORT"):
        targets.append(Path(os.environ["DIGITS_RELIABILITY_REPORT"]).resolve())
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        terminalreporter.write_line(f"written to {path}")


def judge(session, exitstatus) -> None:
    """With DIGITS_JUDGE_TARGETS=1 (make soak), a missed timed target fails the run."""
    missed = [t["what"] for t in TARGETS if not t["met"]]
    if os.environ.get("DIGITS_JUDGE_TARGETS") == "1" and missed and exitstatus == 0:
        print(f"\nmissed targets: {missed}")
        session.exitstatus = 1
