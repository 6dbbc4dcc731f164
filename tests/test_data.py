"""autotl.data.dataset: decoding odd files, scanning folders, splitting, fingerprints, batches."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import HYMENOPTERA, as_a_user
from PIL import Image

from autotl.data.dataset import BadImage, Dataset, ImageSet, decode_image, from_arrays, load_folder
from autotl.errors import UsageError


def noise(seed: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> Image.Image:
    """A small image whose bytes differ for every seed (so no accidental duplicates)."""
    channels = {"RGB": 3, "L": 1}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(a[:, :, 0] if channels == 1 else a)


def save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: header only, so the test costs nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def flat_folder(root: Path, per_class: int = 10, classes=("cats", "dogs")) -> Path:
    for k, c in enumerate(classes):
        for i in range(per_class):
            save(noise(100 * k + i), root / c / f"{i:02d}.png")
    return root


def one_line_usage_error(match: str, fn, *args, **kw) -> str:
    with pytest.raises(UsageError, match=match) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- decode_image


def test_decode_plain_formats(tmp_path):
    red = Image.new("RGB", (9, 7), (255, 0, 0))
    for name, kw in [
        ("a.png", {}),
        ("a.bmp", {}),
        ("a.tif", {}),
        ("a.webp", {"lossless": True}),
        ("a.gif", {}),
        ("a.jpg", {"quality": 95}),
    ]:
        out = decode_image(save(red, tmp_path / name, **kw))
        assert out.dtype == np.uint8 and out.shape == (7, 9, 3), name
        assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 3, name


def test_decode_by_content_not_extension(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (3, 2), (0, 0, 255)).save(path, format="PNG")
    assert decode_image(path)[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "zero bytes"),
        (lambda p: p.write_text("hello, I am not a picture\n"), "not an image"),
        (lambda p: p.write_bytes(noise_bytes("JPEG")[:400]), "truncated or corrupt"),
        (lambda p: p.write_bytes(noise_bytes("PNG")[:300]), "truncated or corrupt"),
        (lambda p: p.write_bytes(png_header(12000, 12000)), "too large"),
        (lambda p: p.write_bytes(png_header(20000, 20000)), "too large"),
        (lambda p: Image.new("RGB", (4, 4)).save(p, format="EPS"), "EPS is not decoded"),
    ],
)
def test_decode_bad_files(tmp_path, make, reason):
    path = tmp_path / "x.jpg"
    make(path)
    with pytest.raises(BadImage, match=reason):
        decode_image(path)


def noise_bytes(fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    noise(1, (64, 64)).save(buf, format=fmt)
    return buf.getvalue()


def test_decode_missing_and_folder(tmp_path):
    with pytest.raises(BadImage, match="missing"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(BadImage, match="not a regular file"):
        decode_image(tmp_path)


def test_decode_cmyk_jpeg(tmp_path):
    out = decode_image(
        save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    )
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 8


def test_decode_16bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    path = save(Image.fromarray(a), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    out = decode_image(path)
    assert out[0, :, 0].tolist() == [0, 128, 255, 1]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_decode_32bit_int_and_float(tmp_path):
    i32 = save(Image.fromarray(np.array([[0, 65535]], dtype=np.int32)), tmp_path / "i.tif")
    assert decode_image(i32)[0, :, 0].tolist() == [0, 255]
    f32 = save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), tmp_path / "f.tif")
    assert decode_image(f32)[0, :, 0].tolist() == [0, 128, 255]


def test_decode_grayscale_bilevel_palette(tmp_path):
    gray = decode_image(save(Image.new("L", (4, 3), 77), tmp_path / "g.png"))
    assert gray.shape == (3, 4, 3) and (gray == 77).all()
    one = decode_image(save(Image.new("1", (4, 3), 1), tmp_path / "b.png"))
    assert (one == 255).all()
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image(save(pal, tmp_path / "p.gif"))[0, 0].tolist() == [10, 200, 30]


def test_decode_transparency_becomes_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    im.putpixel((1, 2), (0, 0, 0, 0))
    im.putpixel((3, 3), (255, 0, 0, 128))
    out = decode_image(save(im, tmp_path / "a.png"))
    assert out[2, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 255]
    assert abs(int(out[3, 3, 1]) - 127) <= 2  # half red over white
    la = Image.new("LA", (2, 2), (0, 0))
    assert (decode_image(save(la, tmp_path / "la.png")) == 255).all()
    gif = Image.new("P", (3, 3), 0)
    gif.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    gif.putpixel((0, 0), 1)
    out = decode_image(save(gif, tmp_path / "t.gif", transparency=1))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 255, 0]


def test_decode_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 5), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    path = save(
        frames[0],
        tmp_path / "anim.gif",
        save_all=True,
        append_images=frames[1:],
        duration=50,
        loop=0,
    )
    assert Image.open(path).n_frames == 3
    out = decode_image(path)
    assert out.shape == (5, 6, 3) and (out == [255, 0, 0]).all()


@pytest.mark.parametrize(
    "orientation, corner", [(6, (0, -1)), (8, (-1, 0)), (3, (-1, -1)), (1, (0, 0))]
)
def test_decode_exif_orientation(tmp_path, orientation, corner):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 6, 6))  # white marker, stored at the top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(save(im, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95))
    assert out.shape == ((40, 20, 3) if orientation in (6, 8) else (20, 40, 3))
    assert out[corner].min() > 200  # the marker is now where a viewer shows it
    assert out.mean() < 40


def test_decode_tiny_and_large(tmp_path):
    assert decode_image(save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "1.png")).tolist() == [
        [[1, 2, 3]]
    ]
    big = Image.linear_gradient("L").resize((6000, 4000)).convert("RGB")
    path = save(big, tmp_path / "big.jpg", quality=70)
    out = decode_image(path, max_side=512)
    assert out.shape == (341, 512, 3)  # aspect 3:2 kept
    assert out[0].mean() < 30 and out[-1].mean() > 225  # the content survived the downscale
    wide = decode_image(
        save(Image.new("RGB", (900, 3), (5, 5, 5)), tmp_path / "w.png"), max_side=300
    )
    assert wide.shape == (1, 300, 3)


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    """Past Pillow's pixel limit a JPEG still loads (drafted at 1/2..1/8 scale); a PNG cannot be drafted."""
    path = save(Image.new("RGB", (6000, 4000), (20, 40, 60)), tmp_path / "big.jpg", quality=50)
    (tmp_path / "big.png").write_bytes(png_header(6000, 4000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000_000)  # so 24 Mpx counts as huge
    assert decode_image(path, max_side=512).shape == (341, 512, 3)
    with pytest.raises(BadImage, match=r"too large: 6000x4000 pixels \(limit 15000000\)"):
        decode_image(tmp_path / "big.png", max_side=512)


# --------------------------------------------------------------------------- load_folder: messy folder


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    save(noise(1), root / "cats" / "plain.jpg", quality=90)
    save(noise(2), root / "cats" / "plain.png")
    save(Image.new("CMYK", (8, 8), (10, 20, 30, 40)), root / "cats" / "cmyk.jpg")
    save(Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)), root / "cats" / "deep16.png")
    save(noise(3, mode="L"), root / "cats" / "gray.png")
    save(Image.new("RGBA", (5, 5), (9, 9, 9, 0)), root / "cats" / "alpha.png")
    save(noise(4), root / "cats" / "nested" / "deeper" / "deep.bmp")
    save(noise(5), root / "cats" / "Ünïcödé name (1).webp")
    save(noise(6), root / "cats" / ".hidden" / "h.png")
    (root / "cats" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    os.symlink("..", root / "cats" / "loop")
    frames = [Image.new("RGB", (4, 4), c) for c in [(1, 2, 3), (4, 5, 6)]]
    save(frames[0], root / "dogs" / "anim.gif", save_all=True, append_images=frames[1:])
    save(Image.new("RGB", (1, 1), (7, 7, 7)), root / "dogs" / "one pixel.png")
    save(noise(1), root / "dogs" / "same as cats plain.jpg", quality=90)  # duplicate bytes
    save(noise(7), root / "dogs" / "z.tiff")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "notes.jpg").write_text("not an image")
    (root / "dogs" / "cut.jpg").write_bytes(noise_bytes("JPEG")[:500])
    (root / "dogs" / "cut.png").write_bytes(noise_bytes("PNG")[:500])
    os.symlink(root / "cats" / "plain.png", root / "dogs" / "link to cat.png")
    (root / "README.txt").write_text("loose file")
    return root


