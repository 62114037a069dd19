#!/usr/bin/env bash
# Build the wheel and prove that a plain install works:
#  1. it installs `sdmark.*` only (no tests, no stray top-level names) and imports from outside the tree;
#  2. in a fresh venv holding the wheel and only its *base* dependencies (no extras), `sdmark process`
#     runs the default chain (safety, watermark) and `sdmark verify` finds the mark; exactly one `cv2`
#     is installed and it works.
# Offline and fast: the dependencies are linked from .venv (set SDMARK_VENV for another), never downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SDMARK_VENV:-.venv}
py="$(cd "$venv" && pwd)/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . 2>/dev/null \
    || "$py" -m pip wheel -q --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/sdmark-*.whl)
"$py" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names if not n.startswith("sdmark-")}
assert tops == {"sdmark"}, f"wheel installs unexpected top-level names: {sorted(tops)}"
for required in ("sdmark/core/runtime.py", "sdmark/cli/main.py", "sdmark/plugins/watermark/__init__.py",
                 "sdmark/serve/app.py", "sdmark/serve/templates/index.html", "sdmark/serve/static/app.js"):
    assert required in names, f"{required} missing from the wheel"
assert not any(n.startswith("sdmark/tests/") for n in names), "tests leaked into the wheel"
assert "sdmark/testing/__init__.py" in names and "sdmark/testing/fixtures.py" in names, "sdmark.testing missing"
for scaffolding in ("sdmark/tiny.py", "sdmark/tiny_upscalers.py", "sdmark/demo.py", "sdmark/scripts/demo.py"):
    assert scaffolding not in names, f"{scaffolding}: demo and test scaffolding must not ship at the package root"
print(f"wheel-check: {len(names)} files, top level {sorted(tops)}")
PY
# Install it into a bare folder that shadows the editable install, and import from outside the tree.
"$py" -m pip install -q --no-deps --target "$work/site" "$wheel"
(cd "$work" && PYTHONPATH="$work/site" "$py" -c "
import sdmark, sdmark.core, sdmark.cli.main, sdmark.plugins.watermark
assert sdmark.__file__.startswith('$work/site'), sdmark.__file__
print('wheel-check: imports from', sdmark.__file__)
")

# 2. A fresh venv with the wheel and its base dependencies only (linked from $venv, offline).
"$py" -m venv "$work/fresh"
fresh="$work/fresh/bin/python"
# The venv's bundled setuptools would shadow the one the dependencies ask for (torch wants a newer one).
"$fresh" -m pip uninstall -q -y setuptools 2>/dev/null || true
"$fresh" -m pip install -q --no-deps --no-index "$wheel"
"$py" - "$wheel" "$work/deps" <<'PY'
"""Link into DEPS the installed distributions the wheel's base requirements need, transitively."""
import sys, zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

wheel, deps = sys.argv[1], Path(sys.argv[2])
deps.mkdir()
meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
requires = [line.split(":", 1)[1].strip() for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
            if line.startswith("Requires-Dist:")]
installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
todo, done = [(r, "") for r in requires], {}
while todo:
    text, extra = todo.pop()
    req = Requirement(text)
    if req.marker and not req.marker.evaluate({"extra": extra}):
        continue
    name = canonicalize_name(req.name)
    dist = installed.get(name)
    if dist is None:
        sys.exit(f"wheel-check: {req} is required but not installed in the build venv")
    if not req.specifier.contains(dist.version, prereleases=True):
        sys.exit(f"wheel-check: {req} is required but {name} {dist.version} is installed")
    wanted = set(req.extras)
    if name in done and wanted <= done[name]:
        continue
    done.setdefault(name, set()).update(wanted)
    todo += [(r, e) for r in (dist.requires or []) for e in ("", *sorted(wanted))]
owners = {}
for name in sorted(done):
    dist = installed[name]
    base = Path(dist.locate_file(""))
    for top in sorted({Path(f).parts[0] for f in dist.files or [] if Path(f).parts[0] != ".."}):
        if top.endswith(".pth") or top == "__pycache__":
            continue
        owners.setdefault(top, []).append(dist)
        link = deps / top
        if not link.exists():
            link.symlink_to(base / top)
def intact(dist, top):
    """Whether every file of ``top`` that ``dist`` installed is, byte for byte, the one it installed."""
    import base64, hashlib
    for file in dist.files or []:
        if Path(file).parts[0] != top or not file.hash:
            continue
        digest = hashlib.new(file.hash.mode, Path(dist.locate_file(file)).read_bytes()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != file.hash.value:
            return False
    return True


for top, dists in owners.items():
    if len(dists) > 1:
        versions = {d.version for d in dists}
        names = ", ".join(f"{d.metadata['Name']} {d.version}" for d in dists)
        assert len(versions) == 1, f"wheel-check: {top} comes from {names}: different versions overwrite each other"
        whole = [d.metadata["Name"] for d in dists if intact(d, top)]
        assert whole, f"wheel-check: {top} is a mix of {names}: no one distribution's files are intact"
        print(f"wheel-check: one {top}: {names} share it; every file is {whole[0]}'s")
print(f"wheel-check: {len(done)} base dependencies, no extras")
PY
site=$("$fresh" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$work/deps" > "$site/base-deps.pth"
"$fresh" -m pip check
(cd "$work" && "$fresh" - <<'PY'
import importlib.metadata as md, cv2, numpy as np
versions = {md.version(name) for name in ("opencv-python", "opencv-python-headless")}
assert len(versions) == 1 and cv2.__version__ in next(iter(versions)), (versions, cv2.__version__)
assert cv2.cvtColor(np.zeros((4, 4, 3), np.uint8), cv2.COLOR_BGR2YUV).shape == (4, 4, 3)
for extra in ("c2pa", "spandrel"):
    try:
        __import__(extra)
    except ImportError:
        continue
    raise SystemExit(f"wheel-check: {extra} is importable: the fresh venv is not base-only")
import sdmark
print("wheel-check: cv2", cv2.__version__, "from", cv2.__file__, "; sdmark from", sdmark.__file__)
PY
)
# A real photo (scikit-image is a test tool: the build venv has it, the fresh one need not).
(cd "$work" && "$py" -c "from PIL import Image; from skimage import data; Image.fromarray(data.coffee()).save('coffee.png')")
(cd "$work" && SDMARK_DEVICE=cpu "$work/fresh/bin/sdmark" process coffee.png -o out --no-progress > process.txt)
cat "$work/process.txt"
grep -q "safety: ok; watermark: sdmark id=" "$work/process.txt"
(cd "$work" && "$work/fresh/bin/sdmark" verify out/coffee.png)
echo "wheel-check: the base install runs the default chain"
