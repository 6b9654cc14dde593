"""Plain and hybrid Vision Transformers built from timm's modules, computing what mmseg 0.17's ViT computes.

These are RegionProxy's backbones (Zhang et al., "Semantic Segmentation by Early Region Proxy", CVPR 2022).
Patch embedding, transformer blocks and the ResNetV2 stem of the hybrids are timm's own; this module
configures them the way the upstream mmseg ``VisionTransformer`` and ``VisionTransformerHybrid`` compute:

- ``LayerNorm(eps=1e-6)`` everywhere, exact (erf) GELU, qkv bias, pre-norm residual blocks;
- a class token (plus DeiT's distillation token for the Base models), position embedding added to all tokens;
- plain ViTs zero-pad the image at the bottom and right to a multiple of the patch size; hybrids run the
  ResNetV2 stem (``StdConv2dSame`` with eps 1e-8, GroupNorm, TF "same" padding) unpadded;
- the position embedding is resized (bicubic, no antialiasing) only when the token count differs from the
  trained one, as upstream does, so a grid with the trained token count but another shape keeps it as is;
- ``out_indices`` picks token maps: ``-1`` is the embedding entering the first block, ``i`` the output of
  block ``i``, and only the last block's output passes through the final norm.

The attention is timm's, fused (``scaled_dot_product_attention``) by default; mmseg computes the same
product through ``nn.MultiheadAttention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import HybridEmbed, PatchEmbed, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import Block
from torch import nn

from segzoo.features import FeatureExtractor, FeatureInfo

LAYER_NORM_EPS = 1e-6
STD_CONV_EPS = 1e-8  # timm's ViT-hybrid stems standardize conv weights with this eps


@dataclass(frozen=True)
class ViTArch:
    """Width, depth and heads of the transformer; ``resnet_layers`` makes it a hybrid with that ResNetV2 stem.

    ``patch_size`` is the stride of the token grid: the patch conv of a plain ViT, the stem's output stride
    (32) of a hybrid, whose 1x1 projection then embeds every stem pixel.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    resnet_layers: tuple[int, ...] | None = None


VIT_ARCHS: dict[str, ViTArch] = {
    "ti16": ViTArch(192, 12, 3, 16),
    "s16": ViTArch(384, 12, 6, 16),
    "b16": ViTArch(768, 12, 12, 16),
    "l16": ViTArch(1024, 24, 16, 16),
    "r26_s32": ViTArch(384, 12, 6, 32, resnet_layers=(2, 2, 2, 2)),
    "r50_l32": ViTArch(1024, 24, 16, 32, resnet_layers=(3, 4, 6, 3)),
}


def _resnetv2_stem(layers: tuple[int, ...]) -> ResNetV2:
    """timm's ViT-hybrid CNN: a non-pre-activation ResNetV2 with TF-"same" standardized convs, no head."""
    return ResNetV2(
        layers=layers,
        num_classes=0,
        global_pool="",
        preact=False,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=STD_CONV_EPS),
    )


