"""The ``file`` landmark source: dataset annotations, a landmark file per image (``.pts``, ``.npy``,
``.json``, text), read by :func:`mfassl_faces.io.read_landmark_file`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import read_landmark_file
from mfassl_faces.schemas import LandmarkSchema, get_schema, schema_for_count
from mfassl_faces.sources.base import LANDMARK_SOURCES, Face, LandmarkSource, landmark_extent

__all__ = ["FileLandmarks"]


@LANDMARK_SOURCES.register("file")
class FileLandmarks(LandmarkSource):
    """Landmarks from annotation files.

    Args:
        path: one landmark file used for every image, or a folder holding ``<image stem>.<suffix>``;
            None: the file beside each image (``<image stem>.pts``, then ``.npy``, ``.json``, ``.txt``).
        schema: the expected layout (None: any of 98, 68 or 5 points).
    """

    name = "file"
    suffixes = (".pts", ".npy", ".json", ".txt")

    def __init__(self, path: str | os.PathLike | None = None, schema: str | LandmarkSchema | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.schema = None if schema is None else get_schema(schema)

    def _find(self, image_path: str | os.PathLike | None) -> Path:
        if self.path is not None and not self.path.is_dir():
            return self.path
        if image_path is None:
            raise FaceDataError("the 'file' landmark source needs the image path or a landmark file.")
        ip = Path(image_path)
        folder = self.path if self.path is not None else ip.parent
        for suffix in self.suffixes:
            cand = folder / (ip.stem + suffix)
            if cand.is_file():
                return cand
        raise FaceDataError(f"no landmark file {ip.stem}{{{','.join(self.suffixes)}}} in {folder}.", ip)

    def detect(self, image: np.ndarray, path: str | os.PathLike | None) -> list[Face]:
        lm_path = self._find(path)
        pts = read_landmark_file(lm_path)
        try:
            schema = self.schema or schema_for_count(pts.shape[0])
            schema.check(pts, str(lm_path))
        except ValueError as err:
            raise FaceDataError(f"wrong landmark count: {err}", lm_path) from err
        box, size = landmark_extent(pts)
        return [Face(pts, schema.name, box=box, size=size, info={"file": str(lm_path)})]
