"""Synthetic demo data in the real BraTS and CheXpert layouts, built offline from packaged samples.

Nothing is downloaded. The brain set comes from nilearn's symmetric MNI152 2009a template (T1, grey
and white matter maps, 2 mm), the chest set from pydicom-data's ``RG1_UNCI.dcm`` (one real PA chest
radiograph). Every case gets a known random rigid transform, per-modality intensity changes and,
for most cases, a synthetic lesion/opacity on one side; the side and the transform are written to
ground-truth tables. The data is built once into a cache folder and reused while its manifest
(version, seed, sizes) matches; it is deterministic by seed.

Modules: :mod:`~mfassl_medical.demo_data.brain` (the BraTS cases), :mod:`~mfassl_medical.demo_data.chest` (the
CheXpert images), :mod:`~mfassl_medical.demo_data.synth` (transforms, noise and resampling both use),
:mod:`~mfassl_medical.demo_data.store` (the folder, manifest, lock, README and truth tables) and
:mod:`~mfassl_medical.demo_data.build` (:func:`build_demo_data`).

Layout under ``root`` (default :func:`default_demo_root`)::

    README.md                  what the data is and what its labels mean
    manifest.json              version, seed, sizes, file list
    BraTS2021/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz
    brats_truth.csv / .json    per case: lesion side, rigid transform, true mid-sagittal plane
    CheXpert-v1.0-small/{train,valid}.csv
    CheXpert-v1.0-small/{train,valid}/patient00001/study1/view1_frontal.png
    chexpert_truth.csv / .json per image: opacity side, rotation/shift/scale, true midline

Example::

    from mfassl_medical.demo_data import build_demo_data
    from mfassl_medical.data import find_brats_cases, read_chexpert
    paths = build_demo_data()
    cases = find_brats_cases(paths.brats)
    images = read_chexpert(paths.chexpert, "train")
"""

from mfassl_medical.demo_data.build import build_demo_data, dataset_dir_or_demo
from mfassl_medical.demo_data.store import DEMO_VERSION, DemoPaths, default_demo_root
from mfassl_medical.demo_data.synth import rigid_matrix

__all__ = ["DEMO_VERSION", "DemoPaths", "default_demo_root", "build_demo_data", "dataset_dir_or_demo", "rigid_matrix"]
