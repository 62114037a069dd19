"""``python -m sdmark.cli``: the same as the ``sdmark`` command."""

from sdmark.cli.main import main

main()
