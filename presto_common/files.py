"""Reading the project's JSON files (checkpoint configs, manifests) with one-line errors.

A missing file, one that cannot be read, one that is not UTF-8 or not JSON all end in the caller's
`PrestoError` subclass naming the path, what was wrong and the fix, never in a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from presto_common.errors import PrestoError


def read_json(path: Path, error: type[PrestoError], missing: str, fix: str) -> Any:
    """The parsed JSON at `path`; raises `error` with `missing` when there is no such file and with
    the reason plus `fix` when it cannot be read, decoded or parsed."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        reason = f"cannot be read ({err.strerror or err})"
    except UnicodeDecodeError as err:
        reason = f"is not UTF-8 text (byte {err.start})"
    except json.JSONDecodeError as err:
        reason = f"is not valid JSON ({err})"
    raise error(f"{path} {reason}; {fix}")
