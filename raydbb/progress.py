"""Progress for logs that are not terminals: a line at every tenth of a long piece of work.

With progress bars off (``--no-progress``, for job logs) an hour of inpainter training or a long
generate run would otherwise print nothing between its start and its end.
"""

from __future__ import annotations

import sys


class TenthsLog:
    """Prints ``"<name> <done>/<total> <unit>"`` (plus an optional note) to stderr, where progress
    bars go too (stdout stays clean for ``--json``), each time ``done`` reaches another tenth of
    ``total``."""

    def __init__(self, name: str, total: int, unit: str = "") -> None:
        self.name, self.total, self.unit = name, int(total), unit
        self._tenths = 0

    def __call__(self, done: int, note: str = "") -> None:
        """Report ``done`` units finished so far (cumulative)."""
        tenths = 10 * done // self.total if self.total > 0 else 0
        if tenths > self._tenths:
            self._tenths = tenths
            unit = f" {self.unit}" if self.unit else ""
            print(f"{self.name} {done}/{self.total}{unit}{note}", file=sys.stderr, flush=True)
