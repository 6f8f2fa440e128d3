"""A bounded load generator for the reliability tests: threads on loopback, bounded in time.

Each of ``concurrency`` threads keeps one keep-alive connection and sends the digit
fixtures in turn until ``seconds`` have passed (and, when asked, ``min_requests`` were sent)
or ``stop()`` is called, never longer than ``MAX_SECONDS``. Tests wait for counts of answers
(``wait_answered``), not for fixed times, so a busy machine changes how long they take but
not what they see. Every request is recorded (when it started and ended, its status, what went wrong),
and an answer only counts as good when it is the answer to *that* request: a 200 whose digit
is the one the server gave the same image when it was sent alone.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import requests

from tests.conftest import fixture_bytes

PNG = {"Content-Type": "image/png", "X-Activations": "off"}
MAX_SECONDS = 600  # a hard cap whatever the caller asks: no load outlives a test run


def reason(r: requests.Response) -> str:
    """The one-line reason in an error answer: TorchServe's ``message`` or the handler's ``error``."""
    try:
        body = r.json()
        return str(body.get("message") or body.get("error") or body)[:120]
    except ValueError:
        return " ".join(r.text.split())[:120] or "(empty body)"


@dataclass
class Sent:
    """One request: when it ran, what came back, and whether that was its own right answer."""
    started: float
    ended: float
    path: str
    status: int | None = None   # None: no HTTP answer (refused, reset, timed out)
    error: str = ""             # why it failed, empty when it succeeded
    ok: bool = False


@dataclass
class Load:
    """``concurrency`` threads sending ``images`` (name -> expected digit) to ``paths`` in turn."""
    inference_url: str
    headers: dict
    images: dict[str, int]
    concurrency: int = 8
    seconds: float = 15.0
    paths: tuple[str, ...] = ("digits",)
    timeout: float = 30.0
    version: str | None = None  # when set, every answer must come from this model version
    maps_every: int = 0         # when set, every n-th request asks for the activation maps too
    min_requests: int = 0       # keep going past ``seconds`` until this many were sent (a busy machine)
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._bodies = [(fixture_bytes(name), digit) for name, digit in self.images.items()]
        self._in_flight: dict[int, float] = {}  # thread -> when its current request started
        self.began = self.finished = 0.0

    # -- running
    def start(self) -> "Load":
        self.began = time.monotonic()
        self._deadline = self.began + min(self.seconds, MAX_SECONDS)
        self._hard_deadline = self.began + MAX_SECONDS
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> "Load":
        """Ask every thread to finish its request and stop; returns once they have."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"
        self.finished = time.monotonic()
        return self

    def _running(self) -> bool:
        """Whether to send more: until ``seconds`` have passed and ``min_requests`` were sent,
        never past MAX_SECONDS."""
        now = time.monotonic()
        return not self._stop.is_set() and now < self._hard_deadline and (
            now < self._deadline or len(self.sent) < self.min_requests)

    def wait(self) -> "Load":
        """Let the load run out its time (and its minimum count), then stop."""
        while self._running():
            time.sleep(0.05)
        return self.stop()

    def wait_answered(self, n: int, after: float | None = None, timeout: float = 120.0) -> "Load":
        """Wait until ``n`` requests sent after ``after`` (a time.monotonic(); default: now) have
        their right answers: traffic has really flowed, however slow the machine. ``timeout``
        only catches a server that stopped answering."""
        after = time.monotonic() if after is None else after
        deadline = time.monotonic() + timeout
        while sum(1 for s in list(self.sent) if s.ok and s.started >= after) < n:
            assert time.monotonic() < deadline, (
                f"fewer than {n} right answers {timeout:.0f} s after the mark: {self.summary_so_far()}")
            assert any(t.is_alive() for t in self._threads), f"the load ended first: {self.summary_so_far()}"
            time.sleep(0.02)
        return self

    def wait_sent(self, n: int, after: float, timeout: float = 120.0) -> "Load":
        """Wait until ``n`` requests sent after ``after`` have ended, whatever their outcome."""
        deadline = time.monotonic() + timeout
        while sum(1 for s in list(self.sent) if s.started >= after) < n:
            assert time.monotonic() < deadline, f"fewer than {n} requests ended after the mark"
            time.sleep(0.02)
        return self

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, worker: int) -> None:
        session = requests.Session()
        k = worker  # threads start at different images, so batches mix digits
        try:
            while self._running():
                body, digit = self._bodies[k % len(self._bodies)]
                path = self.paths[k % len(self.paths)]
                k += 1
                maps = bool(self.maps_every) and k % self.maps_every == 0
                sent = self._send(session, body, digit, path, maps)
                self._record(sent)
                if sent.status is None:
                    time.sleep(0.05)  # no server: retry like a client would, not in a tight loop
        finally:
            session.close()

    def _send(self, session: requests.Session, body: bytes, digit: int, path: str, maps: bool) -> Sent:
        sent = Sent(time.monotonic(), 0.0, path)
        self._in_flight[threading.get_ident()] = sent.started
        headers = {**self.headers, **PNG, **({"X-Activations": "on"} if maps else {})}
        try:
            r = session.post(f"{self.inference_url}/predictions/{path}", data=body, headers=headers,
                             timeout=self.timeout)
            sent.status = r.status_code
            if r.status_code != 200:
                sent.error = f"HTTP {r.status_code}: {reason(r)}"
            else:
                answer = json.loads(r.text)
                if answer.get("digit") != digit:
                    sent.error = f"answered {answer.get('digit')} for an image read alone as {digit}"
                elif self.version and answer.get("version") != self.version:
                    sent.error = f"answered by version {answer.get('version')}, not {self.version}"
                elif maps and not answer.get("activations"):
                    sent.error = "the activation maps asked for are missing"
                else:
                    sent.ok = True
        except (requests.RequestException, ValueError) as e:
            sent.error = f"{type(e).__name__}: {e}"[:300]
        sent.ended = time.monotonic()
        self._in_flight.pop(threading.get_ident(), None)
        return sent

    def settle(self, before: float, timeout: float = 120.0) -> None:
        """Wait until every request sent before ``before`` (a time.monotonic()) has its answer."""
        deadline = time.monotonic() + timeout
        while any(t < before for t in list(self._in_flight.values())):
            assert time.monotonic() < deadline, "requests still unanswered"
            time.sleep(0.01)

    def _record(self, sent: Sent) -> None:
        with self._lock:
            self.sent.append(sent)

    # -- results
    @property
    def failed(self) -> list[Sent]:
        return [s for s in self.sent if not s.ok]

    @property
    def succeeded(self) -> list[Sent]:
        return [s for s in self.sent if s.ok]

    def rate(self) -> float:
        return len(self.sent) / max(self.finished - self.began, 1e-9)

    def latency_ms(self, q: float) -> float:
        times = sorted((s.ended - s.started) * 1000 for s in self.succeeded)
        return round(times[min(len(times) - 1, int(q * len(times)))], 1) if times else float("nan")

    def summary_so_far(self) -> str:
        sent = list(self.sent)
        return f"{len(sent)} sent, {sum(1 for s in sent if s.ok)} right, last errors {[s.error for s in sent if not s.ok][-3:]}"

    def summary(self) -> str:
        return (f"{len(self.sent)} requests in {self.finished - self.began:.1f} s at concurrency "
                f"{self.concurrency} ({self.rate():.0f}/s, p50 {self.latency_ms(0.5)} ms, "
                f"p99 {self.latency_ms(0.99)} ms), {len(self.failed)} failed")
