"""The zoo as data: one :class:`ModelInfo` per published model, the single source of truth."""
from segzoo.zoo import emanet, eurnet, glore, moganet, regproxy
from segzoo.zoo.pins import apply_pins, read_pins
from segzoo.zoo.records import (
    InferencePipeline, ModelInfo, Normalization, Paper, ReportedMetric, UpstreamConfig, WeightSource,
)

ENTRIES: tuple[ModelInfo, ...] = apply_pins(
    moganet.ENTRIES + emanet.ENTRIES + glore.ENTRIES + regproxy.ENTRIES + eurnet.ENTRIES, read_pins()
)

__all__ = [
    "ENTRIES", "InferencePipeline", "ModelInfo", "Normalization", "Paper", "ReportedMetric", "UpstreamConfig", "WeightSource",
]
