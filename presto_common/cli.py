"""What every command-line tool of presto-trt shares: logging flags, the one-line error wrapper,
and WAV output that says when 16-bit samples clip.

Stereo from the mono-to-stereo model is L = M + w S, R = M - w S: the decoder's tanh bounds M, but
L and R may exceed full scale. A 16-bit WAV cannot hold that, so `write_wavs` counts the samples
past full scale, and the CLIs either report them (with the fix) or peak-normalise on request. The
Python APIs return the float audio as computed and never clip.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from presto_common.errors import InputError, OutputError, PrestoError

log = logging.getLogger("presto")

# Third-party loggers that narrate every pass at INFO; -v shows them.
NOISY_LOGGERS = (
    "torch.onnx",
    "torch._dynamo",
    "torch._inductor",
    "torch.export",
    "onnxscript",
    "onnx_ir",  # logs every graph rewrite
)

# Stereo width is the gain w on the side signal (L = M + w S, R = M - w S); 1 is the model's own
# image and 0 is mono. Past 4 the side is 4x what the model predicted and most samples exceed full
# scale; a negative w only swaps L and R. So [0, 4] holds every useful setting and refuses typos
# such as 1e30, which would clip every sample.
WIDTH_RANGE = (0.0, 4.0)

# Output suffixes the writers produce: `write_wavs` always writes WAV data.
OUTPUT_SUFFIXES = (".wav",)

# cpu, cuda or cuda:N, the device names the CLIs accept.
_DEVICE_RE = re.compile(r"cpu|cuda(:[0-9]+)?")

# Peak normalisation leaves this much headroom below full scale (-0.1 dBFS).
NORMALIZE_PEAK = 10 ** (-0.1 / 20)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")


def setup_logging(args: argparse.Namespace) -> None:
    """Root logging at INFO (-v: DEBUG, -q: WARNING), third-party chatter at ERROR unless -v."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.ERROR)


def run_main(body: Callable[[], list[Path]], argv: list[str], resolved: dict) -> int:
    """Run a CLI body: log the command and resolved settings, turn a PrestoError into one line and
    exit code 1, and end with OK or FAILED, the wall time and the output paths."""
    log.info("command: %s", json.dumps({"argv": argv, **resolved}, default=str))
    start = time.perf_counter()
    try:
        outputs = body()
    except PrestoError as err:
        print(f"error: {err}", file=sys.stderr)
        log.info("FAILED after %.1f s", time.perf_counter() - start)
        return 1
    log.info("OK in %.1f s: %s", time.perf_counter() - start, ", ".join(str(p) for p in outputs))
    return 0


# --- Up-front checks shared by the CLIs: each raises a PrestoError naming the value and the fix.


def check_width(width: float) -> float:
    """`width` if finite and within WIDTH_RANGE; InputError otherwise."""
    lo, hi = WIDTH_RANGE
    if not (math.isfinite(width) and lo <= width <= hi):
        raise InputError(
            f"--width {width} is outside [{lo:g}, {hi:g}] (1 is the model's stereo width, 0 mono); "
            "pass e.g. --width 1"
        )
    return float(width)


