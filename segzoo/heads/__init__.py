"""Necks and decode heads: multi-scale features in, class logits at the finest used stride out."""

from segzoo.heads.base import DecodeHead
from segzoo.heads.ema import EMAHead, EMAUnit
from segzoo.heads.fcn import FCNHead
from segzoo.heads.fpn import FPNHead, FPNNeck
from segzoo.heads.glore import GloReFCNHead, GloReUnit2d
from segzoo.heads.proxy import ProxyHead
from segzoo.heads.uper import UPerHead

__all__ = [
    "DecodeHead",
    "EMAHead",
    "EMAUnit",
    "FCNHead",
    "FPNHead",
    "FPNNeck",
    "GloReFCNHead",
    "GloReUnit2d",
    "ProxyHead",
    "UPerHead",
]
