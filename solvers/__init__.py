"""segflow.solvers: instance segmentation from probability/SDF maps (H-EMD, baselines) and metrics."""
