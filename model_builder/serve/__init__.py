"""Local server speaking TensorFlow Serving's gRPC API (development and test stand-in)."""
