"""``--executor`` and ``--ray-address``: where verify, process and generate do their work."""

from __future__ import annotations

from typing import Any, Callable

import click

from sdmark.core.executor import EXECUTORS

F = Callable[..., Any]


def executor_options(func: F) -> F:
    """Add ``--executor local|ray`` and ``--ray-address`` (passed as ``executor``, ``ray_address``)."""
    # No envvar=RAY_ADDRESS here: Ray reads it itself, and a Ray user's environment must not break a local run.
    func = click.option("--ray-address", metavar="auto|ray://HOST:PORT",
                        help="With --executor ray: join this cluster ('auto': the one running here; default: "
                             "RAY_ADDRESS if set, else a new local cluster for this run).")(func)
    func = click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                        envvar="SDMARK_EXECUTOR", show_envvar=True,
                        help="Where the work runs: this machine (-j processes) or a Ray cluster "
                             "(-j actors; pip install 'sdmark[ray]').")(func)
    return func
