"""Build the container image (deploy/Containerfile) with podman, and check it for real.

    python -m deploy.image build [--tag T]    # make image
    python -m deploy.image test  [--tag T]    # make image-test: build, run on loopback, check, remove

No registry is reachable here, so the Debian base is made from Debian's packages
(deploy/base.sh: debootstrap, then podman import) and cached. podman's default runtime fails in
this sandbox; runc with small ulimits works, so every podman call goes through PODMAN below.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import requests

from serving.archive import MODEL_NAME
from serving.machine import describe_machine
from serving.server import model_settings, read_properties, served_archives, served_versions

REPO = Path(__file__).resolve().parent.parent
CONTAINERFILE = REPO / "deploy" / "Containerfile"
CONTEXT = REPO / "build" / "image" / "context"
BASE_TAG = "localhost/digits-base:bookworm"
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# What the image runs; the model archives go in separately (model_store/).
APP_PATHS = ("model", "handler", "serving", "gateway", "deploy", "ui", "config.properties")
# Not copied into the image: the network is inside the .mar; the manifests and build files are not run.
LEFT_OUT = re.compile(r"\.pt$|^deploy/(k8s|Containerfile|base\.sh)")
REPORT = REPO / "docs" / "deploy.md"
MARKERS = ("<!-- image-test figures: written by make image-test -->", "<!-- end of image-test figures -->")
FIRST_ANSWER_TIMEOUT_S = 600  # a hang, not a figure: a quiet start takes a small fraction of this


def pins(text: str) -> dict[str, str]:
    """``name==version`` pins in a requirements file or the Containerfile, by lower-case name."""
    return {m[1].lower(): m[2] for m in re.finditer(r"(?<![\w.-])([A-Za-z0-9][\w.-]*)==([\w.+!-]+)", text)}


def image_pins() -> dict[str, str]:
    """The Python packages the Containerfile installs, with their versions."""
    return pins(CONTAINERFILE.read_text())


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def context() -> Path:
    """build/image/context: wheels for the pinned packages, the serving code, the archives."""
    wheels = CONTEXT / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    # This host's pip settings decide where torch's CPU wheel comes from; binary wheels only.
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(wheels),
         *(f"{name}=={version}" for name, version in image_pins().items())])
    # The committed tree, not the working tree: an image is a commit (its revision label), and a
    # half-made change in the checkout cannot leak into its code or its archives.
    tree = CONTEXT.parent / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", *APP_PATHS], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    store = CONTEXT / "model_store"
    shutil.rmtree(store, ignore_errors=True)
    for model, version, _ in served_archives(read_properties(tree / "config.properties")):
        committed_archive(model, version, store)
    app = CONTEXT / "app"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(tree, app, ignore=lambda folder, names: [
        n for n in names if LEFT_OUT.search((Path(folder) / n).relative_to(tree).as_posix())])
    return CONTEXT


def committed_archive(model: str, version: str, store: Path) -> Path:
    """``<model>_<version>.mar`` built by the committed tree's serving.archive from its own files."""
    which = [] if model == MODEL_NAME else ["--model", model]
    run([sys.executable, "-m", "serving.archive", *which, "--version", version, "--store", str(store)],
        cwd=CONTEXT.parent / "tree", stdout=subprocess.DEVNULL)
    return Path(store) / f"{model}_{version}.mar"


def build(tag: str) -> float:
    """Build the image (and the base image first, when podman has none); returns the seconds it took."""
    start = time.monotonic()
    run(["sh", str(REPO / "deploy" / "base.sh"), BASE_TAG], cwd=REPO)
    ctx = context()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    print(f"the image holds commit {commit[:12]} (uncommitted changes are not in it)", flush=True)
    run([*PODMAN, "build", *ULIMITS, "--build-arg", f"BASE={BASE_TAG}", "--label",
         f"org.opencontainers.image.revision={commit}", "-f", str(CONTAINERFILE), "-t", tag, str(ctx)])
    return time.monotonic() - start


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], check=check, capture_output=True, text=True)


