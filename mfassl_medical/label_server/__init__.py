"""Files of the MONAI Label app that :mod:`mfassl_medical.label_app` prepares.

They run inside the MONAI Label venv (``.venv-label``, monailabel 0.8.5), not in the project venv:
``prepare_label_app`` copies them into ``<workdir>/apps/mfassl/``:

- ``ids.py`` -> ``mfassl_ids.py``: the image id / label tag rules and the two request errors (pure Python, also
  importable here);
- ``guards.py`` -> ``mfassl_guards.py``: the ASGI guard that answers only this server's ``Host`` names and refuses
  state-changing requests from foreign ``Origin``s (pure Python, also importable here);
- ``labels.py`` -> ``mfassl_labels.py``: what an uploaded label must be (a NIfTI on its image's grid with the
  bundle's label values; nibabel and numpy, also importable here);
- ``app_main.py`` -> ``main.py``: the app class (``MFASSLLabelApp``) with its studies datastore
  (``StudiesDatastore``) that refuses ids naming anything outside the studies folder;
- ``app_asgi.py`` -> ``mfassl_asgi.py``: the ASGI application the server runs (``--uvicorn_app mfassl_asgi:app``):
  MONAI Label's FastAPI app with the host/origin guard, loopback-only CORS, a query-id guard and 400/403/404
  answers.

Nothing in the project imports ``app_main`` or ``app_asgi`` (they need monailabel).
"""

TEMPLATE_FILES = {"ids.py": "mfassl_ids.py", "guards.py": "mfassl_guards.py", "labels.py": "mfassl_labels.py",
                  "app_main.py": "main.py", "app_asgi.py": "mfassl_asgi.py"}
"""Template file in this folder -> file name inside the prepared app."""

__all__ = ["TEMPLATE_FILES"]
