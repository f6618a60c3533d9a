"""Code of the ``mfassl_brats_segmentation`` bundle (torch and MONAI only, so MONAI Label's venv can import it).

``python -m monai.bundle run``, MONAI Label and the model zoo's checks put the bundle folder on ``sys.path``;
``network_def`` in ``configs/*.json`` puts ``bundle_root`` there itself (its ``_requires_``), so ``ckpt_export`` and
``verify_net_in_out`` run from any folder given ``--bundle_root``.
"""
