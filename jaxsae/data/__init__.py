"""The training stream over an activation store, and synthetic ground-truth data."""

from jaxsae.data.order import BlockShuffleOrder
from jaxsae.data.stream import ActivationStream, StreamState
from jaxsae.data.synthetic import SynthConfig, feature_recovery, load_truth, synthesize

__all__ = ["ActivationStream", "BlockShuffleOrder", "StreamState", "SynthConfig", "feature_recovery",
           "load_truth", "synthesize"]
