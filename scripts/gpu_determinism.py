"""Is run-to-run variation on the GPU from the kernels or from graph capture? And how far is the
compiled bf16 DiT from the fp32 reference compared with eager bf16?

  python scripts/gpu_determinism.py --engines /tmp/build-presto-ls-bf16
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from runtime.pipeline import Pipeline

p = argparse.ArgumentParser()
p.add_argument("--engines", required=True)
args = p.parse_args()
kw = dict(bpm=120.0, duration_s=32.0)
prompt = ["warm lofi hip hop with piano and vinyl crackle"]
eager = Pipeline(args.engines, backend="torch", device="cuda", cuda_graph=False)
graph = Pipeline(args.engines, backend="torch", device="cuda", cuda_graph=True)
a = [eager.generate(prompt, seeds=[0], **kw).samples for _ in range(2)]
b = [graph.generate(prompt, seeds=[0], **kw).samples for _ in range(2)]
print(
    "max |diff| uncaptured twice",
    np.abs(a[0] - a[1]).max(),
    "| replay twice",
    np.abs(b[0] - b[1]).max(),
    "| replay vs uncaptured",
    np.abs(a[0] - b[0]).max(),
    flush=True,
)
art = next(x for x in eager.manifest.artifacts if x.component == "dit" and x.budget == 0)
dit = eager._engine(art)
text, mask = eager.encode_text(prompt)
x = torch.randn(1, 32, 1470, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
sigma, bpm = torch.ones(1, device="cuda"), torch.full((1,), 120.0, device="cuda")
o1, o2 = dit(x, sigma, text, mask, bpm)[0], dit(x, sigma, text, mask, bpm)[0]
print("compiled DiT twice, max |diff|", (o1 - o2).abs().max().item(), flush=True)

from export.spec import graph_for  # noqa: E402  (presto_ref only after the runtime ran)
from presto_ref.checkpoint import random_model  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
model = random_model("presto-ls", 0).cuda().eval()
with torch.no_grad():
    ref = graph_for(model, "dit", 0)(x, sigma, text, mask, bpm)
    eager_bf16 = graph_for(model.to(torch.bfloat16), "dit", 0)(x, sigma, text, mask, bpm)
rel = lambda t: ((t.float() - ref).norm() / ref.norm()).item()  # noqa: E731
print(
    f"DiT b0 vs fp32 reference: compiled bf16 rel L2 {rel(o1):.3e}, eager bf16 rel L2 {rel(eager_bf16):.3e}"
)
