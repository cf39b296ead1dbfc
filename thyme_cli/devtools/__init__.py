"""Developer tools: tiny test models and other helpers that need the `dev` extra."""
