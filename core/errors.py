"""Errors that are shown to users as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message``: enough of a library's error to act on, in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class SdmarkError(Exception):
    """An error whose message is meant for the user: it says what went wrong and how to fix it."""

    exit_code: int = 2


class ChainError(SdmarkError):
    """The stage chain is invalid (unknown stage or option, wrong type, impossible phase)."""


class PluginError(SdmarkError):
    """A plugin could not be loaded or registered; the message names it."""


class ModelLoadError(SdmarkError):
    """Model weights could not be loaded; the message names the id or path that was tried."""


class ImageReadError(SdmarkError):
    """One input image could not be read; batches report it and go on."""

    exit_code = 1


class ImageWriteError(SdmarkError):
    """One output could not be written (it exists, it is an input, or the disk refused)."""

    exit_code = 1


class StageError(SdmarkError):
    """A stage failed on one image; the image is not written and the batch goes on."""

    exit_code = 1
