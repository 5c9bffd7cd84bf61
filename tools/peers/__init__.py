"""Peers of tools/bench_index.py. The runner scripts here are executed by *other* virtualenvs (see setup.sh), so
they and `procstats` use only the standard library and numpy."""
