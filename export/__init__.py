"""segflow.export: checkpoint -> ONNX graphs (encoder + field) with the model card, parity-checked."""
