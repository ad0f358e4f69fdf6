"""The embedded "shapes" benchmark (data generator) and the tiny model trained on it."""
