"""Encoder paths: the values of SAM_PRECISION, what this device can run, and the path `auto` serves on it.

`auto` decides from the device's capabilities where they settle it (CUDA; CPUs with native bf16), and
otherwise by a short measurement at first start: each candidate path encodes one generated image, the fastest
one whose embedding stays within ``COSINE_BOUND`` of the exact fp32 path wins. The outcome is cached in
``$SAM_DATA_DIR/encoder_paths.json`` under a key of CPU model and flags, torch version, threads and encoder,
so later starts skip the measurement; every decision is logged.

Importing this module does not import torch (``backend.config`` reads ``PRECISIONS`` from here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fused", "int8", "bf16", "fp16")
# What each path computes, as /api/model and the classroom view show it.
LABELS = {
    "fp32": "fp32 + fused attention",
    "fused": "fp32 + fused conv/GELU kernels + fused attention",
    "int8": "int8 linear + fused attention",
    "bf16": "bf16 + fused attention",
    "fp16": "fp16 + fused attention",
}
# A path is served by `auto` only when its embedding keeps this cosine similarity to the fp32 one (the mask
# IoU bound, >= 0.99 over the reference prompts, is checked offline: tests/benchmarks/bench_encoder.py).
COSINE_BOUND = 0.9995
# A measured path must beat fp32 by this factor to be chosen (one run each: leave room for noise). The fused
# path computes float32 too (embedding cosine 1 - 1e-12), so a smaller margin guards it; it does strictly less
# memory traffic than fp32 and measured 1.08-1.16x less CPU time on TinyViT.
MIN_GAIN = 1.1
MIN_GAINS = {"fused": 1.03}
# Encoders whose int8 path meets the accuracy bounds on the reference prompts. MobileSAM's TinyViT does not
# (embedding cosine 0.998 with int8 linear layers), so it is never measured for int8.
# Encoders with a fused path: MobileSAM's TinyViT (as its MobileSamImageEncoder subclass too), whose convolutions
# with BatchNorm and GELU and MLP GELUs run as fused oneDNN kernels (backend/sam/fused_kernels.py).
FUSED_ENCODERS = ("TinyViT", "MobileSamImageEncoder")
# Encoders with an int8 path: vit_b/l/h (all Linear layers but attn.proj), TinyViT (only the layers that keep
# its masks within the bound, on top of the fused path; backend/sam/int8_linear.py).
INT8_ENCODERS = ("ImageEncoderViT", *FUSED_ENCODERS)
CACHE_FILE = "encoder_paths.json"
CACHE_VERSION = 1

# oneDNN ISA names below which it has no native bf16 (ONEDNN_MAX_CPU_ISA caps what oneDNN, hence torch's bf16
# kernels, may use; honouring it lets a bf16 machine stand in for one without).
_ONEDNN_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_ONEDNN_BELOW_AMX = _ONEDNN_BELOW_BF16 | {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512"}
_RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a device offers the encoder. Built by ``detect``; tests build fake ones directly."""

    device_type: str = "cpu"
    cpu_model: str = ""
    cpu_flags: frozenset[str] = frozenset()
    mkldnn: bool = True  # torch has oneDNN (bf16 matrix products on CPU)
    int8_engine: bool = True  # torch has a quantized engine for int8 dynamic Linear (oneDNN or FBGEMM)
    cuda_bf16: bool = False
    torch_version: str = ""
    threads: int = 1

    @property
    def native_bf16(self) -> bool:
        """The CPU computes bf16 products natively; without it oneDNN emulates bf16, slower than fp32."""
        return bool(self.cpu_flags & {"avx512_bf16", "amx_bf16"}) and self.mkldnn

    @property
    def vnni(self) -> bool:
        """int8 dot-product instructions (AVX512-VNNI or AVX-VNNI): u8 x s8 products summed in int32."""
        return bool(self.cpu_flags & {"avx512_vnni", "avx_vnni"})

    def describe(self) -> str:
        """One line for logs and the benchmark: the device and the instruction sets that matter here."""
        if self.device_type == "cuda":
            return f"CUDA ({'bf16' if self.cuda_bf16 else 'no bf16, fp16'})"
        names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI"}
        names |= {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
        present = [label for flag, label in names.items() if flag in self.cpu_flags] or ["none of AVX2/AVX-512"]
        return f"{self.cpu_model or 'unknown CPU'}: {' '.join(present)}"


@dataclasses.dataclass(frozen=True)
class Choice:
    """The path `auto` serves, why, and the measurement behind it (seconds and cosine per path) if any."""

    precision: str
    reason: str
    measured: dict | None = None

    @property
    def label(self) -> str:
        return LABELS[self.precision]


def detect(device_type: str = "cpu") -> Capabilities:
    """This machine's capabilities for ``device_type`` ("cpu" or "cuda")."""
    import torch

    model, flags = _cpuinfo()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in _ONEDNN_BELOW_AMX:
        flags -= {"amx_bf16", "amx_tile", "amx_int8"}
    if cap in _ONEDNN_BELOW_BF16:
        flags -= {"avx512_bf16"}
    return Capabilities(
        device_type=device_type,
        cpu_model=model,
        cpu_flags=frozenset(flags),
        mkldnn=torch.backends.mkldnn.is_available(),
        int8_engine=any(e in torch.backends.quantized.supported_engines for e in ("onednn", "x86", "fbgemm")),
        cuda_bf16=device_type == "cuda" and torch.cuda.is_bf16_supported(),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
    )


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", {}) where there is none (not Linux)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags


def candidates(caps: Capabilities, encoder: str) -> tuple[str, ...]:
    """The paths worth serving on ``caps`` for an encoder class named ``encoder``, best guess first.

    One candidate: the capabilities settle it. More: a measurement decides; the last one is the floor.
    """
    if caps.device_type == "cuda":
        return ("bf16",) if caps.cuda_bf16 else ("fp16",)
    if caps.native_bf16:
        return ("bf16",)
    fused = ("fused",) if caps.mkldnn and encoder in FUSED_ENCODERS else ()
    if caps.vnni and caps.int8_engine and encoder in INT8_ENCODERS:
        return ("int8", *fused, "fp32")
    if fused:
        return (*fused, "fp32")
    # Without VNNI (AVX2 only) the int8 kernels need 7-bit activations and were not measured within the bounds.
    return ("fp32",)


def cache_key(caps: Capabilities, encoder_key: str) -> str:
    """What the measured choice depends on: CPU model and flags, torch version, threads, the encoder."""
    flags = ",".join(sorted(caps.cpu_flags & set(_RELEVANT_FLAGS)))
    text = f"{caps.cpu_model}|{flags}|torch {caps.torch_version}|{caps.threads} threads|{encoder_key}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Measures one path: (precision) -> (seconds, cosine of its embedding to fp32's).
Measure = Callable[[str], tuple[float, float]]


def choose(
    caps: Capabilities, encoder: str, encoder_key: str, measure: Measure, cache_dir: str | os.PathLike | None = None
) -> Choice:
    """The path `auto` serves: from ``caps`` alone, from the cache, or measured (then cached in ``cache_dir``)."""
    paths = candidates(caps, encoder)
    if len(paths) == 1:
        return Choice(paths[0], f"capabilities ({caps.describe()})")
    key = cache_key(caps, encoder_key)
    cache_path = Path(cache_dir) / CACHE_FILE if cache_dir else None
    cached = _read_cache(cache_path).get(key) if cache_path else None
    if _valid_entry(cached, paths):
        return Choice(cached["precision"], f"measured at first start, cached in {cache_path}", cached["measured"])
    logger.info(
        "measuring encoder paths %s for %s on %s (once; a few encoder passes)",
        ", ".join(paths),
        encoder_key,
        caps.describe(),
    )
    measured = _measure_all(paths, measure)
    precision = _fastest_accurate(paths, measured)
    if cache_path:
        _write_cache(cache_path, key, precision, measured, caps, encoder_key)
    where = f"cached in {cache_path}" if cache_path else "not cached"
    return Choice(precision, f"measured now ({where})", measured)


def _measure_all(paths: Iterable[str], measure: Measure) -> dict:
    """Seconds and cosine per path. The floor (fp32) runs last, so any warm-up cost falls on the others."""
    measured = {}
    for precision in paths:
        seconds, cosine = measure(precision)
        measured[precision] = {"seconds": round(float(seconds), 4), "cosine": round(float(cosine), 7)}
    return measured


def _fastest_accurate(paths: tuple[str, ...], measured: dict) -> str:
    """From the floor up (candidates run from least to most exact): a path replaces the best so far only when
    it is within the cosine bound and faster by its margin, so a less exact path must beat the more exact
    ones, not only fp32 (TinyViT's int8 must beat its fused path)."""
    floor = paths[-1]
    best = floor
    for precision in reversed(paths[:-1]):
        entry = measured[precision]
        fast = entry["seconds"] * MIN_GAINS.get(precision, MIN_GAIN) <= measured[best]["seconds"]
        if entry["cosine"] >= COSINE_BOUND and fast:
            best = precision
    return best


def _valid_entry(entry: object, paths: tuple[str, ...]) -> bool:
    if not isinstance(entry, dict) or entry.get("precision") not in paths:
        return False
    measured = entry.get("measured")
    return isinstance(measured, dict) and all(
        isinstance(measured.get(p), dict) and isinstance(measured[p].get("seconds"), (int, float)) for p in paths
    )


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable encoder path cache %s (%s); measuring again", path, error)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        logger.warning("ignoring encoder path cache %s of an unknown format; measuring again", path)
        return {}
    return data["entries"]


def _write_cache(path: Path, key: str, precision: str, measured: dict, caps: Capabilities, encoder_key: str) -> None:
    entries = _read_cache(path)
    entries[key] = {
        "precision": precision,
        "measured": measured,
        "cpu": caps.describe(),
        "torch": caps.torch_version,
        "threads": caps.threads,
        "encoder": encoder_key,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1), encoding="utf-8")
        os.replace(temporary, path)  # atomic: workers starting together never read half a file
    except OSError as error:
        logger.warning("could not cache the encoder path choice in %s (%s); measuring again next start", path, error)


