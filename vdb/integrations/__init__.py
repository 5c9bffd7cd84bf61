"""Adapters that put vdb where retrieval code already is (LangChain, LlamaIndex). They use only the public `vdb` API;
what they share is in common.py."""
