"""Training checkpoints: written by :class:`CheckpointSaver` during a run, read back to resume it.

A training checkpoint is ``checkpoints/checkpoint_<iteration>.pt``: ``{"model": MFASSL state dict,
"optimizer", "trainer", "run": run settings}`` (the encoder is the student under ``objective.backbone.``, and
``run["network"]`` describes it). :class:`CheckpointSaver` writes one atomically (:func:`atomic_save`,
through :mod:`mfassl.files`: a full disk says ``no space left on <path>`` and keeps the last good one) and keeps
the newest ``n_saved``; :func:`find_last_checkpoint` and :func:`load_checkpoint` (``weights_only=True``) are
what ``resume_from`` uses.

The project's other two kinds of weight file have their own modules: encoder files (``models/model.pt``;
save, load, the load report) in :mod:`mfassl.encoder_files`, export to stock timm / MONAI networks in
:mod:`mfassl.export`. Their public names, defined here before, stay importable from here
(``from mfassl.checkpoints import load_encoder``, ``$checkpoints.save_encoder(...)`` in the bundles): this
module hands them on when they are first asked for, so it imports neither module (both import it).

Example::

    saver = CheckpointSaver("runs/pretrain/checkpoints", n_saved=2)   # create_trainer(handlers=[saver])
    state = load_checkpoint(find_last_checkpoint("runs/pretrain/checkpoints"))
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mfassl.files import atomic_write
from mfassl.options import require

#: names that moved to :mod:`mfassl.encoder_files` and :mod:`mfassl.export`, handed on by :func:`__getattr__`
_MOVED: dict[str, str] = {
    **dict.fromkeys(("ENCODER_PREFIXES", "MLP_KEY_ALIASES", "PART_PREFIXES", "EncoderFile",
                     "EncoderFileNotFoundError", "EncoderLoadError", "EncoderLoadReport", "build_encoder",
                     "describe_encoder", "encoder_of", "encoder_state_dict", "extract_encoder_state", "load_encoder",
                     "read_encoder_file", "save_encoder"), "mfassl.encoder_files"),
    **dict.fromkeys(("EXPORT_TARGETS", "WEIGHT_FORMATS", "export_encoder", "save_weights", "weight_format"),
                    "mfassl.export"),
}

__all__ = [
    "CHECKPOINT_PREFIX",
    "CheckpointSaver",
    "atomic_save",
    "find_checkpoints",
    "find_last_checkpoint",
    "load_checkpoint",
    *sorted(_MOVED),
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
"""Training checkpoints are ``<prefix>_<iteration>.pt``."""


# ---------------------------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`mfassl.files.atomic_write`).

    Whatever fails (``torch.save`` itself, the final flush on a full disk, an interrupt), the temporary file
    is removed and an earlier file at ``path`` is left untouched; a full disk raises
    :class:`~mfassl.files.NoSpaceError` (``no space left on <path>``) instead of torch's ``unexpected pos``.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)\.pt$")


def find_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every ``checkpoint_<iteration>.pt`` in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name)))


def find_last_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest iteration in ``directory`` (None if there is none)."""
    found = find_checkpoints(directory)
    return found[-1][1] if found else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a clear error names a missing or corrupt file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise RuntimeError(f"checkpoint {p} cannot be read ({type(err).__name__}: {err}); "
                           "it may be truncated or not a checkpoint.") from err


# ---------------------------------------------------------------------------------------------- saver
class CheckpointSaver:
    """Handler that writes a full training checkpoint every ``every`` epochs and when the run completes,
    keeping the newest ``n_saved`` in ``save_dir``.

    What it writes is a ``to_save`` mapping, as for ignite's ``Checkpoint``: ``{name: object with state_dict()}``,
    one ``state_dict()`` per entry in the file. :func:`mfassl.engine.create_trainer` hands its mapping (model,
    optimizer, trainer state with RNG, AMP scaler, run settings) to the savers among its ``handlers``
    (``saver.attach(trainer, to_save)``); a saver of another engine is given its mapping at construction or on
    ``attach``. Each file is written atomically (:func:`atomic_save`); only after it is in place are older ones
    removed, so a failed save leaves the last good checkpoint and no temporary file. A full disk stops the run
    with :class:`~mfassl.files.NoSpaceError` (``no space left on <checkpoint path>``); ``resume_from="auto"``
    then goes on from the last good one. Checkpoints already in the folder count towards ``n_saved`` (a resumed
    run prunes them too); files of a later iteration than the one just written are left alone (ignite's
    ``Checkpoint`` counts only the files it wrote itself).

    Args:
        save_dir: the folder (``<output_dir>/checkpoints``).
        n_saved: full checkpoints kept (an int, at least 1).
        every: epochs between checkpoints (an int, at least 1; the last epoch is always saved).
        to_save: the entries to write (default: those given to :meth:`attach`).
    """

    def __init__(self, save_dir: str | os.PathLike, n_saved: int = 2, every: int = 1,
                 to_save: Mapping[str, Any] | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.n_saved = require(n_saved, "n_saved", int, low=1)
        self.every = require(every, "checkpoint_every", int, low=1)
        self.objects: Mapping[str, Any] | None = to_save
        self._last = -1

    def attach(self, engine: Any, to_save: Mapping[str, Any] | None = None) -> "CheckpointSaver":
        """Save ``to_save`` (or the mapping given at construction) on ``engine``'s ``EPOCH_COMPLETED(every)`` and
        ``COMPLETED``; ``engine.state.checkpoint_dir`` names the folder.

        Raises:
            TypeError: no mapping, or an entry without ``state_dict()``.
        """
        from ignite.engine import Events

        objects = to_save if to_save is not None else self.objects
        if not isinstance(objects, Mapping):
            raise TypeError(f"CheckpointSaver({self.save_dir}) has nothing to save: give it a to_save mapping "
                            "(create_trainer(handlers=[...]) hands it the trainer's).")
        for name, obj in objects.items():
            if not callable(getattr(obj, "state_dict", None)):
                raise TypeError(f"CheckpointSaver: to_save[{name!r}] ({type(obj).__name__}) has no state_dict().")
        self.objects = objects
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every) | Events.COMPLETED, self)
        engine.state.checkpoint_dir = str(self.save_dir)
        return self

    def __call__(self, engine: Any) -> None:
        import ignite.distributed as idist

        it = int(engine.state.iteration)
        if it == self._last or self.objects is None:
            return
        self._last = it
        if idist.get_rank() != 0:
            return
        path = self.save_dir / f"{CHECKPOINT_PREFIX}_{it}.pt"
        atomic_save({k: obj.state_dict() for k, obj in self.objects.items()}, path)
        logger.info("saved %s", path)
        self.prune(it)

    def prune(self, current: int) -> list[Path]:
        """Remove all but the newest ``n_saved`` checkpoints up to iteration ``current``; returns those removed."""
        found = find_checkpoints(self.save_dir)
        later = [p for i, p in found if i > current]
        if later:
            logger.warning("%s holds checkpoints of later iterations than %d (%s): left alone.", self.save_dir,
                           current, ", ".join(p.name for p in later[:3]))
        own = [p for i, p in found if i <= current]
        removed = own[:-self.n_saved] if len(own) > self.n_saved else []
        for p in removed:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            logger.info("removed %s (n_saved=%d)", p, self.n_saved)
        for stale in self.save_dir.glob(f".{CHECKPOINT_PREFIX}_*.pt.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return removed


# ---------------------------------------------------------------------------------------------- moved names
def __getattr__(name: str) -> Any:
    """The encoder-file and export names that lived here (:data:`_MOVED`), from their modules."""
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
