"""Gradient-free optimisers (SNES, GPUMD's evolution strategy for NEP)."""
