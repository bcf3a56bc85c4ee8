"""Stage 2: the towers that embed queries and candidates (trained, with features, or imported)."""
