"""EMANet's head on the fast path: its conv-BN units folded and its wide 3x3 convolutions run by Winograd."""

from __future__ import annotations

from segzoo.heads.ema import ConvNorm, EMAHead
from segzoo.optimize import Rewrite
from segzoo.optimize.folding import conv_bn_rewrite
from segzoo.optimize.resnet import rewrite_winograd_convs

REWRITES = (
    conv_bn_rewrite(ConvNorm, ("", "norm")),
    Rewrite("EMA head Winograd 3x3 convs", "rewrite blocks", (EMAHead,), rewrite_winograd_convs, devices=("cpu",)),
)
