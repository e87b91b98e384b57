"""reviveformer: train small GPT-2 variants with neuron liveness tracking and neuron revival.

The design contract (definitions, interfaces, file layouts, metric names) is docs/design.md.
"""

__version__ = "0.1.0"
