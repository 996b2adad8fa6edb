# The README's commands. Every target bootstraps the venv and the colcon build first (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
IN_ENV := . .venv/bin/activate && . install/setup.sh &&
PYTEST_ARGS ?= test
BENCH_ARGS ?=
DEMO_ARGS ?=
SOAK_MINUTES ?= 10

.PHONY: env test lint demo bench bench-speed soak clean

env:
	@tools/bootstrap.sh

test: env
	@$(IN_ENV) pytest $(PYTEST_ARGS)

demo: env
	@$(IN_ENV) python -m bac_ros.nodes.demo $(DEMO_ARGS)

bench: env
	@$(IN_ENV) python bench/run_bench.py $(BENCH_ARGS)

bench-speed: env
	@$(IN_ENV) python bench/cache_speed.py

soak: env
	@$(IN_ENV) python bench/soak.py --minutes $(SOAK_MINUTES) --json docs/soak.json

lint: env
	@$(IN_ENV) ruff check bac_ros test bench scripts tools

clean:
	rm -rf build install log .venv