def test_messy_folder(messy):
    ds = load_folder(messy, val_fraction=0.25, seed=0)
    assert ds.class_names == ["cats", "dogs"]
    assert ds.source == str(messy) and ds.split == "stratified, val_fraction=0.25, seed=0"
    reasons = dict(ds.skipped)
    assert reasons["dogs/empty.jpg"] == "zero bytes"
    assert reasons["dogs/notes.jpg"] == "not an image"
    assert reasons["dogs/cut.jpg"].startswith("truncated or corrupt")
    assert reasons["dogs/cut.png"].startswith("truncated or corrupt")
    assert "cats/loop" in reasons and "symlink" in reasons["cats/loop"]
    assert len(ds.skipped) == 5  # hidden files/folders are ignored, not skipped
    used = sorted(
        Path(p).relative_to(messy).as_posix() for s in (ds.train, ds.val) for p in s.paths
    )
    assert "cats/Ünïcödé name (1).webp" in used and "cats/nested/deeper/deep.bmp" in used
    assert "dogs/one pixel.png" in used and "dogs/link to cat.png" in used
    assert not any(".hidden" in p or "DS_Store" in p for p in used)
    assert len(used) == 13
    counts = ds.summary()["counts"]
    assert counts["train"]["cats"] + counts["val"]["cats"] == 8
    assert all(counts[s][c] >= 1 for s in ("train", "val") for c in ds.class_names)
    text = " ".join(ds.warnings)
    assert (
        "cats/plain.jpg" in text
        and "dogs/same as cats plain.jpg" in text
        and "different classes" in text
    )
    assert "cats/plain.png" in text and "dogs/link to cat.png" in text
    assert "README.txt" not in text and "1 file(s) directly in" in text
    for part in (ds.train, ds.val):
        for i in range(len(part)):
            im = part.load(i)
            assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
    assert json.loads(json.dumps(ds.summary()))["skipped"] == 5


