"""Server configuration, read from environment variables.

Every setting has an environment variable; ``create_app(config={...})`` overrides any of them by field name
(``{"max_upload_bytes": 1000}``) or by variable name (``{"SAM_MAX_UPLOAD_BYTES": 1000}``).

The settings table of the README is generated from the ``help`` of each field below (``config_table()``,
``python -m backend config-table``) and a test keeps the two equal: describe a setting here, once.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_t", "default")
DECODER_CHOICES = ("official", "official-quantized", "lowres", "lowres-quantized")
DEVICES_HELP = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
        "encoder precision: `auto` (the model's choice per device: bf16 on CUDA, else fp16; bf16 on CPUs with native "
        "bf16 (AVX512-BF16/AMX); else fp32), `fp32`, `bf16`, `fp16`",
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
    queue_size: int = setting(8, "images waiting for the encoder; when full, uploads answer 503 with `Retry-After`")
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
    log_level: str = setting("INFO", "Python logging level")
    port: int = setting(5000, "port for `python -m backend serve` and gunicorn (`backend/gunicorn.conf.py`)")
    workers: int = setting(
        1,
        "gunicorn worker processes (each holds one model; with more than one, embeddings are shared through "
        "`SAM_DISK_CACHE_DIR`, default `$SAM_DATA_DIR/embeddings`)",
    )
    threads: int = setting(8, "gunicorn threads per worker")

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
            "queue_size",
            "batch_size",
            "everything_jobs",
            "everything_max_jobs",
            "workers",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{env_name(name)} must be a positive number, not {getattr(self, name)}")
        if self.request_timeout <= 0:
            raise ConfigError(f"SAM_REQUEST_TIMEOUT must be positive, not {self.request_timeout}")
        if self.decoder not in DECODER_CHOICES and not self.decoder.endswith(".onnx"):
            raise ConfigError(
                f"SAM_DECODER must be one of {', '.join(DECODER_CHOICES)} or a path to an .onnx file, not {self.decoder!r}"
            )

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
