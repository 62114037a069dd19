#!/usr/bin/env bash
# Static checks (run by .ci/run): ruff on the whole tree, mypy on the modules of the plugin boundary.
# Usage: scripts/lint.sh [PYTHON_BIN_DIR]   (default: .venv/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${1:-.venv/bin}" && pwd)
"$bin/ruff" check .
# The checkout is the `sdmark` package whatever its folder is called: mypy sees it through a link.
link=$(mktemp -d /tmp/sdmark-lint-XXXXXX)
trap 'rm -rf "$link"' EXIT
ln -s "$PWD" "$link/sdmark"
# Widen this list as modules become clean (see [tool.mypy] in pyproject.toml for what is left).
modules=(
    sdmark.core.runtime sdmark.core.hookspecs sdmark.core.results sdmark.core.chain sdmark.core.records
    sdmark.core.errors sdmark.cli.main sdmark.plugins.watermark sdmark.plugins.watermark.hookspecs
    sdmark.plugins.watermark.methods sdmark.plugins.watermark.command sdmark.plugins.watermark.verify
    sdmark.plugins.safety sdmark.plugins.safety.hookspecs sdmark.plugins.c2pa sdmark.testing sdmark.testing.fixtures
)
(cd "$link" && MYPYPATH="$link" "$bin/mypy" --config-file "$OLDPWD/pyproject.toml" \
    --cache-dir "$OLDPWD/.mypy_cache" $(printf -- '-m %s ' "${modules[@]}"))
