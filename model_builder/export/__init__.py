"""Stage 4: the serving graph, its warmup file, and atomic numbered versions in TF Serving's layout."""
