"""pytest fixtures for plugin authors (and sdmark's own tests): a runtime per test.

Import them into your ``conftest.py``: ``from sdmark.testing.fixtures import register_plugin, runtime``.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from sdmark.core.runtime import Runtime


@pytest.fixture
def runtime() -> Runtime:
    """A Runtime of its own for one test, loaded from the installed plugins (and the environment's
    ``SDMARK_LOAD_PLUGINS`` / ``SDMARK_DISABLE_PLUGINS``)."""
    return Runtime.load()


@pytest.fixture
def register_plugin(runtime: Runtime) -> Callable[..., Any]:
    """``register_plugin(plugin, name=None)``: add a plugin object to this test's runtime (its
    registries are rebuilt on next use); returns the plugin."""

    def register(plugin: Any, name: str | None = None) -> Any:
        return runtime.register(plugin, name=name)

    return register
