"""Quantization as a library: schemes, algorithms, recipes. Knows nothing of loaders or targets."""
