"""Adapters that put vdb where retrieval code already is (LangChain). They use only the public `vdb` API."""
