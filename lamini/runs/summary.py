"""What every stage returns: the one summary protocol the command line reads.

A stage function (`lamini.cli.STAGES`) takes its config and returns a dataclass that satisfies
`StageSummary`. `lamini` prints `line()` (or the dataclass as JSON with `--json`) and exits 1
when `missing` is not 0, or when the summary has an `unallowed_errors` count that is not 0, so a
run that silently lost rows, or ended with errors its config did not allow, never looks like a
success. A stage that cannot go on at all raises lamini.engines.abort.RunAborted (exit 3).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class StageSummary(Protocol):
    """A stage's result, as the command line reads it.

    missing: the stage's count of input rows that ended as neither an output row nor a recorded
    error (0 is success). Stages whose unit is not an input row count what they lost of their own
    unit (tune: failed trials; eval: model-task pairs without a score), or report 0.
    """

    missing: int

    def line(self) -> str:
        """One line for the terminal: counts, time, and where the outputs are."""
        ...
