#!/usr/bin/env bash
# Create .venv and install sdmark with everything its tests and demo need, offline-safe:
# torch==2.13.0 (the CPU build) goes in first so pip never resolves a multi-GB CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${SDMARK_TORCH:-torch==2.13.0}

if ! command -v chromium >/dev/null 2>&1; then
    # Debian's Chromium for the `sdmark serve` browser test (Playwright drives it; its own browser
    # download cannot work offline).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
            || echo "setup: could not install chromium; the serve browser test will fail" >&2
    else
        echo "setup: chromium not found (apt-get install chromium); the serve browser test will fail" >&2
    fi
fi

if ! command -v tesseract >/dev/null 2>&1; then
    # OCR for the caption legibility tests (Debian package); optional outside CI.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq tesseract-ocr >/dev/null) \
            || echo "setup: could not install tesseract-ocr; caption OCR tests will be skipped" >&2
    else
        echo "setup: tesseract not found (apt-get install tesseract-ocr); caption OCR tests will be skipped" >&2
    fi
fi

# PostgreSQL server binaries for the shared-registry tests, which start their own server in a
# temp folder (initdb/pg_ctl from /usr/lib/postgresql/*/bin, as the package's postgres user when root).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) \
            || { echo "setup: could not install postgresql (needed by tests/test_registry_postgres.py)" >&2; exit 1; }
    else
        echo "setup: PostgreSQL not found (apt-get install postgresql); tests/test_registry_postgres.py will fail" >&2
    fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip
$PIP install -q "$TORCH_SPEC"
$PIP install -q -e ".[safety,c2pa,test,ray,postgres]"
# spandrel declares torchvision, whose PyPI build replaces the CPU torch: install it without deps.
$PIP install -q einops
$PIP install -q --no-deps "spandrel>=0.4"
# `sdmark serve` and its tests (Starlette's test client, Playwright driving the chromium above).
$PIP install -q -e ".[serve-test]"
# ruff and mypy for the static checks .ci/run makes.
$PIP install -q -e ".[lint]"
# Both opencv-python (invisible-watermark) and opencv-python-headless (nudenet) provide cv2.
.venv/bin/python -c "import cv2, torch, diffusers, imwatermark, ray.data, psycopg, sdmark.core; print('setup: ok, torch', torch.__version__, 'cv2', cv2.__version__)"
