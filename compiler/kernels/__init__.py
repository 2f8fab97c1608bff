"""Fused dequantize→matmul kernels (TE) and their hand CPU schedules."""
