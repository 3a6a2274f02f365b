"""Training: losses (and the train step built on them)."""
