"""Server configuration, read from environment variables.

Every setting has an environment variable; ``create_app(config={...})`` overrides any of them by field name
(``{"max_upload_bytes": 1000}``) or by variable name (``{"SAM_MAX_UPLOAD_BYTES": 1000}``).

The settings table of the README is generated from the ``help`` of each field below (``config_table()``,
``python -m backend config-table``) and a test keeps the two equal: describe a setting here, once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import limits

from .runtime.encoder_paths import PRECISIONS
from .sam.build import MODEL_TYPES  # One home: the registry of model builders.
from .services.decoders import BUILT_IN as _BUILT_IN_DECODERS

DECODER_CHOICES = tuple(_BUILT_IN_DECODERS)  # One home: the decoders the server exports.
DEVICES_HELP = "auto, cpu, cuda or cuda:N"
ORIGIN_PATTERN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class ConfigError(ValueError):
    """A setting has a value the server cannot use."""


def setting(default: Any, help: str, *, shown: str | None = None) -> Any:
    """A ``Config`` field with its documentation: ``help`` and, when the default is not literal, how it reads."""
    return dataclasses.field(default=default, metadata={"help": help, "shown": shown})


@dataclasses.dataclass
class Config:
    model_type: str = setting("vit_b", "model to serve: `vit_b`, `vit_l`, `vit_h` (= `default`), `vit_t` (MobileSAM)")
    checkpoint: str | None = setting(
        None,
        "path of a checkpoint for `SAM_MODEL_TYPE`; when unset the weights dir is searched, then a download is tried",
    )
    data_dir: str = setting(
        str(Path.home() / ".cache" / "sam-web"),
        "writable directory: downloaded weights (`weights/`), exported decoders (`decoders/`), the generated secret",
        shown="~/.cache/sam-web",
    )
    weights_dir: str | None = setting(
        None, "where checkpoints are looked for and downloaded to", shown="$SAM_DATA_DIR/weights"
    )
    allow_download: bool = setting(
        True,
        "`0` never contacts the network; without a checkpoint the server then runs on seeded random `vit_t` weights",
    )
    device: str = setting("auto", "`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`")
    precision: str = setting(
        "auto",
        "encoder path: `auto` (the fastest within the accuracy bound on this device: bf16 on CUDA, else fp16; bf16 on "
        "CPUs with native bf16 (AVX512-BF16/AMX); on other CPUs, int8 or fp32 (vit_b/l/h, with VNNI) or fused or fp32 "
        "(vit_t) as measured at first start and cached in `$SAM_DATA_DIR/encoder_paths.json`; else fp32), `fp32` "
        "(exact), `fused` (fp32 with oneDNN fused conv/GELU kernels, CPU), `int8` (int8 linear layers, CPU), `bf16`, "
        "`fp16`; all with fused attention",
    )
    cache_bytes: int = setting(512 * 1024 * 1024, "in-memory embedding cache bound in bytes (one embedding is 4 MiB)")
    disk_cache_dir: str | None = setting(
        None,
        "also keep embeddings in this directory (survives restarts, shared by workers); uploads themselves are never written",
    )
    disk_cache_bytes: int = setting(
        4 << 30, "bound of the disk cache directory; least recently used embeddings are deleted beyond it"
    )
    max_upload_bytes: int = setting(25 * 1024 * 1024, "largest accepted request body (25 MiB); larger answers 413")
    max_pixels: int = setting(
        40_000_000, "largest accepted image (width x height) after decoding the header; larger answers 413"
    )
    decode_pixels: int = setting(
        64_000_000,
        "pixels being decoded at once, all uploads together (each pixel costs about 10 bytes while decoding); "
        "beyond it uploads answer 503 with `Retry-After`; at least `SAM_MAX_PIXELS`",
    )
    queue_size: int = setting(
        4,
        "images waiting for the encoder; when full, uploads answer 503 with `Retry-After` at once (keep "
        "`SAM_QUEUE_SIZE + SAM_BATCH_SIZE` below `SAM_THREADS`, so threads stay free for other requests)",
    )
    batch_size: int = setting(4, "most images encoded in one forward pass")
    request_timeout: float = setting(120.0, "seconds an upload waits for its embedding before answering 503")
    secret: str | None = setting(
        None,
        "key for image ids (HMAC of the pixels); when unset a random one is created once in "
        "`$SAM_DATA_DIR/secret.key` so all workers agree",
        shown="generated",
    )
    decoder: str = setting(
        "lowres-quantized",
        "decoder the client uses: `official`, `official-quantized`, `lowres`, `lowres-quantized`, or a path to a "
        "custom ONNX file (official interface)",
    )
    gallery_dir: str | None = setting(
        None, "a folder of the deployment's own sample images, listed at `/api/gallery` next to the bundled ones"
    )
    everything_jobs: int = setting(
        1, "everything-mode jobs that run at once (each decodes a point grid on the server); others queue"
    )
    everything_max_jobs: int = setting(
        32, "everything-mode jobs (running, queued and finished results) kept; past it the oldest finished ones go"
    )
    everything_jobs_per_client: int = setting(
        2, "everything-mode jobs one client may have queued or running; more answer 429 with `Retry-After`"
    )
    upload_rate: str = setting(
        "60/minute", "uploads one client may make (Flask-Limiter syntax, e.g. `10/second;300/hour`); more answer 429"
    )
    everything_rate: str = setting("20/minute", "everything-mode job requests one client may make; more answer 429")
    trusted_proxies: int = setting(
        0,
        "how many proxies in front set `X-Forwarded-For` (1 behind the nginx front of docs/deploy.md); clients "
        "are told apart by the address they give",
    )
    redis_url: str | None = setting(
        None,
        "shared state for several web hosts and workers (e.g. `redis://127.0.0.1:6379/0`): embeddings, everything "
        "jobs and rate-limit counters live there; needs `SAM_SECRET`; run Redis with `--maxmemory-policy allkeys-lru` (docs/deploy.md)",
    )
    redis_ttl: int = setting(86400, "seconds an embedding or job stays in Redis after its last use")
    ray_address: str | None = setting(
        None,
        "a Ray cluster (e.g. `ray://head:10001`) whose encoder deployment (`python -m backend deploy-encoder`) "
        "encodes the uploads instead of this process; needs the `.[cluster]` extra",
    )
    cors_origins: str | None = setting(
        None,
        "origins (comma list, or `*`) whose pages may call `/api/*` and load `/embed/*`, `/js/*`, `/models/*`, "
        "`/vendor/ort/*` (CORS, never with credentials); unset = same origin only (docs/embedding.md)",
    )
    embed_origins: str | None = setting(
        None,
        "origins (comma list, or `*`) whose pages may frame `/embed` and drive it with `postMessage`; unset = none",
    )
    log_level: str = setting("INFO", "Python logging level")
    port: int = setting(5000, "port for `python -m backend serve` and gunicorn (`backend/gunicorn.conf.py`)")
    workers: int = setting(
        1,
        "gunicorn worker processes (each holds one model; with more than one, embeddings are shared through "
        "`SAM_DISK_CACHE_DIR`, default `$SAM_DATA_DIR/embeddings`)",
    )
    threads: int = setting(16, "gunicorn threads per worker")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
        """Reads ``SAM_*`` variables (and ``PORT``) from ``environ``, then applies ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = env_name(field.name)
            if name in environ and environ[name] != "":
                values[field.name] = environ[name]
        for key, value in (overrides or {}).items():
            field_name = key.lower()[4:] if key.upper().startswith("SAM_") else key.lower()
            if field_name not in _FIELD_NAMES:
                continue  # Flask's own keys (TESTING, ...) pass through create_app untouched.
            values[field_name] = value
        config = cls(**{name: _coerce(name, value) for name, value in values.items()})
        config.validate()
        return config

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"SAM_MODEL_TYPE must be one of {', '.join(MODEL_TYPES)}, not {self.model_type!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"SAM_PRECISION must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"SAM_DEVICE must be {DEVICES_HELP}, not {self.device!r}")
        for name in (
            "cache_bytes",
            "disk_cache_bytes",
            "max_upload_bytes",
            "max_pixels",
            "decode_pixels",
            "queue_size",
            "batch_size",
            "everything_jobs",
            "everything_max_jobs",
            "everything_jobs_per_client",
            "workers",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{env_name(name)} must be a positive number, not {getattr(self, name)}")
        if self.trusted_proxies < 0:
            raise ConfigError(f"SAM_TRUSTED_PROXIES must be 0 or more, not {self.trusted_proxies}")
        for name in ("upload_rate", "everything_rate"):
            try:
                limits.parse_many(getattr(self, name))
            except ValueError:
                raise ConfigError(
                    f"{env_name(name)} must be a rate such as 30/minute or 5/second;100/hour, not {getattr(self, name)!r}"
                ) from None
        if self.decode_pixels < self.max_pixels:
            raise ConfigError(
                f"SAM_DECODE_PIXELS ({self.decode_pixels:,}) must be at least SAM_MAX_PIXELS ({self.max_pixels:,})"
            )
        if self.redis_url and not self.secret:
            raise ConfigError(
                "SAM_REDIS_URL is set but SAM_SECRET is not: every web host sharing Redis must key image ids with "
                "the same secret; set SAM_SECRET to one random string on all of them"
            )
        if self.redis_ttl < 1:
            raise ConfigError(f"SAM_REDIS_TTL must be a positive number of seconds, not {self.redis_ttl}")
        if self.request_timeout <= 0:
            raise ConfigError(f"SAM_REQUEST_TIMEOUT must be positive, not {self.request_timeout}")
        if self.decoder not in DECODER_CHOICES and not self.decoder.endswith(".onnx"):
            raise ConfigError(
                f"SAM_DECODER must be one of {', '.join(DECODER_CHOICES)} or a path to an .onnx file, not {self.decoder!r}"
            )
        for name in ("cors_origins", "embed_origins"):
            parse_origins(getattr(self, name), env_name(name))

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """The origins of ``SAM_CORS_ORIGINS`` (``("*",)`` for any), empty when unset."""
        return parse_origins(self.cors_origins, "SAM_CORS_ORIGINS")

    @property
    def embed_origin_list(self) -> tuple[str, ...]:
        """The origins of ``SAM_EMBED_ORIGINS`` (``("*",)`` for any), empty when unset."""
        return parse_origins(self.embed_origins, "SAM_EMBED_ORIGINS")

    @property
    def resolved_weights_dir(self) -> Path:
        return Path(self.weights_dir) if self.weights_dir else Path(self.data_dir) / "weights"

    @property
    def decoders_dir(self) -> Path:
        return Path(self.data_dir) / "decoders"

    @property
    def canonical_model_type(self) -> str:
        return "vit_h" if self.model_type == "default" else self.model_type

    def resolve_secret(self) -> bytes:
        """The image-id key: ``SAM_SECRET``, else one random key persisted in the data dir.

        Created with ``O_EXCL`` so concurrently starting workers end up reading the same key.
        """
        if self.secret:
            return self.secret.encode("utf-8")
        path = Path(self.data_dir) / "secret.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_hex(32))
        for _ in range(50):
            key = path.read_text().strip()
            if key:  # Another worker may be between creating and writing the file.
                return key.encode("utf-8")
            time.sleep(0.02)
        raise ConfigError(f"secret file {path} is empty; delete it or set SAM_SECRET")


_FIELD_NAMES = {field.name for field in dataclasses.fields(Config)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_origins(value: str | None, name: str) -> tuple[str, ...]:
    """``"https://a.org, http://b:8000"`` -> ``("https://a.org", "http://b:8000")``; ``"*"`` -> ``("*",)``.

    An origin is scheme://host[:port] exactly as a browser sends it in ``Origin`` (no path, no trailing slash).
    """
    items = [item.strip() for item in (value or "").split(",") if item.strip()]
    if items == ["*"]:
        return ("*",)
    for item in items:
        if not ORIGIN_PATTERN.fullmatch(item):
            raise ConfigError(
                f"{name} takes `*` or origins like https://tool.example.org or http://127.0.0.1:8000 "
                f"(scheme://host[:port], no path), not {item!r}"
            )
    return tuple(item.lower() for item in items)


def env_name(field_name: str) -> str:
    return "PORT" if field_name == "port" else "SAM_" + field_name.upper()


def _coerce(name: str, value: Any) -> Any:
    field_type = Config.__dataclass_fields__[name].type
    if value is None:
        return None
    try:
        if field_type == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if field_type == "int":
            return int(value)
        if field_type == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{env_name(name)} must be a {field_type}, not {value!r}") from None
    return str(value) if not isinstance(value, os.PathLike) else os.fspath(value)


def config_table() -> str:
    """The README's settings table (markdown), one row per ``Config`` field, in declaration order."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(Config):
        shown = field.metadata["shown"]
        if shown is None:
            default = field.default
            if default is None:
                shown = "unset"
            elif isinstance(default, bool):
                shown = "1" if default else "0"
            elif isinstance(default, float) and default.is_integer():
                shown = str(int(default))
            else:
                shown = str(default)
            shown = shown if shown == "unset" else f"`{shown}`"
        else:
            shown = f"`{shown}`" if shown != "generated" else shown
        rows.append(f"| `{env_name(field.name)}` | {shown} | {field.metadata['help']} |")
    return "\n".join(rows) + "\n"