@pytest.mark.slow
def test_search_over_the_messy_folder_completes(messy, tmp_path):
    """Every kind of bad file at once: the search skips, converts and warns, and finishes."""
    from helpers import TINY_PLUGIN, run_cli

    space = tmp_path / "space.yaml"
    space.write_text(
        "backbones: [tiny]\nhead: {width: [8], dropout: 0.0}\nphase1: {learning_rate: 1.0e-2, epochs: 5, patience: 2}\n"
        "phase2: {unfreeze_blocks: 0}\nbatch_size: 4\n"
    )
    proc = run_cli(
        "search",
        str(messy),
        "--space",
        str(space),
        "--out",
        str(tmp_path / "run"),
        "--trials",
        "1",
        "--plugin",
        TINY_PLUGIN,
        "--weights",
        "none",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "skipped dogs/notes.jpg: not an image" in proc.stderr
    assert "different classes" in proc.stderr and (tmp_path / "run" / "best_model.keras").is_file()


def test_unreadable_subfolder_is_skipped(tmp_path):
    """Scanned in a process whose file modes hold (as root too: CI's case), a folder it cannot list is
    skipped with its reason."""
    import subprocess
    import sys

    root = flat_folder(tmp_path, per_class=3)
    locked = root / "cats" / "locked"
    save(noise(77), locked / "x.png")
    scan = (
        "import json, sys; from autotl.data.dataset import load_folder; "
        "print(json.dumps(dict(load_folder(sys.argv[1], decode_workers=0).skipped)))"
    )
    locked.chmod(0)
    try:
        proc = subprocess.run(
            [*as_a_user(), sys.executable, "-c", scan, str(root)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1])["cats/locked"].startswith("cannot list folder")


# --------------------------------------------------------------------------- train/ and val/ folders


def test_train_val_folders(tmp_path):
    for part, n in (("train", 4), ("validation", 2)):
        for k, c in enumerate(("b", "a")):
            for i in range(n):
                save(noise(1000 * (part == "train") + 10 * k + i), tmp_path / part / c / f"{i}.png")
    save(
        noise(1000), tmp_path / "validation" / "a" / "copy of train b 0.png"
    )  # same bytes as train/b/0.png
    save(noise(5000), tmp_path / "test" / "a" / "t.png")
    ds = load_folder(tmp_path)
    assert ds.split == "folders" and ds.class_names == ["a", "b"]
    assert ds.train.counts(2) == [4, 4] and ds.val.counts(2) == [3, 2]
    assert any(
        "train/b/0.png" in w and "validation/a/copy of train b 0.png" in w and "train and val" in w
        for w in ds.warnings
    )
    assert not any("test/" in w for w in ds.warnings)  # the test split's (autotl.data.holdout)
    assert ds.train.labels.dtype == np.int64
    assert all("/train/" in p for p in ds.train.paths) and all(
        "/validation/" in p for p in ds.val.paths
    )


def test_class_missing_or_empty_in_val(tmp_path):
    for c in ("a", "b"):
        save(noise(ord(c)), tmp_path / "train" / c / "x.png")
    save(noise(50), tmp_path / "val" / "a" / "x.png")
    one_line_usage_error(r"class 'b' has no folder val/b/", load_folder, tmp_path)
    (tmp_path / "val" / "b").mkdir()
    (tmp_path / "val" / "b" / "bad.jpg").write_text("nope")
    msg = one_line_usage_error(
        r"val/b/ has no usable images \(1 file\(s\) skipped\)", load_folder, tmp_path
    )
    assert "train/ and in val/" in msg


# --------------------------------------------------------------------------- usage errors


def test_usage_errors(tmp_path):
    one_line_usage_error(r"does not exist; .*DATA_DIR/CLASS/IMAGE", load_folder, tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    one_line_usage_error(r"is a file, not a folder", load_folder, tmp_path / "f.png")
    (tmp_path / "empty").mkdir()
    one_line_usage_error(r"is empty; .*DATA_DIR/CLASS/IMAGE", load_folder, tmp_path / "empty")
    save(noise(1), tmp_path / "flat" / "a.png")
    one_line_usage_error(
        r"holds 1 file\(s\) but no class subfolders", load_folder, tmp_path / "flat"
    )
    save(noise(1), tmp_path / "one" / "cats" / "a.png")
    one_line_usage_error(r"needs at least two classes", load_folder, tmp_path / "one")
    save(noise(1), tmp_path / "onlytrain" / "train" / "cats" / "a.png")
    one_line_usage_error(r"has train/ but no val/", load_folder, tmp_path / "onlytrain")
    for d in ("val", "validation"):
        (tmp_path / "both" / d).mkdir(parents=True)
    (tmp_path / "both" / "train").mkdir()
    one_line_usage_error(r"both val/ and validation/", load_folder, tmp_path / "both")


def test_class_with_no_usable_images(tmp_path):
    flat_folder(tmp_path, per_class=3, classes=("cats",))
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "a.jpg").write_bytes(b"")
    (tmp_path / "dogs" / "b.jpg").write_text("x")
    (tmp_path / "dogs" / ".DS_Store").write_text("x")
    one_line_usage_error(
        r"dogs/ has no usable images \(2 file\(s\) skipped\)", load_folder, tmp_path
    )
    (tmp_path / "dogs" / "a.jpg").unlink()
    (tmp_path / "dogs" / "b.jpg").unlink()
    one_line_usage_error(
        r"dogs/ has no usable images \(0 file\(s\) skipped\)", load_folder, tmp_path
    )


def test_too_few_images(tmp_path):
    flat_folder(tmp_path, per_class=3)
    one_line_usage_error(
        r"fewer than 5 usable images: cats \(3\), dogs \(3\)",
        load_folder,
        tmp_path,
        min_per_class=5,
    )
    for p in list((tmp_path / "dogs").iterdir())[1:]:
        p.unlink()
    single = load_folder(tmp_path)  # a class of one image trains, unmeasured, with a warning
    assert single.train.counts(2) == [2, 1] and single.val.counts(2) == [1, 0]
    assert any("class 'dogs' has only 1 usable image" in w for w in single.warnings)
    one_line_usage_error(
        r"val_fraction must be between 0 and 1", load_folder, tmp_path, val_fraction=1.0
    )


# --------------------------------------------------------------------------- split and fingerprint


def val_names(ds: Dataset) -> list[str]:
    return sorted(Path(p).name for p in ds.val.paths)


def test_split_is_stratified_and_seeded(tmp_path):
    root = flat_folder(tmp_path / "d", per_class=10)
    save(noise(999), root / "cats" / "10.png")  # 11 cats: round(2.2) = 2 to val
    a, b, c = load_folder(root, seed=0), load_folder(root, seed=0), load_folder(root, seed=1)
    assert a.train.counts(2) == [9, 8] and a.val.counts(2) == [2, 2]
    assert val_names(a) == val_names(b) and a.fingerprint == b.fingerprint
    assert val_names(a) != val_names(c) and a.fingerprint != c.fingerprint
    assert not set(a.train.paths) & set(a.val.paths)
    small = flat_folder(tmp_path / "small", per_class=2)
    ds = load_folder(small, val_fraction=0.1)
    assert ds.train.counts(2) == [1, 1] and ds.val.counts(2) == [1, 1]
    assert any("'cats' has only 2 images" in w for w in ds.warnings)


def test_fingerprint_depends_on_bytes_not_location(tmp_path):
    root = flat_folder(tmp_path / "one", per_class=5)
    first = load_folder(root).fingerprint
    assert len(first) == 64 and int(first, 16) >= 0
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "two")
    assert load_folder(moved).fingerprint == first
    save(noise(12345), root / "dogs" / "03.png")  # same name, new bytes
    assert load_folder(root).fingerprint != first
    assert load_folder(moved, val_fraction=0.4).fingerprint != first


