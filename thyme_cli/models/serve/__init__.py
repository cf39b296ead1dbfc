"""`thyme serve`: a managed vLLM environment that serves a model over the OpenAI API."""
