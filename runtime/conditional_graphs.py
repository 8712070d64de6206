"""CUDA graphs whose loops and branches are conditional nodes: not implemented yet."""

SUPPORTED = False