# --------------------------------------------------------------------------- batches


def test_batches_match_keras_resizing(tmp_path):
    import keras

    for i, size in enumerate([(13, 9), (40, 31), (7, 22), (16, 16), (5, 5)]):
        save(noise(i, size), tmp_path / ("a" if i % 2 else "b") / f"{i}.png")
    ds = load_folder(tmp_path, val_fraction=0.4)
    layer = keras.layers.Resizing(11, 17)
    batches = list(ds.train.batches((11, 17), batch_size=2))
    assert [b.shape for b in batches] == [(2, 11, 17, 3), (1, 11, 17, 3)]
    got = np.concatenate(batches)
    assert got.dtype == np.float32 and 0 <= got.min() and got.max() <= 255
    for i in range(len(ds.train)):
        want = keras.ops.convert_to_numpy(layer(ds.train.load(i)[None].astype("float32")))[0]
        assert np.abs(got[i] - want).max() < 1e-4


def test_from_arrays_like_digits():
    import keras

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(30)]
    labels = np.array([i % 3 for i in range(30)])
    ds = from_arrays(images, labels, ["zero", "one", "two"], source="sample:digits")
    assert ds.source == "sample:digits" and ds.split == "stratified, val_fraction=0.2, seed=0"
    assert ds.train.counts(3) == [8, 8, 8] and ds.val.counts(3) == [2, 2, 2]
    assert ds.train.paths is None and ds.train.arrays is not None and ds.skipped == []
    again = from_arrays(images, labels, ["zero", "one", "two"], source="sample:digits")
    assert again.fingerprint == ds.fingerprint
    images[0] = images[0].copy()
    images[0][0, 0, 0] ^= 1
    assert (
        from_arrays(images, labels, ["zero", "one", "two"], source="x").fingerprint
        != ds.fingerprint
    )
    batch = next(ds.val.batches((32, 32), batch_size=6))
    want = keras.ops.convert_to_numpy(
        keras.layers.Resizing(32, 32)(
            np.stack([ds.val.load(i) for i in range(6)]).astype("float32")
        )
    )
    assert batch.shape == (6, 32, 32, 3) and np.abs(batch - want).max() < 1e-4
    gray = from_arrays(
        [np.full((8, 8), 3, dtype=np.uint8)] * 4, [0, 0, 1, 1], ["a", "b"], source="g"
    )
    assert gray.train.load(0).shape == (8, 8, 3)
    assert any("different classes" in w for w in gray.warnings)


