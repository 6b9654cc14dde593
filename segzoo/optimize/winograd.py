"""Winograd F(2x2, 3x3) for dense stride-1 3x3 convolutions on channels-last maps, in plain PyTorch.

A 3x3 convolution computes each 2x2 output tile from a 4x4 input tile with 36 multiplies per channel pair;
Winograd's minimal filtering algorithm (Lavin & Gray, 2016) needs 16: the input tiles and the weights go
through fixed linear transforms (``B^T d B`` and ``G g G^T``, entries 0, +-1 and +-1/2), the 16 transformed
positions are 16 independent matrix products over the channels, and a last fixed transform (``A^T m A``)
gives the outputs. The arithmetic is the same linear map, 2.25x fewer multiply-adds in the products, with
float32 rounding of the same order as a direct convolution. A dilated convolution is ``d * d`` undilated
convolutions on the sub-grids of pixels ``d`` apart (space to batch), so it runs the same way.

All maps are channels-last: every transform reads and writes whole channel vectors, and the products are
plain batched GEMMs on ``(tiles, channels)`` matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# F(2x2, 3x3)'s matrices: G (weights), B^T (4x4 input tiles, stride 2), A^T (2x2 outputs). F(4x4, 3x3) would save
# more multiplies, but its transforms (entries up to 8 and 1/24) cost float32 accuracy: 8e-6 relative error per
# 256- to 2048-channel layer against 2e-7 to 6e-7 for F(2x2) and the direct convolution, too much for the fast
# path's 1e-5 bound over a whole network.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_A_T = ((1, 1, 1, 0), (0, 1, -1, -1))
_TILE, _OUT = 4, 2
# Tiles (float elements) transformed in one pass, a band of tile rows at a time: the tiles of a 2048-channel
# 64x64 map would take 4x its 32 MB, twice over (before and after the transform).
TILE_BUDGET = 1 << 22
# A^T's column 1 is all ones: a constant added to the products at tile position (1, 1) adds to every output
_BIAS_POSITION = _TILE + 1


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of each (out, in) 3x3 kernel as a ``(16, in, out)`` tensor (computed in float64)."""
    g = torch.tensor(_G, dtype=torch.float64)
    transformed = torch.einsum("pa,ocab,qb->pqco", g, weight.double(), g)
    return transformed.reshape(-1, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _kron(rows: tuple) -> torch.Tensor:
    matrix = torch.tensor(rows, dtype=torch.float64)
    return torch.kron(matrix, matrix)


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=dilation, dilation=dilation)`` (then ReLU if ``relu``) for a 3x3 ``w`` given
    as ``transform_weight(w)``; ``x`` is ``(N, C, H, W)``, the result is channels-last.

    Output pixel ``y = r + d * (m * a + p)`` (sub-grid ``r < d``, tile ``a``, position ``p < m``) reads input
    rows ``y + d * (i - 1)``, ``i < 3``: with ``d`` zero rows on top, tile ``a``'s ``m + 2`` input rows on
    sub-grid ``r`` are ``r + d * (m * a + i)``, a strided view of the padded map; columns likewise.
    """
    n, channels, height, width = x.shape
    t, m, d = _TILE, _OUT, dilation
    rows, cols = -(-height // (m * d)), -(-width // (m * d))  # tiles per sub-grid
    padded_h, padded_w = m * d * rows + 2 * d, m * d * cols + 2 * d
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, d, padded_w - width - d, d, padded_h - height - d)).contiguous()
    row, col = padded_w * channels, channels
    input_transform, output_transform = _transforms(x)
    out = x.new_empty(n, rows, m, d, cols, m, d, weight.shape[2])
    step = max(1, TILE_BUDGET // (t * t * n * d * d * cols * channels))  # tile rows per pass
    for start in range(0, rows, step):
        count = min(step, rows - start)
        tiles = padded.as_strided(
            (t, t, n, d, count, d, cols, channels),
            (d * row, d * col, padded_h * row, row, m * d * row, col, m * d * col, 1),
            padded.storage_offset() + start * m * d * row,
        ).contiguous()
        transformed = torch.mm(input_transform, tiles.view(t * t, -1)).view(t * t, -1, channels)
        del tiles
        products = torch.bmm(transformed, weight)
        del transformed
        if bias is not None:
            products[_BIAS_POSITION] += bias
        outputs = torch.mm(output_transform, products.view(t * t, -1))
        # (p, q, n, r, a, s, b, K) -> (n, a, p, r, b, q, s, K): rows a * m * d + p * d + r, columns likewise
        outputs = outputs.view(m, m, n, d, count, d, cols, -1).permute(2, 4, 0, 3, 6, 1, 5, 7)
        chunk = out[:, start : start + count]
        torch.clamp(outputs, min=0, out=chunk) if relu else chunk.copy_(outputs)
    out = out.view(n, m * d * rows, m * d * cols, -1)
    if out.shape[1] != height or out.shape[2] != width:
        out = out[:, :height, :width].contiguous()
    return out.permute(0, 3, 1, 2)


_TRANSFORMS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _transforms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``B^T (x) B^T`` and ``A^T (x) A^T`` (16x16, 4x16): the tile transforms on row-major flattened tiles."""
    key = (x.dtype, x.device)
    if key not in _TRANSFORMS:
        _TRANSFORMS[key] = (_kron(_B_T).to(x), _kron(_A_T).to(x))
    return _TRANSFORMS[key]