class ViT(nn.Module):
    """A ViT returning ``(N, C, h, w)`` token maps of the layers in ``out_indices``.

    ``img_size`` is the training crop: it fixes the position-embedding grid (``img_size // patch_size``).
    """

    def __init__(
        self,
        arch: str,
        img_size: tuple[int, int],
        out_indices: Sequence[int],
        distilled: bool = False,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ValueError(f"unknown ViT arch {arch!r}; choose one of {sorted(VIT_ARCHS)}")
        spec = VIT_ARCHS[arch]
        if any(not -1 <= i < spec.depth for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must lie in [-1, {spec.depth - 1}]")
        self.out_indices = tuple(out_indices)
        self.out_channels = (spec.embed_dim,) * len(self.out_indices)
        if spec.resnet_layers is None:
            self.patch_embed = PatchEmbed(
                img_size,
                spec.patch_size,
                3,
                spec.embed_dim,
                output_fmt="NHWC",
                strict_img_size=False,
                dynamic_img_pad=True,
            )
        else:
            # HybridEmbed runs the CNN once on an img_size image to learn its output width; a one-token image
            # is enough, since this class sizes the position grid itself.
            self.patch_embed = HybridEmbed(
                _resnetv2_stem(spec.resnet_layers),
                img_size=spec.patch_size,
                patch_size=1,
                embed_dim=spec.embed_dim,
                output_fmt="NHWC",
            )
        self.patch_size = spec.patch_size
        self.pos_grid = (img_size[0] // spec.patch_size, img_size[1] // spec.patch_size)
        self.num_prefix_tokens = 2 if distilled else 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + self.pos_grid[0] * self.pos_grid[1], spec.embed_dim)
        )
        rates = [drop_path_rate * i / max(spec.depth - 1, 1) for i in range(spec.depth)]  # linear in depth
        self.blocks = nn.Sequential(
            *(
                Block(
                    spec.embed_dim,
                    spec.num_heads,
                    mlp_ratio,
                    qkv_bias=True,
                    drop_path=rate,
                    act_layer=nn.GELU,
                    norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS),
                )
                for rate in rates
            )
        )
        self.norm = nn.LayerNorm(spec.embed_dim, eps=LAYER_NORM_EPS)
        self.set_fused_attn(fused_attn)
        self._init_weights()

    def _init_weights(self) -> None:
        for token in (self.cls_token, self.dist_token, self.pos_embed):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    def set_fused_attn(self, enabled: bool) -> None:
        """Run attention through ``scaled_dot_product_attention`` (True) or as explicit matmuls (False)."""
        for block in self.blocks:
            block.attn.fused_attn = enabled

    def _add_pos_embed(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``tokens`` plus the position embedding, resized (bicubic) to ``grid`` when the token counts differ.

        An export or trace resizes at every size, the native one included (where the resize is the
        identity): a branch on the size would fix the exported graph to the example's side of it. So at a
        grid with the native token count but another shape, where upstream reads the native grid row-major,
        an exported model resizes instead.
        """
        pos_embed = self.pos_embed
        general = torch.compiler.is_exporting() or torch.jit.is_tracing()  # first: no guard on symbolic sizes
        if general or tokens.shape[1] != pos_embed.shape[1]:  # upstream's test: token counts, not grid shapes
            prefix, patches = pos_embed[:, : self.num_prefix_tokens], pos_embed[:, self.num_prefix_tokens :]
            patches = patches.reshape(1, *self.pos_grid, -1).permute(0, 3, 1, 2)
            patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False)  # as timm's
            pos_embed = torch.cat([prefix, patches.permute(0, 2, 3, 1).flatten(1, 2).to(prefix.dtype)], dim=1)
        return tokens + pos_embed

    def _token_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.unflatten(1, grid).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)  # (N, h, w, C)
        grid = (x.shape[1], x.shape[2])
        prefix = [self.cls_token] if self.dist_token is None else [self.cls_token, self.dist_token]
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x.flatten(1, 2)], dim=1)
        x = self._add_pos_embed(x, grid)
        outs = [self._token_map(x, grid)] if -1 in self.out_indices else []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == last:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(self._token_map(x, grid))
        return outs

    def feature_extractor(self, out_indices: Sequence[int] | None) -> FeatureExtractor:
        """Token maps of the layers ``out_indices`` (``-1`` the embedded tokens, ``i`` block ``i``; by default the
        ones the model was built with) at the patch size's stride."""
        depth = len(self.blocks)
        indices = tuple(self.out_indices if out_indices is None else out_indices)
        if not indices or any(not -1 <= i < depth for i in indices) or list(indices) != sorted(set(indices)):
            raise ValueError(
                f"out_indices {indices} must be increasing ViT layers in [-1, {depth - 1}] "
                "(-1: the embedded tokens, i: block i)"
            )
        self.out_indices = indices  # the ViT returns exactly these token maps
        width = self.pos_embed.shape[-1]
        modules = tuple("patch_embed" if i == -1 else f"blocks.{i}" for i in indices)
        info = FeatureInfo(indices, (width,) * len(indices), (self.patch_size,) * len(indices), modules)
        return FeatureExtractor(self, info, range(len(indices)))