def test_from_arrays_rejects_bad_input():
    ok = [np.zeros((4, 4, 3), dtype=np.uint8)] * 4
    one_line_usage_error(
        "at least two distinct class names", from_arrays, ok, [0, 0, 0, 0], ["a"], "s"
    )
    one_line_usage_error("labels must be in 0..1", from_arrays, ok, [0, 1, 2, 0], ["a", "b"], "s")
    one_line_usage_error("one integer label per image", from_arrays, ok, [0, 1], ["a", "b"], "s")
    one_line_usage_error(
        r"has shape \(4, 4, 4\)",
        from_arrays,
        [np.zeros((4, 4, 4), np.uint8)] * 4,
        [0, 0, 1, 1],
        ["a", "b"],
        "s",
    )
    one_line_usage_error(
        "outside whole numbers 0..255",
        from_arrays,
        [np.full((4, 4, 3), 0.5)] * 4,
        [0, 0, 1, 1],
        ["a", "b"],
        "s",
    )
    single = from_arrays(
        ok, [0, 0, 0, 1], ["a", "b"], "s"
    )  # a class of one image: trained on, unmeasured, warned
    assert single.val.counts(2)[1] == 0 and any(
        "'b' has only 1 usable image" in w for w in single.warnings
    )


def test_imageset_contract():
    with pytest.raises(ValueError):
        ImageSet(np.zeros(2), paths=["a", "b"], arrays=[np.zeros((1, 1, 3), np.uint8)] * 2)
    with pytest.raises(ValueError):
        ImageSet(np.zeros(3), paths=["a", "b"])
    s = ImageSet([1, 1, 0], arrays=[np.zeros((1, 1, 3), np.uint8)] * 3)
    assert len(s) == 3 and s.counts(3) == [1, 2, 0] and s.labels.dtype == np.int64


