"""One question about one image: the Think -> Act -> Observe loop, its prompts, its records."""
