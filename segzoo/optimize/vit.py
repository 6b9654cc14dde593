"""RegionProxy's ViTs on the fast path: folded pre-norm blocks on oneDNN's fused linear kernels, and the proxy
head's pixel mixing as one batched matmul.

- Each timm :class:`~timm.models.vision_transformer.Block` becomes a :class:`FastViTBlock`: the affine part
  of ``norm1`` and ``norm2`` is folded into ``qkv`` and ``fc1`` (``W (g * n + b) + c = (W g) n + (W b + c)``),
  so the norms only normalize; on the CPU in float32 the linear layers run through oneDNN with the GELU after
  ``fc1`` and the residual adds after ``proj`` and ``fc2`` fused into them, for ViTs up to
  :data:`ONEDNN_MAX_WIDTH` wide (wider, MKL's ``addmm`` is the faster GEMM). The attention stays
  ``scaled_dot_product_attention``, faster than explicit matmuls and softmax, whole or in query blocks.
  What each part is worth, and why the whole stays near eager's speed in float32 (the matrix products and the
  attention kernel are what the time goes to, and eager runs them already): ``benchmarks/RESULTS.md``.
- A ViT whose input gives another token count than its training crop (the Cityscapes models at 512x512)
  resizes its position embedding once per token grid instead of once per forward
  (:class:`~segzoo.optimize._vit_backbone.FastViT`); the blocks not rewritten run fused attention.
- The :class:`~segzoo.heads.ProxyHead` mixes its neighbours' logits with one ``bmm`` on contiguous operands
  (the ``einsum`` of the eager head copies every token's operands separately).

oneDNN's fused linear is reached through ``torch.ops.mkldnn._linear_pointwise``, an internal op: it is used only
when a probe at optimize time finds it and finds it equal to ``F.linear`` (+ GELU, + residual); otherwise the
folded blocks run plain ``F.linear``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads.proxy import NEIGHBOURS, ProxyHead
from segzoo.optimize import EvalOnly, Float32Island, Rewrite

ONEDNN_MAX_WIDTH = 384
_VIT = "segzoo.backbones.vit.ViT"  # named, not imported: its module imports timm, which this one must not


@functools.cache
def onednn_linear_available() -> bool:
    """Whether oneDNN's fused linear op exists here and computes what ``F.linear`` (+ GELU, + a residual) does."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, residual = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 8, generator=g)
        weight, bias = torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
        with torch.no_grad():
            reference = F.linear(x, weight, bias)
            pairs = (
                (op(x, weight, bias, "none", [], ""), reference),
                (op(x, weight, bias, "gelu", [], "none"), F.gelu(reference)),
                (op.binary(x, residual, weight, bias, "add"), residual + reference),
            )
        return all(out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-5) for out, ref in pairs)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _fold_norm_affine(norm: nn.LayerNorm, linear: nn.Linear) -> None:
    """Make ``linear`` compute, on the affine-free normalized input, what it computed after ``norm``'s affine."""
    weight, bias = linear.weight.double(), linear.bias.double()
    dtype = linear.weight.dtype
    linear.weight = nn.Parameter((weight * norm.weight.double()).to(dtype), requires_grad=False)
    linear.bias = nn.Parameter((weight @ norm.bias.double() + bias).to(dtype), requires_grad=False)


def _is_plain_block(block: nn.Module) -> bool:
    """A timm pre-norm block this module can fold: LayerNorms, no layer scale, no q/k norm or gate, GELU MLP."""
    from timm.layers import Mlp  # noqa: PLC0415 (timm is loaded only by models that hold a ViT)
    from timm.models.vision_transformer import Block  # noqa: PLC0415

    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    return (
        type(block) is Block
        and type(mlp) is Mlp
        and all(
            type(m) is nn.LayerNorm and m.elementwise_affine and m.bias is not None for m in (block.norm1, block.norm2)
        )
        and all(
            isinstance(m, nn.Identity) for m in (block.ls1, block.ls2, attn.q_norm, attn.k_norm, attn.norm, mlp.norm)
        )
        and getattr(attn, "gate", None) is None
        and attn.qkv.bias is not None
        and attn.proj.bias is not None
        and type(mlp.act) is nn.GELU
        and mlp.act.approximate == "none"
        and mlp.fc1.bias is not None
        and mlp.fc2.bias is not None
    )


