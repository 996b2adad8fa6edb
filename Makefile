# The README's commands. Every target bootstraps the venv and the colcon build first (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
IN_ENV := . .venv/bin/activate && . install/setup.sh &&
PYTEST_ARGS ?= test

.PHONY: env test lint demo bench-speed clean

env:
	@tools/bootstrap.sh

test: env
	@$(IN_ENV) pytest $(PYTEST_ARGS)

demo: env
	@$(IN_ENV) python -m bac_ros.nodes.demo

bench-speed: env
	@$(IN_ENV) python bench/cache_speed.py

lint: env
	@$(IN_ENV) ruff check bac_ros test bench scripts tools

clean:
	rm -rf build install log .venv