def encoder_key(model) -> str:
    """Names a ``Sam``'s encoder for the cache: its class and parameter count (vit_b, vit_l, vit_h, vit_t differ)."""
    encoder = model.image_encoder
    return f"{type(encoder).__name__}:{sum(p.numel() for p in encoder.parameters())}"


def auto_choice(model, cache_dir: str | os.PathLike | None = None, caps: Capabilities | None = None) -> Choice:
    """The path `auto` serves for ``model`` (a ``Sam`` on its device); measures on it when ``choose`` needs to."""
    caps = caps or detect(model.device.type)
    encoder = type(model.image_encoder).__name__
    return choose(caps, encoder, encoder_key(model), _model_measure(model), cache_dir)


def calibration_input(model):
    """A generated, photo-like image (smooth colour fields, edges, texture) preprocessed for ``model``: [1, 3, S, S]."""
    import numpy as np
    import torch

    size = model.image_size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    red = 128 + 90 * np.sin(7 * x + 3 * y)
    green = 128 + 80 * np.cos(5 * y - 2 * x) * (x > 0.3)
    blue = 200 * ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05) + 25 * np.sin(60 * x) * np.sin(50 * y)
    pixels = np.clip(np.stack([red, green, blue]), 0, 255).round().astype(np.float32)
    return model.preprocess(torch.from_numpy(pixels).to(model.device))[None]


def _model_measure(model) -> Measure:
    """``measure(precision)``: CPU seconds of one encoder pass in that path, and its embedding's cosine to fp32.

    CPU time (all threads) rather than wall time: other work on a shared machine inflates wall time at
    random, while the work a path needs is what tells the paths apart. The fp32 reference embedding is
    computed first (untimed, it also warms the allocator and kernel caches); each other path also runs once
    untimed first, since oneDNN creates (JIT-compiles) its kernels for new shapes at their first call.
    """
    import torch

    x = calibration_input(model)
    reference: list = []

    def measure(precision: str) -> tuple[float, float]:
        with torch.inference_mode():
            if not reference:
                model._apply_precision("fp32")
                reference.append(model.image_encoder(x).flatten().double())
            model._apply_precision(precision)
            if precision != "fp32":
                model.image_encoder(x)
            start = time.process_time()
            out = model.image_encoder(x)
            seconds = time.process_time() - start
        cosine = torch.nn.functional.cosine_similarity(out.flatten().double(), reference[0], dim=0).item()
        logger.info("encoder path %s: %.2f s CPU, embedding cosine %.6f to fp32", LABELS[precision], seconds, cosine)
        return seconds, cosine

    return measure
