"""``--executor`` and ``--ray-address``: where verify, process and generate do their work."""

from __future__ import annotations

from typing import Any, Callable

import click

from sdmark.core.executor import EXECUTORS

F = Callable[..., Any]


def executor_options(func: F) -> F:
    """Add ``--executor local|ray`` and ``--ray-address`` (passed as ``executor``, ``ray_address``)."""
    func = click.option("--ray-address", metavar="auto|ray://HOST:PORT", envvar="RAY_ADDRESS", show_envvar=True,
                        help="With --executor ray: join this cluster ('auto': the one running here) "
                             "instead of starting a local one.")(func)
    func = click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                        envvar="SDMARK_EXECUTOR", show_envvar=True,
                        help="Where the work runs: this machine (-j processes) or a Ray cluster "
                             "(-j actors; pip install 'sdmark[ray]').")(func)
    return func
