"""Per-component parity of a build folder's PyTorch (AOTInductor) packages against the reference.

Two steps, so that the packages are run in a process that never imports presto_ref:

  python scripts/torch_parity.py reference --build DIR --device cuda --out ref.pt
      (imports presto_ref) rebuilds the folder's model from its manifest config and seed, draws
      sample inputs per artifact, and saves them with the eager fp32 reference outputs.
  python scripts/torch_parity.py check --build DIR --reference ref.pt --json parity.json
      (imports only runtime) loads every package with runtime.torch_engine, runs the saved inputs,
      and reports cosine similarity and relative L2 error per component; fails if presto_ref,
      export or calibration got imported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def reference(build: Path, device: str, out: Path, init_seed: int) -> None:
    from export.spec import make_specs
    from export.verify import reference_output
    from presto_ref.checkpoint import random_model
    from presto_ref.config import PrestoConfig
    from runtime.manifest import Manifest

    torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
    torch.backends.cudnn.allow_tf32 = False
    manifest = Manifest.load(build)
    model = random_model(PrestoConfig.from_dict(manifest.config), init_seed).eval()
    arts = [a for a in manifest.artifacts if a.backend == "torch"]
    frames = tuple(sorted({a.frames for a in arts if a.frames}))
    batches = tuple(sorted({a.batch for a in arts}))
    budgets = tuple(sorted({a.budget for a in arts if a.budget is not None}))
    precision = arts[0].precision
    specs = {s.name: s for s in make_specs(model, precision, batches, frames, budgets)}
    model = model.to(device)
    saved = {}
    for art in arts:
        spec = specs[art.file.rsplit("-", 1)[0]]
        inputs = spec.sample_inputs(seed=1, device=device)
        ref = torch.from_numpy(reference_output(model, spec, inputs))  # no_grad inside
        saved[art.file] = {"inputs": [t.cpu() for t in inputs], "reference": ref}
        print(f"reference {art.file}: output {tuple(ref.shape)}", flush=True)
    torch.save(saved, out)


def check(build: Path, ref_path: Path, device: str, json_path: Path | None) -> int:
    from runtime.manifest import Manifest
    from runtime.torch_engine import TorchEngine

    manifest = Manifest.load(build)
    saved = torch.load(ref_path)
    rows = []
    for art in manifest.artifacts:
        if art.backend != "torch":
            continue
        manifest.verify_files(build, [art])
        start = time.perf_counter()
        engine = TorchEngine(build / art.file, device=device)
        load_s = time.perf_counter() - start
        inputs = [t.to(device) for t in saved[art.file]["inputs"]]
        (out,) = engine(*inputs)
        ref = saved[art.file]["reference"].double()
        got = out.double().cpu()
        rel = ((got - ref).norm() / ref.norm()).item()
        cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0).item()
        rows.append(
            {
                "file": art.file,
                "component": art.component,
                "budget": art.budget,
                "precision": art.precision,
                "cosine": cos,
                "rel_l2": rel,
                "max_abs": (got - ref).abs().max().item(),
                "load_s": load_s,
            }
        )
        print(f"{art.file:<40} cos {cos:.6f}  rel L2 {rel:.2e}  load {load_s:.1f} s", flush=True)
    leaked = sorted(
        m for m in sys.modules if m.split(".")[0] in ("presto_ref", "export", "calibration")
    )
    print(f"modules from presto_ref/export/calibration loaded: {leaked or 'none'}")
    if json_path:
        json_path.write_text(json.dumps({"rows": rows, "leaked": leaked}, indent=2))
    return 1 if leaked else 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("step", choices=("reference", "check"))
    p.add_argument("--build", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("reference.pt"))
    p.add_argument("--reference", type=Path, default=Path("reference.pt"))
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--init-seed", type=int, default=0, help="the seed export.build used (--init-seed)"
    )
    args = p.parse_args()
    if args.step == "reference":
        reference(args.build, args.device, args.out, args.init_seed)
        return 0
    return check(args.build, args.reference, args.device, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