class FastViTBlock(EvalOnly, nn.Module):
    """A timm pre-norm ViT block with its norms' affine folded into ``qkv`` and ``fc1`` (eval-mode function);
    takes over the block's linear layers (changed in place).

    ``onednn``: run the linear layers through oneDNN with GELU and residual adds fused (CPU, float32, not under
    ``torch.compile``; otherwise plain ``F.linear``).
    """

    def __init__(self, block: nn.Module, onednn: bool) -> None:
        super().__init__()
        attn = block.attn
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.norm_eps = (block.norm1.eps, block.norm2.eps)
        self.qkv, self.proj, self.fc1, self.fc2 = attn.qkv, attn.proj, block.mlp.fc1, block.mlp.fc2
        with torch.no_grad():
            _fold_norm_affine(block.norm1, self.qkv)
            _fold_norm_affine(block.norm2, self.fc1)
        self.onednn = onednn

    def _linear(
        self, x: torch.Tensor, layer: nn.Linear, *, gelu: bool = False, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        # inductor lowers this op only for frozen weights: a compiled model takes F.linear, which it fuses itself
        if self.onednn and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling():
            op = torch.ops.mkldnn._linear_pointwise
            if residual is not None:
                return op.binary(x, residual, layer.weight, layer.bias, "add")
            return (
                op(x, layer.weight, layer.bias, "gelu", [], "none")
                if gelu
                else op(x, layer.weight, layer.bias, "none", [], "")
            )
        y = F.linear(x, layer.weight, layer.bias)
        if gelu:
            y = F.gelu(y)
        return y if residual is None else residual + y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        normed = F.layer_norm(x, (width,), eps=self.norm_eps[0])
        qkv = self._linear(normed, self.qkv).view(n, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, tokens, width)
        x = self._linear(attended, self.proj, residual=x)
        hidden = self._linear(F.layer_norm(x, (width,), eps=self.norm_eps[1]), self.fc1, gelu=True)
        return self._linear(hidden, self.fc2, residual=x)


class FastProxyHead(EvalOnly, ProxyHead):
    """A :class:`~segzoo.heads.ProxyHead` whose neighbour mixing is one ``bmm`` over tokens on contiguous
    operands; returns the same channels-last logits."""

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        middle, last = (inputs[i] for i in self.in_index)
        n, _, h, w = last.shape
        rh, rw = self.region_res
        # (tokens, sub-pixels, neighbours) @ (tokens, neighbours, classes); contiguous, or bmm copies per token
        affinity = self.affinity(middle).permute(0, 3, 4, 2, 1).reshape(n * h * w, rh * rw, NEIGHBOURS)
        affinity = affinity.contiguous()
        token_logits = self.conv_seg(last)
        neighbour_logits = F.unfold(token_logits, 3, padding=1).view(n, -1, NEIGHBOURS, h, w)
        neighbour_logits = neighbour_logits.permute(0, 3, 4, 2, 1).reshape(n * h * w, NEIGHBOURS, -1).contiguous()
        pixels = torch.bmm(affinity, neighbour_logits).view(n, h, w, rh, rw, -1)
        return pixels.transpose(2, 3).reshape(n, h * rh, w * rw, -1).permute(0, 3, 1, 2)


def rewrite_vit(vit: nn.Module) -> nn.Module:
    """The :class:`~segzoo.optimize._vit_backbone.FastViT` of a segzoo ViT: plain blocks folded, fused attention
    in the others, the resized position embedding cached."""
    from segzoo.optimize._vit_backbone import FastViT  # noqa: PLC0415 (imports timm: only once a ViT is rewritten)

    fast = FastViT.from_module(vit)
    fast.set_fused_attn(True)
    onednn = vit.out_channels[0] <= ONEDNN_MAX_WIDTH and onednn_linear_available()
    fast.blocks = nn.Sequential(
        *(FastViTBlock(block, onednn) if _is_plain_block(block) else block for block in fast.blocks)
    )
    return fast


REWRITES = (
    Rewrite("ViT blocks", "rewrite blocks", (_VIT,), rewrite_vit),
    Rewrite("RegionProxy head", "rewrite blocks", (ProxyHead,), FastProxyHead.from_module),
)

FLOAT32_ISLANDS = (Float32Island(("timm.layers.hybrid_embed.HybridEmbed",), takes_model_input=True),)
"""In a bf16 model, the hybrid ViTs' ResNetV2 stem (with its projection to tokens) runs in float32 on the unrounded
image: the stem's response to the image's bf16 rounding alone reaches several percent of the features."""
