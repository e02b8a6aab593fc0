"""segflow.runtime: lean inference (numpy + onnxruntime; TensorRT and CuPy when present; never torch)."""
