"""The zoo as data: one :class:`ModelInfo` per published model, the single source of truth."""
from segzoo.zoo import moganet
from segzoo.zoo.records import InferencePipeline, ModelInfo, Normalization, Paper, UpstreamConfig, WeightSource

ENTRIES: tuple[ModelInfo, ...] = moganet.ENTRIES

__all__ = ["ENTRIES", "InferencePipeline", "ModelInfo", "Normalization", "Paper", "UpstreamConfig", "WeightSource"]
