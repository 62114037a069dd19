"""sdmark: Stable Diffusion generation with safety checks, invisible watermarks and provenance.

The repository root is the ``sdmark`` package; the public API lives in :mod:`sdmark.core`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sdmark")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
