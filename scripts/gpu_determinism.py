"""Is run-to-run variation on the GPU from the kernels or from graph capture? And how far is the
compiled DiT from the fp32 reference compared with the eager model in the build's precision?

  python scripts/gpu_determinism.py --engines /tmp/build-presto-ls-bf16 --json det.json

Prints max |diff| of the audio for: the uncaptured chain twice, the CUDA graph replayed twice, replay
against uncaptured; the compiled DiT b0 run twice; then the relative L2 error against the fp32 eager
reference of the compiled DiT and of the eager DiT in the build's precision (presto_ref is imported
only after the runtime ran).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from runtime.pipeline import Pipeline

p = argparse.ArgumentParser()
p.add_argument("--engines", required=True)
p.add_argument("--json", type=Path)
args = p.parse_args()
report: dict = {}
kw = dict(bpm=120.0, duration_s=32.0)
prompt = ["warm lofi hip hop with piano and vinyl crackle"]
eager = Pipeline(args.engines, backend="torch", device="cuda", cuda_graph=False)
graph = Pipeline(args.engines, backend="torch", device="cuda", cuda_graph=True)
precision = eager.manifest.artifacts[0].precision
a = [eager.generate(prompt, seeds=[0], **kw).samples for _ in range(2)]
b = [graph.generate(prompt, seeds=[0], **kw).samples for _ in range(2)]
report["precision"] = precision
report["uncaptured_twice_max_abs"] = float(np.abs(a[0] - a[1]).max())
report["replay_twice_max_abs"] = float(np.abs(b[0] - b[1]).max())
report["replay_vs_uncaptured_max_abs"] = float(np.abs(a[0] - b[0]).max())
report["audio_max_abs"] = float(np.abs(a[0]).max())
print(precision, {k: v for k, v in report.items() if k != "precision"}, flush=True)

art = next(x for x in eager.manifest.artifacts if x.component == "dit" and x.budget == 0)
dit = eager._engine(art)
text, mask = eager.encode_text(prompt)
x = torch.randn(1, 32, 1470, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
sigma, bpm = torch.ones(1, device="cuda"), torch.full((1,), 120.0, device="cuda")
o1, o2 = dit(x, sigma, text, mask, bpm)[0], dit(x, sigma, text, mask, bpm)[0]
report["compiled_dit_twice_max_abs"] = (o1 - o2).abs().max().item()
print("compiled DiT twice, max |diff|", report["compiled_dit_twice_max_abs"], flush=True)

from export.spec import export_model, graph_for  # noqa: E402  (presto_ref only after the runtime)
from presto_ref.checkpoint import random_model  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
model = random_model("presto-ls", 0).cuda().eval()
with torch.no_grad():
    ref = graph_for(model, "dit", 0)(x, sigma, text, mask, bpm)
    low = export_model(model.cpu(), precision).cuda()
    eager_low = graph_for(low, "dit", 0)(x, sigma, text, mask, bpm)


def rel(t: torch.Tensor) -> float:
    return ((t.float() - ref).norm() / ref.norm()).item()


report["dit_b0_rel_l2_compiled"] = rel(o1)
report["dit_b0_rel_l2_eager_same_precision"] = rel(eager_low)
print(
    f"DiT b0 vs fp32 reference: compiled {precision} rel L2 {rel(o1):.3e}, "
    f"eager {precision} rel L2 {rel(eager_low):.3e}",
    flush=True,
)
if args.json:
    args.json.write_text(json.dumps(report, indent=2) + "\n")
