"""The remote engine: an OpenAI-compatible server (vLLM, SGLang, llama-server) holds the weights."""
