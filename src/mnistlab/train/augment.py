"""Random distortions of training images, drawn on the device inside the compiled training step.

Simard et al. (2003) and Ciresan et al. (2010) took plain MLPs on MNIST below 1% and 0.4% test error by
training on images distorted afresh every epoch: small affine maps and smooth "elastic" displacement
fields. Here every image of every batch gets its own distortion, drawn from its member's counter-based
random stream (`mlp.random_bits`, keyed by member and step), so a member sees the same distortions
alone or in a stack, eager or compiled, and no distorted copy of the data set is ever stored.

The distortion is a sampling grid: for each output pixel, where to read the source image. The affine
part maps output to source coordinates; the elastic part adds a displacement field drawn on a coarse
ELASTIC_GRID x ELASTIC_GRID lattice and smoothed by bicubic upsampling (a cheap stand-in for Simard's
Gaussian-filtered noise with the same effect: neighbouring pixels move together). The source is read
bilinearly, with zeros beyond the border, as MNIST's background is: what `F.grid_sample` computes,
written out so that the compiler fuses it (`_bilinear`).
"""

import math

import torch
import torch.nn.functional as F

from mnistlab.nn.mlp import random_bits
from mnistlab.spec import Augmentation

ELASTIC_GRID = 4  # control points per side of the coarse displacement field
AFFINE_DRAWS = 5  # rotation, scale, shear, translation x and y


def strengths(augmentations: list[Augmentation | None], device: torch.device) -> torch.Tensor:
    """(M, 5) per member: rotation in radians, scale, shear, and translation and elastic amplitude in
    pixels; zeros for a member without augmentation."""
    rows = [
        [math.radians(a.rotation), a.scale, a.shear, a.translation, a.elastic] if a else [0.0] * 5
        for a in augmentations
    ]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def _uniform(keys: torch.Tensor, step: torch.Tensor, shape) -> torch.Tensor:
    """(M, *shape) floats uniform in [-1, 1): one member's stream per key, numbered by step."""
    bits = random_bits(keys, step, 0, 1, shape)
    return bits.to(torch.float32) * (2.0 / (1 << 24)) - 1.0


def distort(x: torch.Tensor, strength: torch.Tensor, keys: torch.Tensor, step, side: int, crop: int, elastic: bool):
    """x (M, B, side*side) images, each distorted afresh by its member's strengths (M, 5) and stream,
    as (M, B, window*window): only the centred window that is left after cropping `crop` pixels from
    each side is computed.

    `elastic` (bound when the step is compiled) leaves the displacement field out when no member has one.
    """
    members, rows, _ = x.shape
    window = side - 2 * crop
    pixels = window * window
    draws = AFFINE_DRAWS + (2 * ELASTIC_GRID**2 if elastic else 0)
    u = _uniform(keys, step, (rows, draws))  # (M, B, draws)
    rotation, scale, shear, shift, amplitude = (strength[:, i].view(-1, 1) for i in range(5))
    angle, zoom, skew = rotation * u[..., 0], 1.0 + scale * u[..., 1], shear * u[..., 2]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # Output pixel (x, y), centred, maps to the source point theta @ (x, y, 1): a shear, then rotation
    # and zoom (divided: a zoom of 1.1 reads a window 10% smaller), then a shift. A matmul, not
    # broadcast arithmetic: the compiler would otherwise recompute each image's random draws, sines
    # and cosines at every one of its pixels (2.8 ms instead of ~0.5 for 128 images on one CPU).
    theta = torch.stack(
        [
            torch.stack([cos, cos * skew - sin, shift * u[..., 3]], -1),
            torch.stack([sin, sin * skew + cos, shift * u[..., 4]], -1),
        ],
        -2,
    )  # (M, B, 2, 3)
    source = theta @ _centred_grid(window, x.device) + (side - 1) / 2  # (M, B, 2, pixels), in pixels
    if elastic:
        basis = _bicubic_basis(side, x.device)[crop : side - crop]  # (window, ELASTIC_GRID)
        coarse = u[..., AFFINE_DRAWS:].reshape(members, rows, 2, ELASTIC_GRID, ELASTIC_GRID)
        field = (basis @ coarse @ basis.T).reshape(members, rows, 2, pixels)  # smooth, in [-1, 1]
        source = source + amplitude.view(-1, 1, 1, 1) * field
    return _bilinear(x, source[:, :, 0], source[:, :, 1], side)


def _centred_grid(side: int, device) -> torch.Tensor:
    """(3, side*side): each pixel's x and y from the image's centre, and a 1, row by row."""
    offsets = torch.arange(side, device=device, dtype=torch.float32) - (side - 1) / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    return torch.stack([x.flatten(), y.flatten(), torch.ones(side * side, device=device)])


def _bicubic_basis(side: int, device) -> torch.Tensor:
    """(side, ELASTIC_GRID): bicubic upsampling of a coarse lattice along one axis, as a matrix, so that
    B @ coarse @ B.T is `F.interpolate(coarse, mode="bicubic", align_corners=True)`, as two small matmuls."""
    unit = torch.eye(ELASTIC_GRID, device=device).view(ELASTIC_GRID, 1, ELASTIC_GRID, 1)
    return F.interpolate(unit, size=(side, 1), mode="bicubic", align_corners=True)[:, 0, :, 0].T


def _bilinear(images: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, side: int) -> torch.Tensor:
    """images (M, B, side*side) read bilinearly at source points (M, B, side*side), zero outside.

    What `F.grid_sample` does, written as four masked gathers that the compiler fuses into one loop
    (the library's kernel took 2.3 ms for 128 images on one CPU). Indices stay within the image and a
    mask zeroes the reads outside it: a zero-padded copy would cost an integer division per read.
    """
    left, top = torch.floor(src_x), torch.floor(src_y)
    frac_x, frac_y = src_x - left, src_y - top

    def read(row, col):
        inside = (row >= 0) & (row < side) & (col >= 0) & (col < side)
        index = row.clamp(0, side - 1).to(torch.int64) * side + col.clamp(0, side - 1).to(torch.int64)
        return torch.gather(images, 2, index) * inside

    top_row = read(top, left) * (1 - frac_x) + read(top, left + 1) * frac_x
    bottom_row = read(top + 1, left) * (1 - frac_x) + read(top + 1, left + 1) * frac_x
    return top_row * (1 - frac_y) + bottom_row * frac_y
