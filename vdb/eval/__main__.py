"""`python -m vdb.eval eval|recommend ...`: the same commands as `vdbctl eval|recommend`, usable before (or
without) their registration on the vdbctl group."""
from __future__ import annotations

import logging
import sys

import click

from vdb.eval.commands import eval_command, recommend_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) on stderr.")
def main(verbose: int) -> None:
    """Task-centric evaluation of vector search (vdbctl eval / vdbctl recommend)."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


main.add_command(eval_command)
main.add_command(recommend_command)

if __name__ == "__main__":
    main(prog_name="python -m vdb.eval")
