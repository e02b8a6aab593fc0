"""The SDF maths, re-exported from :mod:`segflow.sdf` (torch-free, shared with the runtime and the metrics).

Kept here so that a newcomer reading ``trainer/`` finds the FlowSDF target by its name; the implementation
lives in one place only.
"""

from __future__ import annotations

from segflow.sdf import binary_target, boundary_pixels, mask_to_sdf, sdf_to_mask, sdf_to_prob

__all__ = ["mask_to_sdf", "sdf_to_mask", "sdf_to_prob", "binary_target", "boundary_pixels"]
