"""tunekit: fine-tune an open chat model in a few lines."""
__version__ = "0.1.0"
