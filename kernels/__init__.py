"""Fused attention kernels (Triton) and ONNX graph fusions."""
