"""signalprop's validation suite: mean-field theory (``predict``) against Monte Carlo
(``simulate``) over a catalogue of networks, judged by ``compare``.

``python -m validation`` (or ``signalprop validate``) runs the full catalogue and writes
``validation/report.md`` and ``validation/figures/<family>.png``; ``--quick`` runs a small subset
(seconds). The exit status is 1 when a case that is expected a priori to agree does not.
"""

from .catalogue import FAMILIES, Case, catalogue, point, quick_catalogue
from .runner import CaseResult, run_case, run_cases, write_report


def main(argv=None) -> int:
    """Run the suite from Python (see ``python -m validation --help``); returns the exit status."""
    from .__main__ import main as _main
    return _main(argv)


__all__ = ["Case", "CaseResult", "FAMILIES", "catalogue", "quick_catalogue", "point", "run_case",
           "run_cases", "write_report", "main"]
