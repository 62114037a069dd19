"""The ``sdmark`` command line: a thin click layer over :mod:`sdmark.core`."""
