"""Stage 3: the ScaNN index: rule of thumb, recall sweep, and the search for the fastest served setting."""
