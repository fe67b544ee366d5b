"""ONNX export and TensorRT engine building (not yet implemented: see the export issue)."""
