"""A corpus of hostile and odd image files, made from the example photos, with what `vitsearch
index` must do with each: index it, or report it with a reason containing the given words.

Used by tests/test_hostile.py; ``python tests/hostile.py`` indexes a fresh corpus with the tiny
test ViT and prints the table of cases and outcomes (for the issue's closing note).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
INDEXED = "indexed"


def photo(name: str = "coffee.jpg", size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    img = Image.open(EXAMPLES / name).convert("RGB")
    if size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return img.convert(mode)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def blank_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of width x height pixels, all black: megapixels in a few hundred KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + one byte per pixel
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def frames(fmt: str, n: int = 3, **kw) -> bytes:
    pages = [photo(name, (96, 64)) for name in ("coffee.jpg", "cat.jpg", "rocket.jpg")[:n]]
    if fmt == "GIF":
        pages = [p.quantize(64) for p in pages]
    return encoded(pages[0], fmt, save_all=True, append_images=pages[1:], **kw)


def write(rel: str, data: bytes) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return make


def chmod_000(rel: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        write(rel, encoded(photo("cat.jpg"), "JPEG"))(root)
        os.chmod(root / rel, 0)

    return make


def symlink(rel: str, target: str | Callable[[Path], Path]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target(root) if callable(target) else target, root / rel)

    return make


def link_loop(root: Path) -> None:
    os.symlink(root / "loop-b.jpg", root / "loop-a.jpg")
    os.symlink(root / "loop-a.jpg", root / "loop-b.jpg")


def outside_file(root: Path) -> Path:
    target = root.parent / "outside-the-folder.jpg"
    target.write_bytes(encoded(photo("camera.jpg"), "JPEG"))
    return target


def non_utf8_name(root: Path) -> None:
    (root / os.fsdecode(b"caf\xe9-latin1.jpg")).write_bytes(encoded(photo(), "JPEG"))


def too_deep(root: Path) -> None:
    """A file whose absolute path is longer than the kernel's 4096-byte PATH_MAX."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(21):
            os.mkdir("d" * 200, dir_fd=fd)
            fd, old = os.open("d" * 200, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
        with open(os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(encoded(photo(), "JPEG"))
    finally:
        os.close(fd)


def fifo(root: Path) -> None:
    os.mkfifo(root / "pipe.jpg")


def corrupt_png_crc(root: Path) -> None:
    data = bytearray(encoded(photo(size=(64, 48)), "PNG"))
    data[40] ^= 0xFF  # inside the first IDAT chunk: its CRC no longer matches
    (root / "bad-crc.png").write_bytes(bytes(data))


def exif_rotated(root: Path) -> None:
    """The same picture twice: stored upright, and stored sideways with EXIF orientation 6."""
    upright = photo("astronaut.jpg", (320, 192))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (root / "upright.png").write_bytes(encoded(upright, "PNG"))
    (root / "rotated-exif6.jpg").write_bytes(
        encoded(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=100, subsampling=0, exif=exif)
    )


#: (file or case name, how to make it, expected outcome: INDEXED or words of the reason)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("empty.jpg", write("empty.jpg", b""), "empty file"),
    ("empty.png", write("empty.png", b""), "empty file"),
    ("truncated.jpg", write("truncated.jpg", encoded(photo(), "JPEG")[:2500]), "truncated"),
    ("truncated.png", write("truncated.png", encoded(photo(), "PNG")[:5000]), "truncated"),
    ("text.jpg", write("text.jpg", b"just some text\n"), "not a recognised image format"),
    ("page.jpg", write("page.jpg", b"<!doctype html><html><body>404</body></html>"), "not a recognised image format"),
    ("bomb.png", write("bomb.png", png_claiming(20000, 10000)), "image too large"),
    ("bad-crc.png", corrupt_png_crc, "corrupt"),
    ("one-pixel.png", write("one-pixel.png", encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")), INDEXED),
    ("one-pixel.jpg", write("one-pixel.jpg", encoded(Image.new("RGB", (1, 1), (30, 200, 30)), "JPEG")), INDEXED),
    ("panorama.jpg", write("panorama.jpg", encoded(photo(size=(20000, 200)), "JPEG")), INDEXED),
    ("tall.png", write("tall.png", encoded(photo(size=(200, 8000)), "PNG")), INDEXED),
    ("cmyk.jpg", write("cmyk.jpg", encoded(photo(mode="CMYK"), "JPEG")), INDEXED),
    (
        "gray16.png",
        write("gray16.png", encoded(photo(mode="L").convert("I").point(lambda v: v * 256).convert("I;16"), "PNG")),
        INDEXED,
    ),
    ("gray.png", write("gray.png", encoded(photo(mode="L"), "PNG")), INDEXED),
    ("gray.jpg", write("gray.jpg", encoded(photo(mode="L"), "JPEG")), INDEXED),
    ("bilevel.png", write("bilevel.png", encoded(photo(mode="1"), "PNG")), INDEXED),
    ("float.tif", write("float.tif", encoded(photo(mode="L").convert("F"), "TIFF")), INDEXED),
    (
        "palette-transparent.png",
        write("palette-transparent.png", encoded(photo(size=(64, 48)).quantize(16), "PNG", transparency=0)),
        INDEXED,
    ),
    ("rgba.png", write("rgba.png", encoded(photo(mode="RGBA"), "PNG")), INDEXED),
    ("gray-alpha.png", write("gray-alpha.png", encoded(photo(mode="LA"), "PNG")), INDEXED),
    ("animated.gif", write("animated.gif", frames("GIF", duration=100, loop=0)), INDEXED),
    ("multipage.tif", write("multipage.tif", frames("TIFF")), INDEXED),
    ("photo.webp", write("photo.webp", encoded(photo(), "WEBP")), INDEXED),
    ("photo.bmp", write("photo.bmp", encoded(photo(), "BMP")), INDEXED),
    ("UPPER.JPEG", write("UPPER.JPEG", encoded(photo(), "JPEG")), INDEXED),
    ("jpeg-named.png", write("jpeg-named.png", encoded(photo("cat.jpg"), "JPEG")), INDEXED),
    ("folder.jpg/inside.jpg", write("folder.jpg/inside.jpg", encoded(photo(), "JPEG")), INDEXED),
    ("x" * 250 + ".jpg", write("x" * 250 + ".jpg", encoded(photo(), "JPEG")), INDEXED),
    ("rotated-exif6.jpg", exif_rotated, INDEXED),
    ("upright.png", lambda root: None, INDEXED),  # made with rotated-exif6.jpg
    ("no-permission.jpg", chmod_000("no-permission.jpg"), "Permission denied"),
    ("loop-a.jpg", link_loop, "Too many levels of symbolic links"),
    ("loop-b.jpg", lambda root: None, "Too many levels of symbolic links"),
    ("dangling.jpg", symlink("dangling.jpg", "/nonexistent/nothing.jpg"), "No such file"),
    ("link-outside.jpg", symlink("link-outside.jpg", outside_file), INDEXED),
    ("sub/up", symlink("sub/up", ".."), "not followed"),  # a link to a folder: never entered
    (os.fsdecode(b"caf\xe9-latin1.jpg"), non_utf8_name, INDEXED),  # stored exactly (see NAMES)
    ("d" * 200, too_deep, "File name too long"),
    ("pipe.jpg", fifo, "not a regular file"),
]


def unix_socket(rel: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(root / rel))  # the file stays after the socket closes

    return make


def folder(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).mkdir(parents=True)


#: Queries that are not images (``vitsearch search PATH``, ``SearchClient.search(PATH)``): (file
#: name, how to make it, or an absolute path used as it is; words of the one-line reason). Each
#: is refused with exit 2 before any model or Milvus is loaded.
QUERIES: list[tuple[str, Callable[[Path], None] | None, str]] = [
    ("a-folder.jpg", folder("a-folder.jpg"), "a folder, not an image file"),
    ("pipe.jpg", fifo, "a named pipe (FIFO), not a regular file"),
    ("/dev/zero", None, "a character device, not a regular file"),
    ("socket.jpg", unix_socket("socket.jpg"), "a socket, not a regular file"),
    ("no-permission.jpg", chmod_000("no-permission.jpg"), "Permission denied"),
    ("empty.jpg", write("empty.jpg", b""), "empty file (0 bytes)"),
    ("missing.jpg", lambda root: None, "No such file or directory"),
    ("dangling.jpg", symlink("dangling.jpg", "/nonexistent/nothing.jpg"), "No such file or directory"),
    ("loop-a.jpg", link_loop, "Too many levels of symbolic links"),
    ("text.jpg", write("text.jpg", b"just some text\n"), "not a recognised image format"),
    ("bad-header.png", write("bad-header.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "corrupt"),
]
#: Queries whose header is an image's but whose data is not: refused with exit 2 when decoded.
DAMAGED_QUERIES: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated.jpg", write("truncated.jpg", encoded(photo(), "JPEG")[:2500]), "truncated"),
    ("bomb.png", write("bomb.png", png_claiming(20000, 10000)), "image too large"),
]


def build_queries(root: Path) -> list[tuple[str, str]]:
    """Make :data:`QUERIES` and :data:`DAMAGED_QUERIES` under ``root``; return each query's path
    and the words its reason must hold."""
    out = []
    for name, make, reason in QUERIES + DAMAGED_QUERIES:
        if make is not None:
            make(root)
        out.append((name if os.path.isabs(name) else str(root / name), reason))
    return out


#: Legal file and folder names that must each be indexed, found by ``--similar``, returned exactly
#: (``os.fsencode`` round trip) and pruned only by themselves: POSIX allows any byte but ``/`` and
#: NUL. Relative paths under the corpus root, as bytes (some are not valid UTF-8).
NAMES: list[bytes] = [
    b"John's photo.jpg",
    b'say "cheese".jpg',
    b"''.jpg",
    b'"".jpg',
    b"back\\slash.jpg",
    b"x\\.jpg",
    b"\\leading-backslash.jpg",
    b"back\\nslash-not-a-newline.jpg",
    b"\\x41-not-an-escape.jpg",
    b"ends-with-backslash\\/inside.jpg",
    b"a\\/b.jpg",
    b"new\nline.jpg",
    b"carriage\rreturn.jpg",
    b"tab\there.jpg",
    b"\n.jpg",
    b"100%.jpg",
    b"50% off_sale.jpg",
    b"under_score.jpg",
    b"star*.jpg",
    b"question?.jpg",
    b"pct%/in-pct-folder.jpg",
    b"pctX/in-sibling-of-pct.jpg",
    b"a_b/in-underscore-folder.jpg",
    b"aXb/in-sibling-of-underscore.jpg",
    b"pre/in-prefix.jpg",
    b"prefix/in-longer-name.jpg",
    b" leading space.jpg",
    b"trailing space .jpg",
    b"spaced folder /inside.jpg",
    "caf\u00e9.jpg".encode(),
    "cafe\u0301.jpg".encode(),  # the same name in NFC and in NFD: two files
    ("a" * 251 + ".jpg").encode(),
    ("\u00e9" * 125 + "x.jpg").encode(),
    b"caf\xe9-latin1.jpg",
    b"\xff\xfe-bom-bytes.jpg",
    b"\x80-lone-continuation.jpg",
    b"\xed\xa0\x80-encoded-surrogate.jpg",
    b"\xc0\xaf-overlong-slash.jpg",
    b"latin1-\xe9t\xe9/inside.jpg",
    b"x'] or path like '%' or path in ['y.jpg",
    b'x" or path != "y.jpg',
    b'") or true or ("x.jpg',
    b"`backtick`.jpg",
    b"**bold** _it_.jpg",
    b"[link](http:x).jpg",
    b"<img src=x onerror=alert(1)>.jpg",
    b":red[red] :tada:.jpg",
    b"$x^2$.jpg",
    b"# heading.jpg",
    "\U0001f600 emoji.jpg".encode(),
    "\u202egpj.exe-rtl-override.jpg".encode(),
    "zero\u200bwidth.jpg".encode(),
    "line\u2028separator.jpg".encode(),
    "\u5199\u771f.jpg".encode(),
    b"\x01\x02\x7f-controls.jpg",
    b"\x1b[31mansi-red.jpg",
    b".hidden.jpg",
    b"-dash.jpg",
    b"--help.jpg",
    b"UPPER.JPG",
    b"mixed.JpEg",
    b"s3:not-a-uri.jpg",
]


def distinct_image(index: int, size: int = 24) -> bytes:
    """A small real PNG, different for each ``index`` (a crop of a photo at an offset, so no two
    files of the corpus share a vector and ``--similar`` must find each one itself)."""
    photos = sorted(EXAMPLES.glob("*.jpg"))
    img = Image.open(photos[index % len(photos)]).convert("RGB")
    x, y = (index * 37) % (img.width - size), (index * 53) % (img.height - size)
    return encoded(img.crop((x, y, x + size, y + size)), "PNG")


def build_names(root: Path) -> list[str]:
    """Write every name of :data:`NAMES` under ``root``; return their absolute paths as ``str``
    (``os.fsdecode``: undecodable bytes as surrogates, as ``os.scandir`` gives them)."""
    paths = []
    for i, rel in enumerate(NAMES):
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(distinct_image(i))
        paths.append(os.fsdecode(path))
    return paths


def without_root_file_access() -> None:
    """``preexec_fn`` for a subprocess of root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    from the capability bounding set, so file permissions apply to it (a mode-000 file cannot be
    read) as they do to any user. A no-op for other users."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; see permissions_apply() where it cannot


def permissions_apply(path: Path) -> bool:
    """Whether a subprocess started with :func:`without_root_file_access` is refused ``path``
    (a mode-000 file); False where root keeps its file access (no CAP_SETPCAP to drop it)."""
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(path)!r}, 'rb')"], capture_output=True, preexec_fn=without_root_file_access
    )
    return probe.returncode != 0


def build(root: Path) -> None:
    """Make every case's files under ``root`` (which must exist)."""
    for _, make, _ in CASES:
        make(root)


def outcomes(root: Path, indexed: set[str], failures: dict[str, str]) -> dict[str, str]:
    """Each case's outcome: INDEXED, the reason it was reported with, or "not indexed, not reported"."""
    seen = {}
    for name, _, expected in CASES:
        path = str(root / name)
        if expected == "not followed":
            inside = [p for p in indexed | set(failures) if p.startswith(path + os.sep)]
            seen[name] = "not followed" if not inside else f"followed: {inside[:2]}"
        elif name == "d" * 200:
            hits = {p: r for p, r in failures.items() if p.startswith(path)}
            seen[name] = next(iter(hits.values()), "not reported")
        elif name == "folder.jpg/inside.jpg" or path in indexed:
            seen[name] = INDEXED if path in indexed else failures.get(path, "not indexed, not reported")
        else:
            seen[name] = failures.get(path, "not indexed, not reported")
    return seen


if __name__ == "__main__":  # the table for the closing note
    import json
    import subprocess
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny_vit

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "corpus"
        root.mkdir()
        build(root)
        model = make_tiny_vit(tmp / "tiny", seed=0)
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from vitsearch.cli import main; main()",
                "index",
                str(root),
                "--model",
                str(model),
                "--uri",
                str(tmp / "db.db"),
                "--json",
            ],
            capture_output=True,
            text=True,
            preexec_fn=without_root_file_access,
        )
        summary = json.loads(out.stdout)
        from vitsearch.search.store import Store

        with Store(str(tmp / "db.db"), "images") as store:
            indexed = {r["path"] for r in store.iter_rows()}
        failures = {f["path"]: f["reason"] for f in summary["failures"]}
        for (name, _, expected), (_, seen) in zip(CASES, outcomes(root, indexed, failures).items()):
            ok = "ok" if (seen == expected if expected == INDEXED else expected in seen) else "UNEXPECTED"
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            print(f"| {shown[:40]} | {expected} | {seen[:90]} | {ok} |")