def host_available_bytes() -> int | None:
    """Host memory free for a new allocation, bytes: MemAvailable (Linux); None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_device(name: str) -> str:
    """`name` if it is cpu, cuda or cuda:N, and that CUDA device exists; InputError otherwise."""
    if not _DEVICE_RE.fullmatch(name):
        raise InputError(f"--device {name!r} is not a device name; expected cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        import torch  # imported here: only a CUDA request needs it

        index = int(name.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise InputError(
                f"--device {name} asked for, but this machine has {count} CUDA device(s); "
                "use --device cpu" + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    return name


def check_seeds(seed: int, num_takes: int) -> None:
    """Seeds seed..seed+num_takes-1 all in [0, 2**63 - 1]; InputError naming the flag otherwise."""
    from presto_common.noise import SEED_MAX  # noise imports torch; keep this module light

    if num_takes < 1:
        raise InputError(f"--num-takes={num_takes} must be >= 1")
    if not 0 <= seed <= SEED_MAX - (num_takes - 1):
        last = "" if num_takes == 1 else f" (and seed + num_takes - 1 = {seed + num_takes - 1})"
        raise InputError(
            f"--seed {seed}{last} is outside [0, 2**63 - 1]; pass a seed in that range, e.g. --seed 0"
        )


def check_output(path: Path, *, forbidden_dir: Path | None = None) -> None:
    """Check before any work that `path` can be written: a .wav name that is not a folder, in an
    existing writable folder, outside `forbidden_dir` (e.g. the build folder being read).

    Raises OutputError naming the path and the fix.
    """
    try:
        if path.is_dir():
            raise OutputError(f"-o {path} is a folder; give a file name such as {path / 'out.wav'}")
        if path.suffix.lower() not in OUTPUT_SUFFIXES:
            ends = f"ends in {path.suffix!r}" if path.suffix else "has no extension"
            raise OutputError(
                f"-o {path}: the output is written as WAV, but the name {ends}; "
                f"name it {path.stem or 'out'}.wav"
            )
        if forbidden_dir is not None:
            resolved, forbidden = path.resolve(), forbidden_dir.resolve()
            if resolved == forbidden or forbidden in resolved.parents:
                raise OutputError(
                    f"-o {path} is inside the build folder {forbidden_dir}, which this command "
                    "only reads; write the audio elsewhere, e.g. -o out.wav"
                )
    except (OSError, ValueError) as err:  # a name too long, a NUL byte: not a usable path
        raise OutputError(f"-o {path!s:.80}: not a usable path ({err}); choose another") from None
    check_writable_folder(path.parent, "-o")


def check_request_flags(args: argparse.Namespace, *, forbidden_dir: Path | None = None) -> None:
    """The up-front checks of the `add_request_flags` values, one rule for both generate CLIs:
    seeds, width and -o (each take's folder and suffix; never inside `forbidden_dir`)."""
    check_seeds(args.seed, args.num_takes)
    check_width(args.width)
    check_output(args.output, forbidden_dir=forbidden_dir)


def check_outputs(paths: Sequence[Path], *, forbidden_dir: Path | None = None) -> None:
    """`check_output` for each of `paths` (one per take)."""
    for path in paths:
        check_output(path, forbidden_dir=forbidden_dir)


def check_json_output(path: Path) -> None:
    """Like `check_output` for a JSON result file (--json): not a folder, in a writable folder."""
    if _is_dir(path, "--json", "path"):
        raise OutputError(f"--json {path} is a folder; give a file name such as {path / 'r.json'}")
    check_writable_folder(path.parent, "--json")


def _is_dir(path: Path, flag: str, what: str) -> bool:
    """path.is_dir(); a name the OS cannot take (too long, a NUL byte) is an OutputError."""
    try:
        return path.is_dir()
    except (OSError, ValueError) as err:
        raise OutputError(
            f"{flag} {path!s:.80}: not a usable {what} ({err}); choose another"
        ) from None


def check_writable_folder(folder: Path, flag: str) -> None:
    """OutputError unless `folder` exists and a file can be created in it.

    Probed by creating and removing a temporary file, which is what the write will do (permission
    bits alone miss root, ACLs and read-only mounts).
    """
    if not _is_dir(folder, flag, "folder"):
        raise OutputError(f"{flag}: output folder {folder} does not exist; create it first")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".presto-write-check-"):
            pass
    except OSError as err:
        raise OutputError(
            f"{flag}: output folder {folder} is not writable ({err.strerror}); "
            f"choose another {flag} path"
        ) from None
    except ValueError as err:  # a NUL byte in the name
        raise OutputError(
            f"{flag} {folder!s:.80}: not a usable folder ({err}); choose another"
        ) from None


