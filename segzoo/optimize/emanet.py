"""EMANet's head on the fast path: its conv-BN units folded and its wide 3x3 convolutions run by Winograd; in a
bf16 model the EM unit (its EM iterations' softmax, normalizations and the responsibilities' sums over every pixel)
runs in float32."""

from __future__ import annotations

from segzoo.heads.ema import ConvNorm, EMAHead, EMAUnit
from segzoo.optimize import Float32Island, Rewrite
from segzoo.optimize.folding import conv_bn_rewrite
from segzoo.optimize.resnet import FLOAT32, rewrite_winograd_convs

REWRITES = (
    conv_bn_rewrite(ConvNorm, ("", "norm")),
    Rewrite(
        "EMA head Winograd 3x3 convs",
        "rewrite blocks",
        (EMAHead,),
        rewrite_winograd_convs,
        devices=("cpu",),
        dtypes=FLOAT32,
    ),
)

FLOAT32_ISLANDS = (Float32Island((EMAUnit,)),)
