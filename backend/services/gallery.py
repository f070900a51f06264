"""Sample images for the page: a few redistributable photos shipped inside scikit-image's wheel
(``skimage/data``; read as files, scikit-image itself is never imported), plus the deployment's own folder
``SAM_GALLERY_DIR``.

A deployment folder may hold ``gallery.json`` = ``{"file.jpg": {"license": "...", "source": "..."}}`` to
credit its images; files without an entry are listed as provided by the deployment.

Each image is listed with two renditions made once in memory, so the gallery costs a first visit little:
a thumbnail (JPEG covering the 2x-density tile) and, for a lossless original over ``WEB_COPY_MIN_BYTES``, a
web copy (JPEG, same pixel size) that the page opens instead. The original stays at its own URL.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import json
import logging
import os
import re
from pathlib import Path

from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The page shows samples as 120x80 CSS-pixel tiles (web/css: .gallery-list img, object-fit: cover); a
# thumbnail covers that box at 2x pixel density.
THUMBNAIL_COVER = (240, 160)
# Lossless originals above this size get a JPEG web copy (a 512x512 photo: ~0.8 MB as PNG, ~0.1 MB as JPEG).
WEB_COPY_MIN_BYTES = 200_000
LOSSY_FORMATS = {"JPEG", "WEBP"}
RENDITIONS = ("thumbnail", "web")


@dataclasses.dataclass(frozen=True)
class GalleryImage:
    name: str
    path: Path
    license: str
    source: str


# Licences as stated in scikit-image's skimage/data/_fetchers.py docstrings. Its other bundled photos
# (e.g. the Middlebury stereo motorcycle) carry no such grant and are left out.
SKIMAGE_SAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "astronaut.png",
        "Public domain",
        "Eileen Collins, NASA Great Images (https://flic.kr/p/r9qvLn), via scikit-image",
    ),
    ("chelsea.png", "CC0", "Chelsea the cat, photo by Stefan van der Walt, via scikit-image"),
    ("coffee.png", "CC0", "Coffee cup, photo by Rachel Michetti, via scikit-image"),
    (
        "rocket.jpg",
        "Public domain",
        "Falcon 9 launch, SpaceX Photos (https://www.flickr.com/photos/spacexphotos/16511594820/), via scikit-image",
    ),
)


def skimage_data_dir() -> Path | None:
    """scikit-image's bundled data folder, found without importing the package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "data"
    return folder if folder.is_dir() else None


class Gallery:
    """The sample images by name; ``gallery_dir`` adds a deployment's folder (bundled names win on a clash)."""

    def __init__(self, gallery_dir: os.PathLike | None = None) -> None:
        self.gallery_dir = Path(gallery_dir) if gallery_dir else None
        self._images: dict[str, GalleryImage] = {}
        bundled = skimage_data_dir()
        if bundled is None:
            logger.info("scikit-image is not installed: the gallery has no bundled samples")
        else:
            for filename, license_name, source in SKIMAGE_SAMPLES:
                if (bundled / filename).is_file():
                    self._images[filename] = GalleryImage(filename, bundled / filename, license_name, source)
        if self.gallery_dir is not None:
            self._add_folder(self.gallery_dir)

    def _add_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            logger.warning("SAM_GALLERY_DIR=%s is not a directory; ignoring it", folder)
            return
        credits = {}
        credits_file = folder / "gallery.json"
        if credits_file.is_file():
            try:
                credits = json.loads(credits_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                logger.warning("ignoring %s: %s", credits_file, error)
        for path in sorted(folder.iterdir()):
            if not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and SAFE_NAME.match(path.name)):
                continue
            if path.name in self._images:
                logger.warning("gallery image %s clashes with a bundled sample; skipped", path)
                continue
            credit = credits.get(path.name, {}) if isinstance(credits, dict) else {}
            self._images[path.name] = GalleryImage(
                path.name,
                path,
                str(credit.get("license", "provided by this deployment")),
                str(credit.get("source", "SAM_GALLERY_DIR")),
            )

    def listing(self) -> list[dict]:
        """``[{name, url, original, thumbnail, width, height, license, source}]`` for ``GET /api/gallery``.

        ``url`` is what the page opens (the web copy where there is one), ``original`` the file as it is.
        """
        items = []
        for image in self._images.values():
            facts = _image_facts(str(image.path), image.path.stat().st_mtime)
            if facts is None:
                continue
            (width, height), web_copy = facts
            original = f"/gallery/{image.name}"
            items.append(
                {
                    "name": image.name,
                    "url": f"{original}/web.jpg" if web_copy else original,
                    "original": original,
                    "thumbnail": f"{original}/thumbnail.jpg",
                    "width": width,
                    "height": height,
                    "license": image.license,
                    "source": image.source,
                }
            )
        return items

    def rendition(self, name: str, kind: str) -> bytes | None:
        """JPEG bytes of a listed image's ``kind`` ("thumbnail" or "web"), or None when it has none."""
        image = self._images.get(name)
        if image is None or kind not in RENDITIONS:
            return None
        mtime = image.path.stat().st_mtime
        facts = _image_facts(str(image.path), mtime)
        if facts is None or (kind == "web" and not facts[1]):
            return None
        return _render(str(image.path), mtime, kind)

    def path(self, name: str) -> Path | None:
        """The file of a listed image, or None (unknown names never reach the filesystem)."""
        image = self._images.get(name)
        return image.path if image is not None else None


@functools.lru_cache(maxsize=256)
def _image_facts(path: str, mtime: float) -> tuple[tuple[int, int], bool] | None:
    """((width, height), whether it gets a web copy) of an image file, or None when it is unreadable."""
    try:
        with Image.open(path) as image:
            lossless = image.format not in LOSSY_FORMATS and not getattr(image, "is_animated", False)
            return image.size, lossless and os.path.getsize(path) > WEB_COPY_MIN_BYTES
    except (OSError, ValueError) as error:
        logger.warning("gallery image %s is unreadable: %s", path, error)
        return None


@functools.lru_cache(maxsize=64)
def _render(path: str, mtime: float, kind: str) -> bytes:
    """The JPEG rendition of an image file (cached per file version: a handful of KB to ~0.1 MB each)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB") if image.mode != "RGB" else image
        if kind == "thumbnail":
            scale = max(THUMBNAIL_COVER[0] / image.width, THUMBNAIL_COVER[1] / image.height)
            if scale < 1:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.LANCZOS)
            quality, subsampling = 80, "4:2:0"
        else:
            quality, subsampling = 90, "4:4:4"  # close to the original: the mask is computed on these pixels
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality, subsampling=subsampling, optimize=True)
        return out.getvalue()
