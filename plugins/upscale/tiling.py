"""Running an image-to-image network tile by tile, so large images fit in memory.

Each tile is cut with ``overlap`` pixels of real context on every side (clamped at the image
border), upscaled, and only its core is pasted into the output. A convolutional network whose
receptive field fits in the overlap therefore gives the same pixels tiled and untiled; larger
receptive fields differ only slightly at tile seams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    import torch


def tile_boxes(size: int, tile: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the tile cores along one axis of ``size`` pixels."""
    for start in range(0, size, tile):
        yield start, min(start + tile, size)


def run_tiled(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
) -> torch.Tensor:
    """Apply ``network`` (an x``scale`` upscaler) to ``image`` (1, C, H, W), tile by tile.

    ``tile`` is the core size of a tile in input pixels (0 or >= the image: one pass). The output
    is assembled on the CPU in float32; each tile runs on the device and dtype of ``image``.
    """
    import torch

    _, channels, height, width = image.shape
    if tile <= 0 or (tile >= height and tile >= width):
        return network(image).float().cpu()
    result: torch.Tensor | None = None
    for top, bottom in tile_boxes(height, tile):
        for left, right in tile_boxes(width, tile):
            y0, y1 = max(top - overlap, 0), min(bottom + overlap, height)
            x0, x1 = max(left - overlap, 0), min(right + overlap, width)
            out = network(image[:, :, y0:y1, x0:x1]).float().cpu()
            if result is None:
                result = torch.empty((1, out.shape[1], height * scale, width * scale), dtype=torch.float32)
            core = out[:, :, (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale]
            result[:, :, top * scale : bottom * scale, left * scale : right * scale] = core
    assert result is not None
    return result
