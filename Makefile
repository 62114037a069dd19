# Two commands for a fresh machine: `make demo` and `make test`.
.PHONY: setup demo test wheel-check bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test: setup
	.venv/bin/python -m pytest

wheel-check: setup
	./scripts/wheel_check.sh

bench: setup
	.venv/bin/python benchmarks/overhead.py
