"""The semantic lookaside cache: near-duplicate queries answered from RAM, never wrong or stale."""
from vdb.cache.semantic import SemanticCache

__all__ = ["SemanticCache"]
