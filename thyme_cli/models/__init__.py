"""Which models exist and where their files are: the registry, the local store, hub pulls,
conversion to GGUF, and loading a model into an engine."""
