"""Talking to the Hugging Face Hub: references, file listings, resumable downloads, the cache."""
