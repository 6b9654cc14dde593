"""The converters the weights layer is handed: from a file's tensor layout to the model's.

The families define them (one per architecture); the registry picks an entry's
and passes it down, so that loading weights never needs to know a family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]
# an original segmentation checkpoint's state dict -> segzoo's layout (a segzoo-layout one comes back unchanged)
Converter = Callable[[StateDict], StateDict]
# (ImageNet classification state dict, the segmentor's backbone) -> a state dict for that backbone
ImageNetConverter = Callable[[StateDict, nn.Module], StateDict]
