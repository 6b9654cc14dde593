"""RegionProxy's ViTs on the fast path: no rewrite of their own, only a float32 island in bf16.

Folded pre-norm blocks (on ``F.linear`` or oneDNN's fused linear), a cached resized position embedding and the
proxy head's mixing as one batched matmul were measured, one by one and together, against eager on this
package's CPU (ViT-Ti/16, ViT-S/16, ViT-B/16 and the R26 hybrid, float32 and bf16) and none ran faster: eager
already spends most of its time in the GEMM and flash-attention kernels. So they are not applied, and the fast
ViT is the eager one (``benchmarks/RESULTS.md``, "RegionProxy's fast path in float32"). The hybrids still gain
from :mod:`segzoo.optimize.folding` (their weight-standardized convolutions frozen).
"""

from __future__ import annotations

from segzoo.optimize import Float32Island

FLOAT32_ISLANDS = (Float32Island(("timm.layers.hybrid_embed.HybridEmbed",), takes_model_input=True),)
"""In a bf16 model, the hybrid ViTs' ResNetV2 stem (with its projection to tokens) runs in float32 on the unrounded
image: the stem's response to the image's bf16 rounding alone reaches several percent of the features."""
