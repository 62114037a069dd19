"""The sdmark core: the plugin runtime, hooks, stages and chains, the generation runner, image I/O.

Library users import from here::

    from sdmark.core import Chain, GenerationSettings, Runtime, generate, process_images
"""

from sdmark.core.errors import (
    ChainError,
    ImageReadError,
    ImageWriteError,
    ModelLoadError,
    PluginError,
    SdmarkError,
    StageError,
)
from sdmark.core.generate import GenerationSettings, generate
from sdmark.core.output import ItemResult, OutputOptions
from sdmark.core.runtime import Runtime, hookimpl
from sdmark.core.process import process_images
from sdmark.core.records import ProvenanceRecord
from sdmark.core.chain import Chain, parse_chain
from sdmark.core.stages import DenoiseBatch, ImageItem, Option, OptionGroup, RunContext, Stage, StageOptions, option

__all__ = [
    "Chain",
    "ChainError",
    "GenerationSettings",
    "ItemResult",
    "OutputOptions",
    "DenoiseBatch",
    "ImageItem",
    "ImageReadError",
    "ImageWriteError",
    "ModelLoadError",
    "Option",
    "OptionGroup",
    "PluginError",
    "ProvenanceRecord",
    "RunContext",
    "Runtime",
    "SdmarkError",
    "Stage",
    "StageOptions",
    "StageError",
    "generate",
    "hookimpl",
    "option",
    "parse_chain",
    "process_images",
]
