"""Code of the ``mfassl_brats_segmentation`` bundle (torch and MONAI only, so MONAI Label's venv can import it).

``python -m monai.bundle run``, MONAI Label and the model zoo's checks put the bundle folder on ``sys.path``;
for ``python -m monai.bundle ckpt_export`` / ``verify_net_in_out`` run them from the bundle folder (``python -m``
adds the working folder) or set ``PYTHONPATH`` to it.
"""
