"""Build models/demo-intensity.{onnx,encoder.onnx,card.json}: a hand-built demonstration engine, NOT a trained net.

Its encoder is a 5x5 box blur of the normalised channel mean and its field is the exact OT velocity towards that
map, so the "SDF" it samples is the blurred brightness in [-1, 1]: dark structures (haematoxylin-stained nuclei)
come out inside (SDF <= 0). It exercises the whole runtime (tiling, K samples, blending, H-EMD instances,
per-instance confidence, outputs) in seconds, until a trained default model ships. Run: python models/make_demo.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "models"))
import make_models as mm  # noqa: E402

card = mm.card("demo-intensity", 3, tile=64, training_data="none: analytic demo engine (SDF = blurred "
               "normalised brightness), not a trained network", licence="MIT",
               sampling={"steps": 2, "method": "euler", "samples": 2})
cj = json.dumps(card, sort_keys=True)
mm._save(mm.field_graph("dirac"), HERE / "demo-intensity.onnx", cj)
mm._save(mm.encoder_graph(3, 5), HERE / "demo-intensity.encoder.onnx", cj)
(HERE / "demo-intensity.card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
print("wrote", HERE / "demo-intensity.onnx")
