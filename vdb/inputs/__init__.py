"""Where vectors come from: dataset files (readers.py) and deterministic synthetic data (synthetic.py)."""
