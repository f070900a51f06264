"""Photos for the Firefox suite, made from a sample image: one larger than the model side and one stored
sideways with an EXIF rotation, as phones save portrait photos.

    python make_images.py SAMPLE OUT_DIR
writes OUT_DIR/large.jpg (1800x1200) and OUT_DIR/portrait.jpg (stored 600x400 with EXIF orientation 6).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

EXIF_ORIENTATION = 0x0112
ROTATE_90_CLOCKWISE = 6


def main(sample: str, out_dir: str) -> None:
    image = Image.open(sample).convert("RGB")
    out = Path(out_dir)
    image.resize((1800, 1200)).save(out / "large.jpg", quality=92)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CLOCKWISE
    image.resize((600, 400)).save(out / "portrait.jpg", quality=92, exif=exif.tobytes())


if __name__ == "__main__":
    main(*sys.argv[1:])