def add_request_flags(parser: argparse.ArgumentParser, default_duration: str) -> None:
    """The flags of a generation request, shared by `presto_ref.generate` and `runtime.generate`:
    prompt, -o, --bpm, --duration-s, --seed, --num-takes, --steps, --rho, --cfg, --mono, --width,
    and the WAV flags. `default_duration` says in the help what no --duration-s means."""
    parser.add_argument("prompt", help="text prompt describing the music")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="PATH",
        help=".wav path; with --num-takes N > 1, takes go to PATH_0.wav ... PATH_{N-1}.wav",
    )
    parser.add_argument("--bpm", type=float, default=120.0, help="beats per minute (default 120)")
    parser.add_argument(
        "--duration-s",
        type=float,
        default=None,
        metavar="S",
        help=f"seconds of audio, rounded to whole 960-sample frames (default: {default_duration})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first take (default 0)")
    parser.add_argument(
        "--num-takes",
        type=int,
        default=1,
        metavar="N",
        help="takes of the prompt in one batch, seeds seed..seed+N-1 (default 1)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the model's)"
    )
    parser.add_argument(
        "--rho", type=float, default=None, help="Karras schedule rho >= 1 (default: the model's, 7)"
    )
    parser.add_argument(
        "--cfg",
        type=float,
        default=None,
        metavar="LAMBDA",
        help="CFG++ guidance in [0, 1] for the dpmpp-2s sampler (default: the model's, 0.8)",
    )
    parser.add_argument(
        "--mono", action="store_true", help="write mono; skip the mono-to-stereo model"
    )
    parser.add_argument(
        "--width",
        type=float,
        default=1.0,
        help="stereo width: gain on the side, in [0, 4] (default 1)",
    )
    add_wav_flags(parser)


def add_wav_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--float-wav", action="store_true", help="write 32-bit float WAV instead of 16-bit PCM"
    )
    parser.add_argument(
        "--normalize",
        action="store_true",
        help="scale each take so its peak is -0.1 dBFS (default: write as computed and report "
        "how many 16-bit samples clip)",
    )


def take_paths(output: Path, num_takes: int) -> list[Path]:
    """out.wav for one take; out_0.wav, out_1.wav, ... for several."""
    if num_takes == 1:
        return [output]
    suffix = output.suffix or ".wav"
    return [output.with_name(f"{output.stem}_{i}{suffix}") for i in range(num_takes)]


def peak_normalize(audio: np.ndarray) -> np.ndarray:
    """Each take (N, C, T) scaled so its absolute peak is NORMALIZE_PEAK (silent takes unchanged)."""
    peak = np.abs(audio).reshape(audio.shape[0], -1).max(axis=1)
    gain = np.where(peak > 0, NORMALIZE_PEAK / np.maximum(peak, 1e-30), 1.0)
    return (audio * gain[:, None, None]).astype(np.float32)


def clipped_samples(audio: np.ndarray) -> int:
    """How many samples of (N, C, T) lie outside [-1, 1], where a 16-bit WAV clips them."""
    return int(np.count_nonzero(np.abs(audio) > 1.0))


def write_wavs(
    paths: Sequence[Path],
    audio: np.ndarray,
    sample_rate: int,
    *,
    float_wav: bool = False,
    normalize: bool = False,
) -> None:
    """Write takes (N, C, T) float as WAVs through soundfile, PCM_16 unless `float_wav`.

    Without `normalize`, a 16-bit file of samples past full scale is written clipped and a warning
    says how many and how to avoid it; float WAVs keep them. Each file is written under a temporary
    name and all are renamed at the end, so a failure leaves no partial WAV behind. The caller has
    checked that every take is finite.
    """
    import soundfile  # imported here: only the CLIs write files

    if normalize:
        audio = peak_normalize(audio)
    elif not float_wav and (n := clipped_samples(audio)):
        log.warning(
            "%d of %d samples exceed full scale and are clipped in the 16-bit WAV (peak %.3f); "
            "pass --normalize to scale them down or --float-wav to keep them",
            n,
            audio.size,
            float(np.abs(audio).max()),
        )
    tmp_paths = [p.with_name(f".{p.name}.partial") for p in paths]
    try:
        for tmp, take in zip(tmp_paths, audio):
            soundfile.write(
                str(tmp),
                np.ascontiguousarray(take.T),
                sample_rate,
                subtype="FLOAT" if float_wav else "PCM_16",
                format="WAV",
            )
        for tmp, path in zip(tmp_paths, paths):
            tmp.replace(path)
    finally:
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)