def test_file_changed_after_scan_is_a_usage_error(tmp_path):
    root = flat_folder(tmp_path, per_class=3)
    ds = load_folder(root)
    Path(ds.train.paths[0]).write_bytes(b"")
    one_line_usage_error("can no longer be decoded \\(zero bytes\\)", ds.train.load, 0)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"needs {HYMENOPTERA} (AUTOTL_SHARED)")
def test_hymenoptera():
    ds = load_folder(HYMENOPTERA)
    assert ds.split == "folders" and ds.class_names == ["ants", "bees"]
    total = {c: ds.train.counts(2)[k] + ds.val.counts(2)[k] for k, c in enumerate(ds.class_names)}
    assert ds.val.counts(2) == [70, 83]
    assert ds.train.counts(2)[1] == 121 and ds.train.counts(2)[0] + len(ds.skipped) == 124
    assert sum(total.values()) + len(ds.skipped) == 398
    assert ds.fingerprint == load_folder(HYMENOPTERA).fingerprint
    gif = [i for i, p in enumerate(ds.train.paths) if p.endswith("imageNotFound.gif")]
    if gif:
        assert ds.train.load(gif[0]).shape[2] == 3
    assert next(ds.val.batches((24, 24), batch_size=4)).shape == (4, 24, 24, 3)


# --------------------------------------------------------------------------- manifest and decoding processes


def manifest_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_manifest_rereads_only_added_and_changed_files_and_the_fingerprint_stays_exact(tmp_path):
    root = flat_folder(tmp_path / "d", per_class=8)
    manifest = tmp_path / "run" / "manifest.jsonl"
    first = load_folder(root, manifest=manifest)
    assert first.scan["read"] == 16 and first.scan["files"] == 16
    again = load_folder(root, manifest=manifest)
    assert again.scan["read"] == 0 and again.fingerprint == first.fingerprint
    assert again.train.paths == first.train.paths and again.val.paths == first.val.paths
    save(noise(500, size=(13, 10)), root / "cats" / "03.png")  # changed: new bytes, new size
    save(noise(501), root / "dogs" / "new.png")  # added
    (root / "dogs" / "07.png").unlink()  # removed
    changed = load_folder(root, manifest=manifest)
    assert changed.scan["read"] == 2
    assert changed.fingerprint == load_folder(root).fingerprint != first.fingerprint  # exact
    lines = manifest_lines(manifest)
    assert len(lines) == 16 and not any(e["path"] == "dogs/07.png" for e in lines)
    by_path = {e["path"]: e for e in lines}
    assert by_path["dogs/new.png"]["class"] == "dogs" and by_path["dogs/new.png"]["split"] in (
        "train",
        "val",
    )
    val = {Path(p).relative_to(root).as_posix() for p in changed.val.paths}
    assert {p for p, e in by_path.items() if e["split"] == "val"} == val


