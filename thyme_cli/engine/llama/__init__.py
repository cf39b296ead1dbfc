"""The local engine: llama.cpp through llama-cpp-python, one live context per question."""
