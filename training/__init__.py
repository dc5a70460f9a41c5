"""Training entry points: the demo job and experiment recipes."""