def test_broken_files_are_read_once_listed_with_their_reason_and_skipped_on_resume(tmp_path):
    root = flat_folder(tmp_path / "d", per_class=6)
    for i in range(5):
        (root / "cats" / f"broken{i}.jpg").write_bytes(noise_bytes("JPEG")[: 100 + i])
    (root / "dogs" / "empty.png").write_bytes(b"")
    manifest = tmp_path / "manifest.jsonl"
    first = load_folder(root, manifest=manifest)
    assert first.scan["read"] == 18 and len(first.skipped) == 6
    reasons = {e["path"]: e["reason"] for e in manifest_lines(manifest) if e["reason"]}
    assert reasons == dict(first.skipped)
    assert reasons["dogs/empty.png"] == "zero bytes"
    assert all(r.startswith("truncated or corrupt") for p, r in reasons.items() if "broken" in p)
    again = load_folder(root, manifest=manifest)
    assert again.scan["read"] == 0 and again.skipped == first.skipped  # not read again


def test_an_interrupted_first_scan_resumes_where_it_stopped(tmp_path, monkeypatch):
    from autotl.data import manifest as manifest_mod

    root = flat_folder(tmp_path / "d", per_class=150)
    manifest = tmp_path / "manifest.jsonl"
    monkeypatch.setattr(manifest_mod, "JOURNAL_EVERY", 64)  # a checkpoint per chunk of files

    def stop_after_half(done: int, total: int) -> None:
        if done >= total // 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the scan

    with pytest.raises(KeyboardInterrupt):
        load_folder(root, manifest=manifest, progress=stop_after_half)
    resumed = load_folder(root, manifest=manifest)
    assert 0 < resumed.scan["read"] <= 300 - 128  # the checked half was kept
    assert resumed.fingerprint == load_folder(root).fingerprint


def test_torn_manifest_line_and_unknown_format_are_read_safely(tmp_path):
    from autotl.data import manifest as manifest_mod

    root = flat_folder(tmp_path / "d", per_class=4)
    manifest = tmp_path / "manifest.jsonl"
    load_folder(root, manifest=manifest)
    with open(manifest, "a") as f:
        f.write('{"path": "cats/00.png", "si')  # a write killed half-way
    assert load_folder(root, manifest=manifest).scan["read"] == 0
    manifest.write_text('{"manifest": 99}\n')
    assert manifest_mod.read(manifest) == {}
    assert load_folder(root, manifest=manifest).scan["read"] == 8


def test_decoding_processes_keep_order_and_bound_what_is_in_flight():
    from autotl.data.decoding import ordered

    pulled: list[int] = []

    def tasks():
        for i in range(60):
            pulled.append(i)
            yield (i, 2)

    results = ordered(pow, tasks(), workers=2, depth=3)
    assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert len(pulled) <= 5 + 3  # a slow consumer holds a bounded number of results
    assert list(results) == [i * i for i in range(5, 60)]
    assert list(ordered(pow, ((i, 3) for i in range(10)), workers=0)) == [i**3 for i in range(10)]


def test_batches_in_any_order_by_the_decoding_processes(tmp_path):
    root = flat_folder(tmp_path, per_class=5)
    ds = load_folder(root, val_fraction=0.2, decode_workers=2)
    order = [3, 0, 7, 1]
    got = np.concatenate(list(ds.train.batches((9, 9), batch_size=3, order=order)))
    threads = load_folder(root, val_fraction=0.2, decode_workers=0)
    want = np.concatenate([next(threads.train.batches((9, 9), 1, order=[i])) for i in order])
    np.testing.assert_array_equal(got, want)


def test_a_script_without_a_main_guard_is_not_run_again_by_the_decoding_processes(tmp_path):
    import subprocess
    import sys

    root = flat_folder(tmp_path / "d", per_class=3)
    script = tmp_path / "script.py"
    script.write_text(
        "from autotl.data.dataset import load_folder\n"
        f"ds = load_folder({str(root)!r}, decode_workers=2)\n"
        "print('scanned', len(ds.train) + len(ds.val))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["scanned 6"]
