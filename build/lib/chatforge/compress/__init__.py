"""Prune, export to ONNX, quantize."""
