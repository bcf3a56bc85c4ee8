"""scann-serving model builder: interactions -> two towers -> ScaNN index -> TF Serving SavedModel."""

__version__ = "0.1.0"
