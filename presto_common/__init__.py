"""presto_common: the names and rules that more than one package of presto-trt uses.

A leaf: it imports nothing of the project, so `presto_ref`, `export`, `runtime`, `calibration` and
`benchmarks` may all import it (tests/test_import_boundaries.py checks both directions).

    presto_common.errors     the one error tree (`PrestoError` and its subclasses)
    presto_common.names      component, backend and precision names, the toolkit version
    presto_common.schedule   the Karras sigma schedule and the Presto-L sigma-to-budget rule
    presto_common.noise      the per-take noise rule (one CPU generator per take)
    presto_common.tokenizer  the byte-level (ByT5-style) tokenizer
    presto_common.cli        logging flags, the one-line error wrapper, WAV output
"""

from presto_common.names import TOOLKIT_VERSION as __version__

__all__ = ["__version__"]
