"""The evaluator's typed errors. Each subclasses a public vdb error, so the CLI edge and the gRPC table map them."""
from __future__ import annotations

from vdb.errors import InvalidArgumentError


class EvalDatasetError(InvalidArgumentError):
    """A dataset that cannot be loaded: missing file, bad shape, inconsistent labels. The message names the file."""


class SweepSpecError(InvalidArgumentError):
    """A sweep file (JSON/TOML) that does not describe systems and operating points we can run."""
