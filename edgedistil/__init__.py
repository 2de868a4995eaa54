"""edgedistil: distill a causal LM into a small student, export, quantize, convert and benchmark it for the edge."""

__version__ = "0.1.0"
