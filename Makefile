# diffdrr_ros developer entry points. Everything runs from the venv made by scripts/setup.sh.
#   make setup   create/update the venv (VENV=..., default .venv)
#   make lint    ruff
#   make test    setup (with colcon), ruff, pytest
#   make demo    setup, then `diffdrr-ros demo`

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV ?= $(REPO)/.venv
PYTHON := $(VENV)/bin/python
export VENV

# DDS traffic stays on loopback, for every command started from here.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# One DDS domain per make run (1..100, from the PID of the shell that computes it), so that
# two runs on one machine cannot hear each other. `make test RUN_ROS_DOMAIN_ID=42` overrides.
ifeq ($(origin RUN_ROS_DOMAIN_ID),undefined)
RUN_ROS_DOMAIN_ID := $(shell echo $$(( $$$$ % 100 + 1 )))
endif
# `make demo` keeps a ROS_DOMAIN_ID already set in the environment (to watch it from rviz2).
DEMO_ROS_DOMAIN_ID := $(or $(ROS_DOMAIN_ID),$(RUN_ROS_DOMAIN_ID))

PYTEST_ARGS ?=

.PHONY: setup lint test demo

setup:
	bash $(REPO)/scripts/setup.sh

lint: setup
	cd $(REPO) && $(VENV)/bin/ruff check .

test:
	bash $(REPO)/scripts/setup.sh --with-colcon
	cd $(REPO) && $(VENV)/bin/ruff check .
	@echo "[test] ROS_DOMAIN_ID=$(RUN_ROS_DOMAIN_ID) ROS_AUTOMATIC_DISCOVERY_RANGE=$$ROS_AUTOMATIC_DISCOVERY_RANGE"
	cd $(REPO) && ROS_DOMAIN_ID=$(RUN_ROS_DOMAIN_ID) DIFFDRR_ROS_TEST_DOMAIN_ID=$(RUN_ROS_DOMAIN_ID) \
		$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: setup
	@echo "[demo] ROS_DOMAIN_ID=$(DEMO_ROS_DOMAIN_ID) ROS_AUTOMATIC_DISCOVERY_RANGE=$$ROS_AUTOMATIC_DISCOVERY_RANGE"
	ROS_DOMAIN_ID=$(DEMO_ROS_DOMAIN_ID) $(VENV)/bin/diffdrr-ros demo
