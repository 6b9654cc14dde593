"""EurNet backbone (Xu et al., "EurNet: Efficient Multi-Range Relational Modeling of Spatial
Multi-Relational Data", 2022), as its ADE20K UperNet models build it.

Each stage turns its patches into a multi-relational graph and runs gated relational message
passing (GRMP) over it. The graph has fixed degree everywhere, so segzoo computes it densely:

* short-range edges (one relation per direction: from the patch above, below, left, right) are
  shifted views of the message grid, zero where the neighbour falls off the grid;
* medium-range edges (stages 1-3) are the 12 nearest neighbours of each patch by feature distance
  within its dilation class and window: an index tensor ``(N, 12)``, aggregated with a mean
  ``embedding_bag``;
* the long-range edge brings every patch the message of a virtual node, the mean patch message;
* three chained depthwise "context" convolutions add one relation each.

Module and parameter names follow the published checkpoints so that they load without renaming.
Every norm is ``LayerNorm(eps=1e-5)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.features import FeatureExtractor, stage_features
from segzoo.layers import DropPath


@dataclass(frozen=True)
class EurNetArch:
    """Widths and depths of the four stages."""

    hidden_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


EURNET_ARCHS: dict[str, EurNetArch] = {
    "t": EurNetArch((96, 192, 384, 768), (2, 2, 6, 2)),
    "s": EurNetArch((96, 192, 384, 768), (2, 2, 18, 2)),
    "b": EurNetArch((128, 256, 512, 1024), (2, 2, 18, 2)),
}

# Added to a kNN distance to rank a pair behind every real candidate: self pairs, pairs outside a
# shared window and dilation class, the virtual node and grid neighbours.
EXCLUDED = 1e5
NUM_SHORT_RELATIONS = 4
MEDIUM_STAGES = (1, 2, 3)  # the stages with kNN edges; the last one bounds the input size


class FFN(nn.Module):
    """Linear, GELU, linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping 4x4 patches (input zero-padded right/bottom to a multiple of 4), then LayerNorm;
    channels-last output."""

    def __init__(self, dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2x2 neighbourhoods concatenated (odd sizes zero-padded), LayerNorm, linear projection."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.downsample = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), out_dim)``."""
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.downsample(self.norm(x))


class VirtualNode(nn.Module):
    """The learned feature of the virtual node each stage prepends to its patches."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.virtual_node_embed = nn.Parameter(torch.zeros(1, dim))


def relative_position_term(dim: int, rows: int, cols: int, dilation: int, device: torch.device) -> torch.Tensor:
    """``(rows*cols, rows*cols)`` float32 term added to the kNN distance of two patches of one class.

    Minus twice the dot product of the 2-D sine-cosine embeddings of the patches' positions (the
    class's grid, ``dilation`` apart) over ``dim``: -1 for a patch and itself. Computed in float64
    and rounded to float32 as upstream does.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def axis(n: int) -> torch.Tensor:  # sum_k cos(omega_k * (p_i - p_j)) for p = dilation * index
        pos = torch.arange(n, dtype=torch.float64) * dilation
        return torch.cos((pos[:, None] - pos[None, :])[..., None] * omega).sum(-1)

    dot = axis(rows)[:, None, :, None] + axis(cols)[None, :, None, :]
    return (-(2.0 * dot / dim).to(torch.float32)).reshape(rows * cols, rows * cols).to(device)


@dataclass(frozen=True)
class ClassBlock:
    """The patches of one window and one dilation class, the only candidates of each other."""

    rows: slice
    cols: slice
    members: torch.Tensor  # (m,) patch indices, row-major
    # (m, m) added to their feature distances: the relative-position term, and EXCLUDED on the diagonal (the
    # patch itself, about EXCLUDED - 1, ranks behind every candidate and ahead of every excluded pair however
    # that sum is rounded)
    offset: torch.Tensor
    short: bool  # fewer than k - 1 others: the patches are completed from the ties (a TieChunk)


