"""prunebench: an evaluation harness for visual-token pruning in vision-language models."""

__version__ = "0.1.0"
