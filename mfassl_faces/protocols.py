"""The standard train/test splits of the landmark data sets, read from their distributed folder layouts.

**300W** (Sagonas et al., 300 Faces in-the-Wild, 2013; the split of Ren et al., CVPR 2014, that later
papers report), from the iBUG layout (the ``300W`` annotations as iBUG distributes them, also dlib's
``ibug_300W_large_face_landmark_dataset``), every image beside its ``.pts``::

    ROOT/afw/                 337 faces  } train: 3148
    ROOT/helen/trainset/     2000 faces  }
    ROOT/lfpw/trainset/       811 faces  }
    ROOT/helen/testset/       330 faces  } common subset: 554  } full set: 689
    ROOT/lfpw/testset/        224 faces  }                     }
    ROOT/ibug/                135 faces    challenging subset: 135
    ROOT/300W/01_Indoor/      300 faces  } private test set (optional): 600
    ROOT/300W/02_Outdoor/     300 faces  }

- protocol ``300w``: train on the train set; test on the full set, with the flags ``common`` and
  ``challenging`` on each test face so that the report gives the common, challenging and full NME
  of one model, as papers tabulate them;
- protocol ``300w-private``: train on all 3837 public faces (train and full set, the 300W
  competition's training data) and test on the private set (flags ``indoor`` and ``outdoor``).

A missing folder raises :class:`~mfassl_faces.errors.FaceDataError` naming it; a folder holding
another number of faces than the standard one is used with a warning (a partial download).
Faces carry no box here: the benchmark crops around the ground-truth landmarks, as papers do on
300W (:func:`~mfassl_faces.readers.face_box`).

The protocols are chosen by name from :data:`LANDMARK_PROTOCOLS` (:func:`read_protocol`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mfassl.registry import Registry
from mfassl_faces.errors import FaceDataError
from mfassl_faces.readers import LandmarkRecord, read_300w_folder

__all__ = ["LandmarkSplit", "LANDMARK_PROTOCOLS", "PROTOCOL_NAMES", "IBUG_300W_FOLDERS", "IBUG_300W_COUNTS",
           "read_300w_part", "read_300w_split", "read_protocol"]

logger = logging.getLogger(__name__)

#: the 300W parts and their folders under the iBUG root
IBUG_300W_FOLDERS = {
    "afw": "afw", "helen_train": "helen/trainset", "lfpw_train": "lfpw/trainset",
    "helen_test": "helen/testset", "lfpw_test": "lfpw/testset", "ibug": "ibug",
    "indoor": "300W/01_Indoor", "outdoor": "300W/02_Outdoor",
}
#: the number of faces of each part in the standard distribution
IBUG_300W_COUNTS = {"afw": 337, "helen_train": 2000, "lfpw_train": 811, "helen_test": 330, "lfpw_test": 224,
                    "ibug": 135, "indoor": 300, "outdoor": 300}
#: the protocol names (written out so that ``--help`` imports nothing)
PROTOCOL_NAMES = ("300w", "300w-private")


@dataclass
class LandmarkSplit:
    """A data set's standard split.

    Attributes:
        name: the protocol (``300w``...).
        schema: the landmark layout.
        train: the training faces.
        test: the test faces, each with 0/1 ``attributes`` for the named ``subsets``.
        subsets: the test subsets in report order (e.g. ``("common", "challenging")``).
        counts: faces read per part (``{"afw": 337, ...}``).
    """

    name: str
    schema: str
    train: list[LandmarkRecord]
    test: list[LandmarkRecord]
    subsets: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)


def read_300w_part(root: str | os.PathLike, part: str) -> list[LandmarkRecord]:
    """The faces of one 300W part (a key of :data:`IBUG_300W_FOLDERS`) under the iBUG ``root``.

    Raises:
        FaceDataError: the folder is missing or holds no annotated image (names it).
    """
    folder = Path(root) / IBUG_300W_FOLDERS[part]
    if not folder.is_dir():
        raise FaceDataError(f"the 300W split needs this folder ({part}); the layout is ROOT/afw, ROOT/helen/trainset, "
                            "ROOT/helen/testset, ROOT/lfpw/trainset, ROOT/lfpw/testset, ROOT/ibug "
                            "(and ROOT/300W/01_Indoor, ROOT/300W/02_Outdoor for the private set).", folder)
    records = read_300w_folder(folder)
    if not records:
        raise FaceDataError(f"no image with a .pts beside it in this 300W folder ({part}).", folder)
    if len(records) != IBUG_300W_COUNTS[part]:
        logger.warning("%s: %d faces, the standard 300W %s has %d.", folder, len(records), part,
                       IBUG_300W_COUNTS[part])
    return records


def _flagged(records: list[LandmarkRecord], flags: dict[str, int]) -> list[LandmarkRecord]:
    for r in records:
        r.attributes = dict(flags)
    return records


def read_300w_split(root: str | os.PathLike, private: bool = False) -> LandmarkSplit:
    """The 300W split (module docstring): protocol ``300w``, or ``300w-private`` with ``private=True``.

    Args:
        root: the iBUG root holding ``afw/``, ``helen/``, ``lfpw/``, ``ibug/`` (and ``300W/``).
        private: test on the private set (``300W/01_Indoor``, ``300W/02_Outdoor``), training on all public faces.
    """
    public = ("afw", "helen_train", "lfpw_train", "helen_test", "lfpw_test", "ibug")
    parts = {p: read_300w_part(root, p) for p in public}
    train = parts["afw"] + parts["helen_train"] + parts["lfpw_train"]
    if not private:
        test = (_flagged(parts["helen_test"] + parts["lfpw_test"], {"common": 1, "challenging": 0})
                + _flagged(parts["ibug"], {"common": 0, "challenging": 1}))
        return LandmarkSplit("300w", "ibug68", train, test, ("common", "challenging"),
                             {k: len(v) for k, v in parts.items()})
    for p in ("indoor", "outdoor"):
        parts[p] = read_300w_part(root, p)
    train += parts["helen_test"] + parts["lfpw_test"] + parts["ibug"]
    test = (_flagged(parts["indoor"], {"indoor": 1, "outdoor": 0})
            + _flagged(parts["outdoor"], {"indoor": 0, "outdoor": 1}))
    return LandmarkSplit("300w-private", "ibug68", train, test, ("indoor", "outdoor"),
                         {k: len(v) for k, v in parts.items()})


LANDMARK_PROTOCOLS: Registry[LandmarkSplit] = Registry("landmark protocol")
LANDMARK_PROTOCOLS.register("300w", lambda root: read_300w_split(root))
LANDMARK_PROTOCOLS.register("300w-private", lambda root: read_300w_split(root, private=True))


def read_protocol(name: str, root: str | os.PathLike) -> LandmarkSplit:
    """The split of protocol ``name`` (:data:`PROTOCOL_NAMES`) from the data set folder ``root``."""
    split = LANDMARK_PROTOCOLS.create(name, root=root)
    logger.info("%s split of %s: %d train, %d test faces (%s)", name, root, len(split.train), len(split.test),
                split.counts)
    return split
