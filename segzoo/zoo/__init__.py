"""The zoo as data: one :class:`ModelInfo` per published model, the single source of truth."""
from segzoo.zoo import moganet
from segzoo.zoo.records import ModelInfo, Normalization, Paper, TestPipeline, UpstreamConfig, WeightSource

ENTRIES: tuple[ModelInfo, ...] = moganet.ENTRIES

__all__ = ["ENTRIES", "ModelInfo", "Normalization", "Paper", "TestPipeline", "UpstreamConfig", "WeightSource"]
