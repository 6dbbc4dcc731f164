#!/usr/bin/env python3
"""Classify images with an autotl model served by TensorFlow Serving (REST API).

    python client.py cat.jpg dog.png                      # encoded files -> signature serving_bytes
    python client.py --pixels cat.jpg                     # decoded uint8 pixels -> signature serving_default
    python client.py --url http://host:8501 --model autotl cat.jpg

Standard library only for the default mode.  Pillow, when installed, makes the
request match how autotl decoded the training images: EXIF orientation applied and
the longest side shrunk to 1024 px (the server does neither); ``--pixels`` needs it.
Prints ``file<TAB>class<TAB>probability`` per image, like ``autotl predict``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import urllib.error
import urllib.request

MAX_SIDE = 1024  # autotl.data.dataset.decode_image's bound


def _pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    return Image, ImageOps


def load_rgb(path: str):
    """The image as autotl sees it: upright RGB, transparency on white, longest side <= 1024 (a Pillow Image)."""
    lib = _pillow()
    if lib is None:
        raise SystemExit("--pixels needs Pillow: pip install pillow")
    Image, ImageOps = lib
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if max(im.size) > MAX_SIDE:
            im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            background.alpha_composite(im)
            im = background
        return im.convert("RGB")


def encoded(path: str) -> bytes:
    """The file's bytes; re-encoded as PNG only when Pillow says it needs turning upright or shrinking."""
    with open(path, "rb") as f:
        data = f.read()
    lib = _pillow()
    if lib is None:
        return data
    Image, _ = lib
    with Image.open(io.BytesIO(data)) as im:
        upright = im.getexif().get(0x0112, 1) in (0, 1)
        small = max(im.size) <= MAX_SIDE
        if upright and small and im.format in ("JPEG", "PNG"):
            return data
    buf = io.BytesIO()
    load_rgb(path).save(buf, format="PNG")  # lossless: the server sees exactly these pixels
    return buf.getvalue()


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # TF Serving answers {"error": "..."}
        raise SystemExit(
            f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}"
        ) from None
    except urllib.error.URLError as exc:
        raise SystemExit(
            f"{url}: {exc.reason}; is the server running (docker run -p 8501:8501 ...)?"
        ) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+")
    p.add_argument(
        "--url",
        default="http://localhost:8501",
        help="TF Serving REST address (default %(default)s)",
    )
    p.add_argument("--model", default="autotl", help="model name (default %(default)s)")
    p.add_argument(
        "--pixels",
        action="store_true",
        help="send decoded uint8 pixels to serving_default instead of file bytes",
    )
    args = p.parse_args(argv)
    url = f"{args.url.rstrip('/')}/v1/models/{args.model}:predict"

    if args.pixels:
        # serving_default: images uint8 [batch, height, width, 3]; one request per image as sizes differ
        predictions = []
        for path in args.images:
            im = load_rgb(path)
            raw, row = im.tobytes(), 3 * im.width  # RGB bytes, row by row
            pixels = [
                [list(raw[y * row + x : y * row + x + 3]) for x in range(0, row, 3)]
                for y in range(im.height)
            ]  # [h][w][3]
            predictions += post(
                url, {"signature_name": "serving_default", "instances": [{"images": pixels}]}
            )["predictions"]
    else:
        # serving_bytes: image_bytes string [batch]; binary values travel as {"b64": ...}
        instances = [
            {"image_bytes": {"b64": base64.b64encode(encoded(path)).decode("ascii")}}
            for path in args.images
        ]
        predictions = post(url, {"signature_name": "serving_bytes", "instances": instances})[
            "predictions"
        ]

    for path, pred in zip(args.images, predictions):
        top = max(pred["probabilities"])
        print(f"{path}\t{pred['classes']}\t{top:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
