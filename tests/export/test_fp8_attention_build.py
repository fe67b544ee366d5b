"""`export.build --fp8-attention` on the CPU: the FP8 DiT package that calls presto::attention_fp8
says so in its metadata, a process holding only `runtime` registers the op and runs it, and a
package calling an op this runtime lacks is refused (the flag's refusals are in
tests/export/test_quantization_flags.py, the op itself in tests/runtime/test_fp8_attention.py).

Run: python -m pytest tests/export/test_fp8_attention_build.py

The calibrations (tiny preset) come from tests/conftest.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from export.builders import QDQ_PARITY_BOUND
from export.plan import plan_build
from presto_common.errors import ArtifactError
from presto_ref.dit import blocks_for_budget
from presto_ref.presets import get_preset

TINY = get_preset("tiny")


def test_torch_builder_compiles_fp8_attention_that_the_runtime_loads(
    calibrations, tiny_model, tmp_path
):
    """`--fp8-attention`: the FP8 DiT package calls presto::attention_fp8 once per quantized
    block, says so in its metadata, and a process that imports only `runtime` registers the op
    from that metadata, loads the package and computes what the eager module does."""
    import subprocess
    import sys

    from export.builders import BuildContext, build_torch, quantized_torch_module
    from export.quant_scales import load_calibration
    from export.spec import make_specs
    from export.verify import compare
    from runtime.torch_engine import META_CUSTOM_OPS, read_package_metadata

    options = {"quantization": "fp8", "calibration": calibrations["fp8"], "fp8_attention": True}
    plan = plan_build(TINY, backends=("torch",), durations_s=(1.0,), budgets=(1,), **options)
    calibration = load_calibration(calibrations["fp8"])
    (spec,) = make_specs(
        tiny_model, "fp32", (1,), plan.frames, (1,), components=("dit",), calibration=calibration
    )
    ctx = BuildContext(plan, tiny_model, tmp_path, None, calibration)
    with torch.no_grad():
        name, details = build_torch(spec, ctx)
        module, _ = quantized_torch_module(spec, ctx)
        inputs = spec.sample_inputs(0)
        want = module(*inputs)  # the op's fp32 reference, eagerly
    num_blocks = len(blocks_for_budget(TINY.dit.num_blocks, 1))
    assert details["fp8_attention_blocks"] == num_blocks
    path = tmp_path / name
    metadata = read_package_metadata(path)
    assert json.loads(metadata[META_CUSTOM_OPS]) == ["presto::attention_fp8"]
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import sys, torch\n"
        "from runtime.torch_engine import TorchEngine\n"
        f"engine = TorchEngine({str(path)!r})\n"
        f"(out,) = engine(*torch.load({str(tmp_path / 'inputs.pt')!r}))\n"
        f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n"
        "assert not {'export', 'presto_ref', 'calibration'} & set(sys.modules), 'not runtime only'\n"
        "print(engine.custom_ops)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "presto::attention_fp8" in done.stdout
    parity = compare(want.float().numpy(), torch.load(tmp_path / "out.pt").float().numpy())
    # The same E4M3 roundings and the op's fp32 reference as the eager module, in Inductor's
    # kernels: measured rel L2 2.1e-7. The bound is the build's own for a quantized graph against
    # its eager module (QDQ_PARITY_BOUND): room for a value rounded across one 8-bit step, not for
    # a wrong scale, a missing op registration or attention to the padded keys.
    assert parity.rel_l2 < QDQ_PARITY_BOUND, parity


def test_a_package_calling_an_op_this_runtime_lacks_is_refused(tmp_path):
    from runtime.torch_engine import META_CUSTOM_OPS, register_custom_ops

    metadata = {META_CUSTOM_OPS: json.dumps(["presto::attention_fp4"])}
    with pytest.raises(ArtifactError, match="custom op presto::attention_fp4, which this runtime"):
        register_custom_ops(tmp_path / "x.pt2", metadata, torch.device("cpu"))
    assert register_custom_ops(tmp_path / "x.pt2", {}, torch.device("cpu")) == []
