"""reviveformer: train small GPT-2 variants with neuron liveness tracking and neuron revival."""

__version__ = "0.1.0"
