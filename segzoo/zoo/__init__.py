"""The zoo as data: the record types, and one module per paper with its :class:`ModelInfo` entries.

The entries are registered by their family (:mod:`segzoo.families`); :func:`segzoo.list_models` lists them.
"""

from segzoo.zoo.records import InferencePipeline, ModelInfo, Normalization, Paper, UpstreamConfig, WeightSource

__all__ = ["InferencePipeline", "ModelInfo", "Normalization", "Paper", "UpstreamConfig", "WeightSource"]