@dataclass(frozen=True)
class TieChunk:
    """Patches short of candidates, ranked over whole distance rows ``(len(queries), 1 + H*W)`` at once.

    ``source`` is the block whose distances fill their rows from its member row ``start`` (None for
    patches in no window); ``excluded`` are the (row, column) pairs ranked behind with one more
    :data:`EXCLUDED`: the virtual node, the 8 grid neighbours and, outside any window, the patch itself.
    """

    source: int | None
    start: int
    queries: torch.Tensor
    excluded: tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GraphPlan:
    """Everything of the kNN graph that depends only on the grid size, built once per size and device so
    that the forward pass neither synchronizes with nor copies from the host."""

    blocks: list[ClassBlock]
    ties: list[TieChunk]


class MediumRangeGraph(nn.Module):
    """The ``k`` nearest semantic neighbours of each patch, as an index tensor.

    Distances are squared L2 between L2-normalized stage-input features plus a relative-position
    term, between patches of one window and one dilation class (row and column offset modulo
    ``dilation`` from the window's corner). Windows span the whole grid when it fits in
    ``window_length``; otherwise they are placed along the diagonal only, and patches outside them
    have no candidate. Every other pair, the patch itself, the virtual node and the 8 grid
    neighbours are ranked behind the candidates by the large constant :data:`EXCLUDED`, as upstream
    does; a patch with fewer than ``k - 1`` candidates is completed from those ties with upstream's
    ranking of its whole distance row (``torch.topk``).
    """

    MAX_PLANS = 8  # grid sizes whose plans are kept, per module

    def __init__(self, dim: int, k: int = 12, window_length: int = 144, dilation: int = 2) -> None:
        super().__init__()
        if dilation < 2:  # with dilation 1 grid neighbours would share a class and need excluding
            raise ValueError(f"dilation must be at least 2, got {dilation}")
        self.dim, self.k, self.window_length, self.dilation = dim, k, window_length, dilation
        self._plans: dict[tuple[int, int, torch.device], GraphPlan] = {}

    def windows(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """``(row0, row1, col0, col1)`` of each window: one per step along the diagonal."""
        if h > w:
            wh, ww = self.window_length, math.ceil(self.window_length * (w / h))
        else:
            wh, ww = math.ceil(self.window_length * (h / w)), self.window_length
        return [(r, min(r + wh, h), c, min(c + ww, w)) for r, c in zip(range(0, h, wh), range(0, w, ww))]

    def check_size(self, h: int, w: int) -> None:
        if h * w + 1 < self.k:
            raise ValueError(
                f"EurNet's {self.k}-nearest-neighbour graph needs at least {self.k - 1} patches per stage, "
                f"but this input gives a {h}x{w} grid at one stage"
            )

    def plan(self, h: int, w: int, device: torch.device) -> GraphPlan:
        """The cached :class:`GraphPlan` of an ``h x w`` grid on ``device``."""
        key = (h, w, device)
        if key not in self._plans:
            if len(self._plans) >= self.MAX_PLANS:
                self._plans.clear()
            self._plans[key] = self._build_plan(h, w, device)
        return self._plans[key]

    def _build_plan(self, h: int, w: int, device: torch.device) -> GraphPlan:
        dil = self.dilation
        grid_index = torch.arange(h * w).view(h, w)
        covered = torch.zeros(h * w, dtype=torch.bool)
        offsets: dict[tuple[int, int], torch.Tensor] = {}  # shared by the classes of one shape
        blocks, short = [], []
        for (r0, r1, c0, c1), (dr, dc) in product(self.windows(h, w), product(range(dil), range(dil))):
            members = grid_index[r0 + dr : r1 : dil, c0 + dc : c1 : dil]
            rows, cols = members.shape
            if rows == 0 or cols == 0:
                continue
            members = members.reshape(-1)
            covered[members] = True
            if (rows, cols) not in offsets:
                offsets[rows, cols] = relative_position_term(self.dim, rows, cols, dil, device)
                offsets[rows, cols].diagonal().add_(EXCLUDED)
            block = ClassBlock(
                slice(r0 + dr, r1, dil),
                slice(c0 + dc, c1, dil),
                members.to(device),
                offsets[rows, cols],
                short=members.numel() < self.k,
            )
            if block.short:
                short.append((len(blocks), members))
            blocks.append(block)
        short.append((None, (~covered).nonzero().squeeze(1)))
        chunk = max(1, (1 << 24) // (h * w + 1))  # whole rows per chunk: at most 2**24 floats
        ties = [
            TieChunk(
                source,
                start,
                queries.to(device),
                tuple(t.to(device) for t in self._tie_exclusions(queries, source is None, h, w)),
            )
            for source, members in short
            for start in range(0, members.numel(), chunk)
            for queries in [members[start : start + chunk]]
        ]
        return GraphPlan(blocks, ties)

    @staticmethod
    def _tie_exclusions(queries: torch.Tensor, outside: bool, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) in the distance rows of ``queries`` of every pair :class:`TieChunk` excludes."""
        at = torch.arange(queries.numel())
        rows, cols = [at], [torch.zeros_like(at)]  # the virtual node
        if outside:  # no window: the patch itself is excluded like everything else
            rows.append(at)
            cols.append(queries + 1)
        qi, qj = queries // w, queries % w
        for di, dj in product((-1, 0, 1), repeat=2):
            if di == dj == 0:
                continue
            ni, nj = qi + di, qj + dj
            valid = (ni >= 0) & (ni < h) & (nj >= 0) & (nj < w)
            rows.append(at[valid])
            cols.append(ni[valid] * w + nj[valid] + 1)
        return torch.cat(rows), torch.cat(cols)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` stage input -> ``(B, H*W, k)`` neighbour indices, 1 + patch index (0 is
        the virtual node)."""
        b, h, w, c = x.shape
        self.check_size(h, w)
        n, k = h * w, self.k
        plan = self.plan(h, w, x.device)
        x = F.normalize(x.float(), p=2.0, dim=-1)
        index = torch.full((b, n, k), -1, dtype=torch.long, device=x.device)
        short_dists: dict[int, torch.Tensor] = {}  # by block
        for i, block in enumerate(plan.blocks):
            feats = x[:, block.rows, block.cols].reshape(b, -1, c)
            sq = (feats**2).sum(-1)
            dist = sq[:, :, None] + sq[:, None, :] - 2.0 * (feats @ feats.transpose(1, 2))
            dist = dist + block.offset
            if block.short:
                short_dists[i] = dist
            else:  # k - 1 others and then the patch itself: no ties with the rest
                local = torch.topk(-dist, k, dim=-1).indices
                index[:, block.members] = block.members[local] + 1
        for tie in plan.ties:  # rank whole distance rows, built as upstream builds them
            rows = torch.full((b, tie.queries.numel(), n + 1), EXCLUDED, device=x.device)
            if tie.source is not None:
                dist = short_dists[tie.source]
                rows[:, :, plan.blocks[tie.source].members + 1] = dist[:, tie.start : tie.start + tie.queries.numel()]
            rows[:, tie.excluded[0], tie.excluded[1]] += EXCLUDED
            index[:, tie.queries] = torch.topk(-rows, k, dim=-1).indices
        return index


class GatedRelationalMessagePassing(nn.Module):
    """GRMP over a fixed-degree graph: mean messages per relation, scaled per relation and channel,
    GELU, summed with per-node relation weights; the sum gates a self-loop transform.

    Relations in upstream's order: the 4 short-range directions, the medium-range kNN (if any), the
    long-range virtual node, then the 3 chained context convolutions. The virtual node itself
    receives no graph edges; its context relations carry its own message.
    """

    def __init__(self, dim: int, num_relation: int, context_sizes: tuple[int, ...] = (9, 11, 13)) -> None:
        super().__init__()
        self.num_relation = num_relation
        self.context_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, s, padding=s // 2, groups=dim, bias=False), nn.GELU())
            for s in context_sizes
        )
        self.self_loop = nn.Linear(dim, dim)
        self.message_linear = nn.Linear(dim, dim)
        self.weight_linear = nn.Linear(dim, num_relation + len(context_sizes))
        # a per-(relation, channel) scale, kept as upstream's depthwise 1x1 Conv1d for its checkpoint key
        self.linear = nn.Conv1d(num_relation * dim, num_relation * dim, 1, groups=num_relation * dim, bias=False)
        self.gate_linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int, neighbours: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``(B, 1 + H*W, C)``, the virtual node first; ``neighbours``: ``(B, H*W, k)`` or None."""
        b, length, c = x.shape
        message = self.message_linear(x)
        mean = message[:, 1:].mean(1)
        message[:, 0] = mean
        grid = message[:, 1:].reshape(b, h, w, c)
        weights = self.weight_linear(x).transpose(1, 2).contiguous()  # (B, R + contexts, L)
        patch_weights = weights[:, :, 1:].reshape(b, -1, h, w, 1)
        scale = self.linear.weight.view(self.num_relation, c)

        update = x.new_zeros(b, length, c)
        out = update[:, 1:].view(b, h, w, c)
        # short range: messages from the patch above, below, left and right (none at the border)
        for r, (dst, src) in enumerate(
            (
                ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
            )
        ):
            dst, src = (slice(None), *dst), (slice(None), *src)
            out[dst].addcmul_(patch_weights[:, r][dst], F.gelu(grid[src] * scale[r]))
        r = NUM_SHORT_RELATIONS
        if neighbours is not None:
            offsets = torch.arange(b, device=x.device).view(b, 1, 1) * length
            nearest = F.embedding_bag(
                (neighbours + offsets).view(-1, neighbours.shape[-1]), message.reshape(-1, c), mode="mean"
            )
            out.addcmul_(patch_weights[:, r], F.gelu(nearest.view(b, h, w, c) * scale[r]))
            r += 1
        out.addcmul_(patch_weights[:, r], F.gelu(mean * scale[r]).view(b, 1, 1, c))
        context = grid.permute(0, 3, 1, 2)  # channels-last memory, no copy
        for i, layer in enumerate(self.context_layers):
            context = layer(context)
            out.addcmul_(patch_weights[:, self.num_relation + i], context.permute(0, 2, 3, 1))
        update[:, 0] = weights[:, self.num_relation :, 0].sum(1, keepdim=True) * mean
        return self.self_loop(x) * self.gate_linear(update)


class EurNetBlock(nn.Module):
    """Pre-norm GRMP with an output projection, then a pre-norm FFN; both residual."""

    def __init__(self, dim: int, num_relation: int, drop_path: float, ffn_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.graph_conv = GatedRelationalMessagePassing(dim, num_relation)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, int(dim * ffn_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int, neighbours: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop_path(self.proj(self.graph_conv(self.norm1(x), h, w, neighbours)))
        return x + self.drop_path(self.ffn(self.norm2(x)))


class GraphConstruction(nn.Module):
    """Per stage: the virtual node and, where the stage has medium-range edges, the kNN graph."""

    def __init__(self, dim: int, medium: bool) -> None:
        super().__init__()
        self.node_layers = nn.ModuleList([VirtualNode(dim)])
        self.medium = MediumRangeGraph(dim) if medium else None


class EurNetStage(nn.Module):
    """Graph construction from the stage input, GRMP blocks, optional patch merging."""

    def __init__(
        self, dim: int, out_dim: int, depth: int, medium: bool, drop_paths: list[float], downsample: bool
    ) -> None:
        super().__init__()
        self.graph_construction_model = GraphConstruction(dim, medium)
        num_relation = NUM_SHORT_RELATIONS + int(medium) + 1
        self.blocks = nn.ModuleList(EurNetBlock(dim, num_relation, dp) for dp in drop_paths)
        self.downsample = PatchMerging(dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> the stage output ``(B, H, W, C)`` (before downsampling)."""
        b, h, w, c = x.shape
        graph = self.graph_construction_model
        neighbours = graph.medium(x) if graph.medium is not None else None
        virtual = graph.node_layers[0].virtual_node_embed.expand(b, 1, c)
        tokens = torch.cat([virtual, x.reshape(b, h * w, c)], dim=1)
        for block in self.blocks:
            tokens = block(tokens, h, w, neighbours)
        return tokens[:, 1:].reshape(b, h, w, c)


class EurNet(nn.Module):
    """EurNet-T/S/B for dense prediction: four LayerNorm'ed feature maps at strides 4 to 32."""

    def __init__(self, arch: str = "t", drop_path_rate: float = 0.3, pretrain_img_size: int = 224) -> None:
        super().__init__()
        spec = EURNET_ARCHS[arch]
        dims = spec.hidden_dims
        self.out_channels = list(dims)
        self.patch_embed = PatchEmbed(dims[0])
        grid = pretrain_img_size // self.patch_embed.patch_size
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, dims[0], grid, grid))
        nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path_rate, sum(spec.depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(spec.depths):
            start = sum(spec.depths[:i])
            self.stages.append(
                EurNetStage(
                    dims[i],
                    dims[min(i + 1, 3)],
                    depth,
                    i in MEDIUM_STAGES,
                    rates[start : start + depth],
                    downsample=i < 3,
                )
            )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.apply(_init_weights)
        self._pos_embed_cache: dict[tuple, torch.Tensor] = {}

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ValueError naming the smallest sizes that work when the kNN cannot pick its neighbours.

        The last kNN stage (stride 32) must hold at least ``k - 1`` patches: with the virtual node
        that makes the ``k`` candidates upstream's ``torch.topk`` needs.
        """
        needed = self.stages[-1].graph_construction_model.medium.k - 1
        rows, cols = math.ceil(height / 32), math.ceil(width / 32)
        if rows * cols >= needed:
            return

        def smallest(other_side: int) -> int:  # the smallest side that works against ``other_side``
            return 32 * (math.ceil(needed / math.ceil(other_side / 32)) - 1) + 1

        square = 32 * math.isqrt(needed - 1) + 1
        raise ValueError(
            f"EurNet cannot take a {height}x{width} input: its nearest-neighbour graph needs at least {needed} "
            f"patches at stride 32 and this input gives {rows}x{cols}. Use at least {height}x{smallest(height)} "
            f"or {smallest(width)}x{width} (the smallest square input is {square}x{square})."
        )

    def position_embedding(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """The absolute position embedding resized bicubically to an ``h x w`` grid, channels last;
        cached per size while the parameter is unchanged and no gradient is needed (never in a trace,
        which would keep the cached tensor as a constant)."""
        param = self.absolute_pos_embed
        if torch.is_grad_enabled() and param.requires_grad or torch.jit.is_tracing():
            return F.interpolate(param, size=(h, w), mode="bicubic").permute(0, 2, 3, 1)
        key = (h, w, like.device, like.dtype, param._version, param.data_ptr())
        if key not in self._pos_embed_cache:
            if len(self._pos_embed_cache) >= 8:
                self._pos_embed_cache.clear()
            resized = F.interpolate(param.detach(), size=(h, w), mode="bicubic")
            self._pos_embed_cache[key] = resized.permute(0, 2, 3, 1).to(like.dtype)
        return self._pos_embed_cache[key]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input_size(x.shape[2], x.shape[3])
        x = self.patch_embed(x)  # (B, H, W, C)
        x = x + self.position_embedding(x.shape[1], x.shape[2], x)
        outs = []
        for i, stage in enumerate(self.stages):
            y = stage(x)
            outs.append(getattr(self, f"norm{i}")(y).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(y)
        return outs

    def feature_extractor(self, out_indices: Sequence[int] | None) -> FeatureExtractor:
        """Stages 0-3 (after ``norm0``-``norm3``) at strides 4, 8, 16 and 32; all four by default."""
        modules = tuple(f"norm{i}" for i in range(len(self.out_channels)))
        info, picks = stage_features(self, out_indices, modules, (4, 8, 16, 32))
        return FeatureExtractor(self, info, picks)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
