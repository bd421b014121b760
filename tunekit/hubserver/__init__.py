"""A small, self-hostable Hugging Face Hub-compatible server (``tunekit hub serve``)."""
