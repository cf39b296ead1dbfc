"""Inference engines: the Engine/Conversation protocols and their implementations.

Concrete engines are imported lazily (``engine.llama`` pulls in llama_cpp), so importing this
package stays cheap.
"""
