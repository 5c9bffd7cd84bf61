"""vdb: a disk-resident SPANN-style vector database."""
__version__ = "0.1.0"
