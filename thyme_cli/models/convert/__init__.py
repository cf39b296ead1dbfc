"""Converting a Hugging Face checkpoint to a GGUF pair, in a separate converter environment."""
