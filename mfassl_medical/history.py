"""The run history of a trainer: every iteration's outputs, kept across resumes and written after each epoch."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events

from mfassl.engine import step_record
from mfassl.files import write_text

__all__ = ["RunHistory"]

logger = logging.getLogger(__name__)


class RunHistory:
    """Keeps every iteration's outputs (losses, gate mean, schedule values) of a trainer, across resumes.

    Each row holds ``iteration``. The history is written (atomically) after every epoch and when the run
    completes. When a run resumes (the trainer starts at iteration ``k > 0``), the rows of the earlier runs
    are read back from ``path`` and those past ``k`` (written after the checkpoint) are dropped, so the
    history is the whole run, each iteration once; a history that stops short of ``k`` is kept with a warning
    naming the gap.

    Args:
        path: the JSON file (``<output_dir>/history.json``); None keeps the rows in memory only.

    Use as a handler: ``create_trainer(..., handlers=[..., RunHistory(path)])`` (the bundles' ``train#handlers``)
    or ``RunHistory(path).attach(trainer)``.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.rows: list[dict[str, float]] = []

    def attach(self, trainer: Engine) -> "RunHistory":
        """Record ``trainer``'s iterations (once, however often it is called); returns ``self``."""
        if not trainer.has_event_handler(self._started, Events.STARTED):
            trainer.add_event_handler(Events.STARTED, self._started)
            trainer.add_event_handler(Events.ITERATION_COMPLETED, self._record)
            trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.save())
            trainer.add_event_handler(Events.COMPLETED, lambda _: self.save())
        return self

    def _read(self) -> list[dict[str, float]]:
        if not self.path or not Path(self.path).is_file():
            return []
        try:
            rows = json.loads(Path(self.path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.path} (the run history) cannot be read to continue it: {err}; move it away "
                             "to start a new history.") from err
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "iteration" in r for r in rows):
            raise ValueError(f"{self.path} is not a run history (a JSON list of rows with 'iteration').")
        return rows

    def _started(self, engine: Engine) -> None:
        start = int(engine.state.iteration)
        if start == 0:
            self.rows = []
            return
        rows = self.rows or self._read()
        kept = [r for r in rows if float(r["iteration"]) <= start]
        if len(kept) < len(rows):
            logger.info("history %s: dropped %d rows past iteration %d (written after the checkpoint)", self.path,
                        len(rows) - len(kept), start)
        last = int(kept[-1]["iteration"]) if kept else 0
        if last < start:
            logger.warning("history %s holds iterations up to %d but the run resumes at %d: iterations %d-%d are "
                           "missing from it and from the report.", self.path, last, start, last + 1, start)
        self.rows = kept

    def _record(self, engine: Engine) -> None:
        out = step_record(engine.state.output)
        out["iteration"] = float(engine.state.iteration)
        self.rows.append({k: float(v) for k, v in out.items() if isinstance(v, (int, float))})

    def save(self) -> None:
        """Write the rows to ``path`` atomically (:func:`mfassl.files.write_text`; rank 0 only under
        ``torch.distributed``)."""
        if not self.path:
            return
        if idist.get_rank() != 0:
            return
        write_text(self.path, json.dumps(self.rows))
