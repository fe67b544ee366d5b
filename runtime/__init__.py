"""The lean runtime that runs built engines (not yet implemented: see the runtime issue).

It must never import `presto_ref`, `export` or `calibration`; tests/test_import_boundaries.py checks it.
"""
