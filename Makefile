# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# MONAI Label lives in its own venv: it pins numpy 1.26 and pydicom 2. It runs on the main venv's PyTorch
# and ITK builds, hard-linked in (mfassl_medical/label_venv.py) so that their ~6.7 GB are not stored twice.
LABEL_VENV  ?= .venv-label
LABEL_STAMP := $(LABEL_VENV)/.installed-stamp
LABEL_PORT  ?= 8000
LABEL_PKGS  := torch==2.14.1 torchvision==0.29.1 monailabel==0.8.5 "pydicom>=2.4.4,<3" "pynetdicom>=2.0.2,<3" "dicomweb-client>=0.59.1,<0.60"

.PHONY: demo test test-core label label-venv bench clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test,faces,tracking]"
	touch $(STAMP)

$(LABEL_STAMP): $(STAMP)
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(BIN)/python -m mfassl_medical.label_venv $(VENV) $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install --disable-pip-version-check -q $(LABEL_PKGS)
	touch $(LABEL_STAMP)

label-venv: $(LABEL_STAMP)

# the main job: the BraTS pretraining bundle on the built-in demo data, ending with a report
demo: $(STAMP)
	$(BIN)/python -m mfassl_medical demo

# one test process per core (pytest-xdist), each test file kept in one process (its module fixtures built once),
# the files handed out in the order tests/conftest.py gives them
PYTEST_ARGS ?= -q -n auto --dist loadfile --no-loadscope-reorder

# the whole suite, MONAI Label's integration test included
test: $(STAMP) $(LABEL_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the suite without the MONAI Label venv (its integration test is skipped and says why)
test-core: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# serve the segmentation bundle with MONAI Label on 127.0.0.1:$(LABEL_PORT)
label: $(STAMP) $(LABEL_STAMP)
	$(BIN)/python -m mfassl_medical.label_app serve --label-venv $(LABEL_VENV) --workdir outputs/label --port $(LABEL_PORT)

bench: $(STAMP)
	$(BIN)/python bench/mfa_overhead.py
	$(BIN)/python bench/step_time.py

clean-demo:
	rm -rf outputs/demo