def logs(name: str) -> str:
    """The container's output, stdout and stderr together."""
    out = subprocess.run([*PODMAN, "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return out.stdout


def test(tag: str) -> dict[str, str]:
    """Build, run on a free loopback port, check what a user sees, stop and remove the container.
    Returns the figures; raises AssertionError at the first check that fails."""
    from serving.server import free_ports

    load_before = os.getloadavg()
    base_cached = podman("image", "exists", BASE_TAG, check=False).returncode == 0
    seconds = build(tag)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    gateway_port = int(read_properties()["gateway_address"].rsplit(":", 1)[1])
    (port,) = free_ports(1)
    name = f"digits-image-test-{os.getpid()}"
    started = time.monotonic()
    # As the Deployment runs it: read-only root, writable run directory and /tmp only, no
    # capabilities, no privilege gain. A second archive, mounted read-only into the model store,
    # is there to be registered below.
    extra = committed_archive(MODEL_NAME, "2.0", CONTEXT.parent / "extra")
    podman("run", "-d", "--name", name, *ULIMITS, "--read-only", "--read-only-tmpfs=false",
           "--tmpfs", "/tmp:rw,size=1g,mode=1777", "--tmpfs", "/var/lib/digits:rw,size=1g,U",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "-v", f"{extra}:/opt/digits/model_store/{extra.name}:ro",
           "-e", "DIGITS_ALLOWED_HOSTS=digits,digits.test.svc", "-p", f"127.0.0.1:{port}:{gateway_port}", tag)
    url = f"http://127.0.0.1:{port}"
    try:
        seven = (REPO / "tests" / "fixtures" / "drawn_7.png").read_bytes()
        answer, last = None, "no answer yet"
        while answer is None:
            if time.monotonic() - started > FIRST_ANSWER_TIMEOUT_S:
                raise AssertionError(f"no prediction within {FIRST_ANSWER_TIMEOUT_S} s ({last}); logs:\n"
                                     + logs(name)[-3000:])
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                raise AssertionError(f"the container is {state}; logs:\n" + logs(name)[-3000:])
            try:
                r = requests.post(f"{url}/api/predict", data=seven, headers={"Content-Type": "image/png"}, timeout=30)
                if r.status_code == 200:
                    answer = r.json()
                last = f"HTTP {r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                last = str(e)
                time.sleep(0.5)
        first_answer_s = time.monotonic() - started
        assert answer["digit"] == 7 and answer["version"] == served_versions(read_properties())[MODEL_NAME], answer
        print(f"prediction through the gateway: {answer['digit']} (confidence {answer.get('confidence')}, "
              f"version {answer['version']})")
        # The other model, through the page's own call: five digits drawn on the page's number pad.
        r = requests.post(f"{url}/api/numbers", data=(REPO / "tests" / "fixtures" / "number_40517.png").read_bytes(),
                          headers={"Content-Type": "image/png"}, timeout=30)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        number = r.json()
        assert number["text"] == "40517" and number["version"] == served_versions(read_properties())["numbers"], number
        print(f"number through the gateway: {number['text']} (confidence {number['confidence']}, "
              f"version {number['version']})")

        from PIL import Image
        import io
        buf = io.BytesIO()
        Image.new("RGB", (280, 280), "white").save(buf, format="PNG")
        r = requests.post(f"{url}/api/predict", data=buf.getvalue(), headers={"Content-Type": "image/png"}, timeout=30)
        assert r.status_code == 422 and r.json()["error"] == "no_digit", (r.status_code, r.text)
        print(f"blank page refused: HTTP {r.status_code} {r.json()['error']}")

        # Host names: the ones the container was given, and loopback; nothing else (DNS rebinding).
        r = requests.post(f"{url}/api/predict", data=seven, headers={"Content-Type": "image/png", "Host": "digits"},
                          timeout=30)
        assert r.status_code == 200 and r.json()["digit"] == 7, (r.status_code, r.text)
        r = requests.get(f"{url}/api/health", headers={"Host": "evil.example"}, timeout=10)
        assert r.status_code == 400, (r.status_code, r.text)
        memory = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()

        # TorchServe's ports are not published: only the gateway's is.
        ports = podman("port", name).stdout
        assert ports.strip() == f"{gateway_port}/tcp -> 127.0.0.1:{port}", ports

        assert podman("exec", name, "sleep", "0", check=False).returncode == 0, "no sleep for the preStop hook"
        ready = podman("exec", name, "python", "-m", "deploy.pod", "ready", check=False)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        print(f"readiness probe in the container: {ready.stdout.strip()}")
        # The liveness probe's request, as the kubelet sends it (Host: localhost).
        r = requests.get(f"{url}/api/health", headers={"Host": "localhost"}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "ok", (r.status_code, r.text)

        # A version registration through the management API inside the container, with the
        # container's own key (deploy.pod manage goes through TorchServe.manage).
        settings = model_settings(read_properties())
        register = (f"models?url=digits_2.0.mar&model_name={MODEL_NAME}&initial_workers=1&synchronous=true"
                    f"&batch_size={settings['batchSize']}&max_batch_delay={settings['maxBatchDelay']}")
        r = podman("exec", name, "python", "-m", "deploy.pod", "manage", "POST", register, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        r = podman("exec", name, "python", "-m", "deploy.pod", "manage", "GET", f"models/{MODEL_NAME}/2.0", check=False)
        assert r.returncode == 0 and '"READY"' in r.stdout, r.stdout + r.stderr
        print("version 2.0 registered inside the container and READY")

        user = podman("exec", name, "id", "-u").stdout.strip()
        assert user != "0", "the container runs as root"
        root = podman("exec", name, "awk", '$2 == "/" {print $4}', "/proc/mounts").stdout
        assert root.startswith("ro,"), f"the root filesystem is mounted {root}"
        compilers = podman("exec", name, "sh", "-c", "command -v gcc cc c++ g++ clang make", check=False).stdout.strip()
        assert not compilers, f"compilers in the image: {compilers}"
        stop_started = time.monotonic()
        podman("stop", "--time", "60", name)
        stop_s = time.monotonic() - stop_started
        assert "TorchServe clean" in logs(name), logs(name)[-2000:]
    finally:
        podman("rm", "--force", name, check=False)
    figures = {
        "machine": describe_machine(),
        "load average before (1, 5, 15 min)": ", ".join(f"{x:.2f}" for x in load_before),
        "image": tag,
        "image size": f"{size / 1e6:.0f} MB",
        ("build time (base image cached; other layers as podman's cache had them)" if base_cached else
         "build time (the base image made first from Debian's packages; other layers as podman's cache had them)"):
        f"{seconds:.0f} s",
        "time to first answer (podman run to a prediction through the gateway)": f"{first_answer_s:.1f} s",
        "stop (SIGTERM to exit, clean TorchServe stop)": f"{stop_s:.1f} s",
        "memory after these requests (podman stats)": memory,
        "container user": user,
    }
    return figures


def default_tag() -> str:
    """localhost/digits:<digits version>-numbers<numbers version>, the versions config.properties
    loads: a new network of either model is a new tag (docs/deploy.md)."""
    versions = served_versions(read_properties())
    return f"localhost/digits:{versions[MODEL_NAME]}-numbers{versions['numbers']}"


def write_figures(figures: dict[str, str]) -> None:
    """Replace the figures between MARKERS in docs/deploy.md."""
    text = REPORT.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    table = "\n| what | measured |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in figures.items())
    REPORT.write_text(text[:start] + table + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "test"])
    parser.add_argument("--tag", help="default: localhost/digits:<digits version>-numbers<numbers version>, as config.properties serves")
    args = parser.parse_args()
    args.tag = args.tag or default_tag()
    if args.command == "build":
        print(f"built {args.tag} in {build(args.tag):.0f} s")
        return
    figures = test(args.tag)
    for k, v in figures.items():
        print(f"{k}: {v}")
    write_figures(figures)
    print(f"figures written to {REPORT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
