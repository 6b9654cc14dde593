"""The export formats and the smallest dynamic input: plain constants, which the command line reads without torch."""

from __future__ import annotations

from typing import Literal

ExportFormat = Literal["onnx", "torchscript", "exported-program"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("onnx", "torchscript", "exported-program")
MIN_DYNAMIC_SIDE = 64  # the smallest height and width a dynamic export accepts: two stride-32 cells
