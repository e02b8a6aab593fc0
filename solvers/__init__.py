"""segflow.solvers: instance segmentation from probability/SDF maps (H-EMD, baselines) and metrics.

numpy in, numpy out; never imports torch. PuLP/HiGHS are used only inside ``solvers._ilp``.
"""

from __future__ import annotations

from .baselines import (
    BASELINES,
    label_components,
    maxvalue_instances,
    otsu_instances,
    threshold_instances,
    watershed_instances,
)
from .fill import fill_to_mask
from .forest import Forest, build_forest
from .hemd import HEMDConfig, HEMDResult, hemd, select_sequence
from .instances import PROB_METHODS, SDF_METHODS, forest_instances, instances_from_prob, instances_from_sdf
from .metrics import (
    PanopticQuality,
    aji,
    aji_plus,
    ctc_det,
    ctc_seg,
    dice,
    evaluate,
    image_metrics,
    iou,
    object_f1,
    pooled_dice_iou,
    pq,
    relabel,
)
from .single import SCORES, dp_select, select_single

__all__ = [
    "BASELINES", "PROB_METHODS", "SDF_METHODS", "SCORES",
    "Forest", "build_forest", "dp_select", "select_single", "fill_to_mask",
    "HEMDConfig", "HEMDResult", "hemd", "select_sequence",
    "forest_instances", "instances_from_prob", "instances_from_sdf",
    "label_components", "threshold_instances", "otsu_instances", "watershed_instances", "maxvalue_instances",
    "relabel", "dice", "iou", "pooled_dice_iou", "object_f1", "aji", "aji_plus", "pq", "PanopticQuality",
    "ctc_seg", "ctc_det", "image_metrics", "evaluate",
]
