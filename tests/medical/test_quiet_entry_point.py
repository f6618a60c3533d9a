"""``python -m mfassl_medical`` leaves out the warnings MONAI gives on every machine without nvImageCodec (its
optional GPU DICOM decoder). Before, every medical command printed
"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully ..."."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def test_the_medical_command_line_prints_no_known_harmless_warning(tmp_path):
    import nibabel

    image = tmp_path / "vol.nii.gz"
    rng = np.random.default_rng(0)
    nibabel.save(nibabel.Nifti1Image(rng.random((24, 20, 16)).astype(np.float32), np.eye(4)), str(image))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "mfassl_medical", "axis", str(image), "--json"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nvImageCodec" not in proc.stderr and "nvimgcodec" not in proc.stderr, proc.stderr[-2000:]
    assert '"normal"' in proc.stdout or "axis" in proc.stdout

