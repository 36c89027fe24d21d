# rvg_ros: the two commands of the README are `make demo` and `make test`.
#
#   make setup   apt packages, .venv (Python 3.11), pinned pip packages, ROS interfaces.
#                Idempotent: scripts/setup.sh skips every step that is done (stamps in .venv/),
#                so it is cheap to run before every demo/test.
#   make demo    setup, then the end-to-end demo (node + simulated camera, results in out/demo/).
#   make test    setup, then the whole pytest suite.
#   make lint    ruff.
#   make clean   build trees, caches and out/ (keeps the working .venv); `make clean-venv`
#                removes the venv too. To rebuild the interfaces only:
#                rm .venv/.stamp-interfaces-* && make setup

SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python

# Every test and demo process talks DDS over loopback only, and discovers quickly (see
# config/fastdds_localhost.xml). Tests pick their own ROS_DOMAIN_ID per process/run.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_localhost.xml

# -p no:cacheprovider: no .pytest_cache in the checkout (CI clones are read-mostly).
# --timeout: a hung test (DDS discovery, a stuck subprocess) fails alone instead of eating the
#            CI budget; slow tests can raise it with @pytest.mark.timeout(N).
PYTEST_FLAGS ?= -q -p no:cacheprovider --timeout=300 -ra

.PHONY: setup demo test lint clean clean-venv

setup:
	@VENV="$(VENV)" bash scripts/setup.sh

demo: setup
	$(VENV)/bin/rvg-ros demo

test: setup
	$(PYTHON) -m pytest test $(PYTEST_FLAGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build install log out .pytest_cache .ruff_cache .hypothesis $(VENV)/build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

clean-venv: clean
	rm -rf $(VENV)
