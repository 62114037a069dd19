#!/usr/bin/env bash
# Build a wheel and check that a plain (non-editable) install imports as `sdmark.*` only.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . 2>/dev/null \
    || .venv/bin/python -m pip wheel -q --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/sdmark-*.whl)
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names if not n.startswith("sdmark-")}
assert tops == {"sdmark"}, f"wheel installs unexpected top-level names: {sorted(tops)}"
for required in ("sdmark/core/plugins.py", "sdmark/cli/main.py", "sdmark/plugins/watermark/__init__.py",
                 "sdmark/serve/app.py", "sdmark/serve/templates/index.html", "sdmark/serve/static/app.js"):
    assert required in names, f"{required} missing from the wheel"
assert not any(n.startswith("sdmark/tests/") for n in names), "tests leaked into the wheel"
print(f"wheel-check: {len(names)} files, top level {sorted(tops)}")
PY
# Install it into a bare folder that shadows the editable install, and import from outside the tree.
.venv/bin/python -m pip install -q --no-deps --target "$work/site" "$wheel"
root=$(pwd)
(cd "$work" && PYTHONPATH="$work/site" "$root/.venv/bin/python" -c "
import sdmark, sdmark.core, sdmark.cli.main, sdmark.plugins.watermark
assert sdmark.__file__.startswith('$work/site'), sdmark.__file__
print('wheel-check: imports from', sdmark.__file__)
")
