"""Float32 parity tolerance, relative to the scale of the values compared.

An absolute tolerance means different things for values of different sizes: SAM2's low-res
logits average about 0.07 in magnitude, so an absolute 1e-3 would let a 1% error pass, while the
policy's log-probabilities average about 11. `assert_parity` bounds the largest difference by a
fraction of the reference's mean magnitude instead:

    max |ours - reference|  <=  rel * mean |reference|

with `rel` = 1e-4 for float32 on both sides. The parity tests measure at most 1.5e-5 (SAM2's
upsampled logits against Meta's sam2) and 1.2e-5 (the policy's logits against transformers).
"""

from __future__ import annotations

import numpy as np

PARITY_REL = 1e-4


def assert_parity(ours, reference, what: str = "", rel: float = PARITY_REL) -> None:
    """Asserts equal shapes and max |ours - reference| <= rel * mean |reference|."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (what, ours.shape, reference.shape)
    scale = np.abs(reference).mean()
    assert scale > 0, f"{what}: the reference is all zeros, nothing is compared"
    err = np.abs(ours - reference).max()
    assert err <= rel * scale, (f"{what}: max |diff| {err:.2e} > {rel:g} x mean |reference| {scale:.2e} "
                                f"(ratio {err / scale:.2e})")
