"""One version per shipped model, everywhere it is named: the answers' "version" comes from the
archive, the bulk job's from the model file's export, feedback is stored under the version
that answered, and an image tag names both models' versions (docs/deploy.md). If they disagree, an
operator cannot tell which network answered."""
from __future__ import annotations

import re
import subprocess
import sys

import yaml

from deploy.image import default_tag
from serving.archive import MODELS, stored_version
from serving.server import read_properties, served_versions
from tests.conftest import REPO


def served() -> dict[str, str]:
    return served_versions(read_properties(REPO / "config.properties"))


def test_config_serves_the_version_each_shipped_model_file_says_it_is():
    versions = served()
    assert set(versions) == set(MODELS), versions
    for model, (_, _, model_file) in MODELS.items():
        assert versions[model] == stored_version(model_file), (model, model_file)


def test_makefile_image_and_kubernetes_tags_name_the_served_version():
    version = served()["digits"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^VERSION \?= (\S+)$", makefile, re.M).group(1) == version
    # make serve builds the numbers archive config.properties loads
    assert re.search(r"^NUMBERS_VERSION \?= (\S+)$", makefile, re.M).group(1) == served()["numbers"]
    tag = f"{version}-numbers{served()['numbers']}"  # a new network of either model is a new image
    assert default_tag() == f"localhost/digits:{tag}"
    for kustomization in ("deploy/k8s/base/kustomization.yaml", "deploy/k8s/overlays/example/kustomization.yaml"):
        images = yaml.safe_load((REPO / kustomization).read_text())["images"]
        assert [i["newTag"] for i in images] == [tag], kustomization


def test_an_archive_built_without_a_version_takes_the_model_files(tmp_path):
    done = subprocess.run([sys.executable, "-m", "serving.archive", "--model", "numbers", "--store", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [f"numbers_{stored_version(REPO / 'model' / 'numbers.pt')}.mar"]
