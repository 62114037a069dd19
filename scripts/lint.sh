#!/usr/bin/env bash
# Static checks (run by .ci/run): ruff and mypy on the whole package.
# Usage: scripts/lint.sh [PYTHON_BIN_DIR]   (default: .venv/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${1:-.venv/bin}" && pwd)
"$bin/ruff" check .
# The checkout is the `sdmark` package whatever its folder is called: mypy sees it through a link.
link=$(mktemp -d /tmp/sdmark-lint-XXXXXX)
trap 'rm -rf "$link"' EXIT
ln -s "$PWD" "$link/sdmark"
# Every package of the tree; modules with known findings are listed in pyproject.toml ([tool.mypy] overrides).
(cd "$link" && MYPYPATH="$link" "$bin/mypy" --config-file "$OLDPWD/pyproject.toml" --cache-dir "$OLDPWD/.mypy_cache" \
    -p sdmark.core -p sdmark.cli -p sdmark.plugins -p sdmark.serve -p sdmark.testing)
