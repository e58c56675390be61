"""jaxsae: sparse autoencoders in JAX for the activations of single-cell foundation models."""

__version__ = "0.1.0"
