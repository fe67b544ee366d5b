"""torch -> ONNX for one `ExportSpec`: pinned opset, static shapes, folded and cleaned graph.

Steps: (1) torch.onnx's dynamo exporter (its onnxscript optimizer already folds most constants);
(2) Polygraphy's `fold_constants` and onnx-graphsurgeon's cleanup and toposort for graphs that fit a
2 GB protobuf; (3) `onnx.checker` on the file. Weights above 2 GB go to one external data file
`<name>.onnx.data` next to the graph. Everything is written under a temporary name and renamed at
the end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from export.spec import ExportSpec
from presto_common.errors import EngineBuildError

log = logging.getLogger(__name__)

OPSET = 18  # ONNX opset of every graph; TensorRT(-RTX) 10/11 and ONNX Runtime 1.18+ parse it
PROTOBUF_LIMIT_BYTES = 2**31 - 2**26  # stay clear of protobuf's 2 GiB message limit
TREESPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    data_path: Path | None  # external weights, only for graphs above the protobuf limit
    size_bytes: int  # graph plus external data
    export_s: float
    opset: int


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_onnx(
    spec: ExportSpec,
    path: Path,
    opset: int = OPSET,
    custom_translation_table: dict | None = None,
) -> OnnxExport:
    """Export `spec` to `path` (a .onnx file); returns what was written.

    custom_translation_table: {torch op: ONNX function} for custom ops in the module, passed to
    torch.onnx's dynamo exporter (export.quant_onnx's fake quantization becomes Q/DQ this way).
    """
    import onnx
    import onnx_graphsurgeon as gs
    from polygraphy.backend.onnx import fold_constants

    start = time.perf_counter()
    external = parameter_bytes(spec.module) > PROTOBUF_LIMIT_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(path.parent / f".{path.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        raw = tmp_dir / path.name
        # 1. Export. The exporter reports progress on stdout; keep it out of ours, and its own
        # deprecation warning (torch 2.13 deep-copies a pytree LeafSpec), which no caller can fix.
        with (
            torch.no_grad(),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", TREESPEC_WARNING, FutureWarning)
            try:
                torch.onnx.export(
                    spec.module.eval(),
                    spec.sample_inputs(),
                    str(raw),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[t.name for t in spec.inputs],
                    output_names=[t.name for t in spec.outputs],
                    external_data=external,
                    optimize=True,
                    verbose=False,
                    custom_translation_table=custom_translation_table,
                )
            except Exception as err:  # the exporter raises many types; keep the cause chained
                raise EngineBuildError(f"ONNX export of {spec.name} failed: {err}") from err
        # 2. Fold and clean what fits in one protobuf.
        model = onnx.load(str(raw))
        if not external:
            model = fold_constants(model, allow_onnxruntime_shape_inference=True)
            graph = gs.import_onnx(model)
            graph.cleanup().toposort()
            model = gs.export_onnx(graph)
            onnx.save(model, str(raw))
        else:
            log.info(
                "%s: %.2f GB of weights, saved as external data; Polygraphy folding skipped",
                spec.name,
                parameter_bytes(spec.module) / 1e9,
            )
        onnx.checker.check_model(str(raw))
        # 3. Move into place: the graph last, so a present .onnx always has its data.
        data = next(tmp_dir.glob("*.data"), None)
        data_path = None
        if data is not None:
            data_path = path.with_name(data.name)
            data.replace(data_path)
        raw.replace(path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    size = path.stat().st_size + (data_path.stat().st_size if data_path else 0)
    return OnnxExport(path, data_path, size, time.perf_counter() - start, opset)
