"""FP8 / INT8 calibration of the DiT (not yet implemented)."""
