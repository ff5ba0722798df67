"""The out-of-distribution set that the endpoint's "not a chest X-ray" gate is measured on.

Every image here must be refused with 422. The evaluate stage runs each one
through the gate and reports detection per kind. The set is deterministic
(fixed seeds, byte-identical on every call with the same library versions),
built offline from what installed packages ship, and cheap (1 to 3 s of one core).

Kinds (`KINDS`):

- colour_photo: scikit-image's colour samples, as JPEG (quality 90) or PNG, and
  crops and rescales of them.
- gray_photo: scikit-image's grayscale samples, grayscale versions of the colour
  ones, a few saved as 3-channel JPEGs as phones do. The hardest case: gray, with
  a radiograph-like dynamic range.
- document: scikit-image's `page` and `text`, and pages drawn with OpenCV's
  Hershey fonts: letters, two columns, a receipt, a form, a slide, a scan.
- screenshot: synthetic desktop (16:9, 4:3) and phone (portrait) screens, in
  colour and in gray.
- noise: uniform, Gaussian, salt-and-pepper, low-pass and fractal noise, gray,
  RGB and 16-bit, several sizes.
- blank: constant images (black, white, gray, a colour, 16-bit), a gradient of
  a few levels, a constant with a few stray pixels, a near-constant JPEG.
- other_modality: medical images that are not projection radiographs. Renders
  (8-bit PNG; grayscale windowed to the 0.5 and 99.5 percentiles) of pydicom's
  bundled CT, MR, nuclear-medicine, ultrasound, segmentation and RT-dose test
  files, scikit-image's Shepp-Logan phantom (a CT head), its fundus photographs
  (`retina`, `microaneurysms`) and its histology slide (`ihc`); and the DICOM
  files themselves, unchanged, named "pydicom/<file>.dcm", for the DICOM path.

Not covered: "other_body_part" (radiographs of a hand, a knee, a skull...).
Neither scikit-image nor pydicom ships a projection radiograph of any body part,
and a transformed chest radiograph would be a shift of the in-distribution data,
not another body part. The kind is left out of `KINDS` rather than fabricated;
`NOT_COVERED` says why, for the evaluate stage's report. The DICOM files with a
body part other than the chest (CT head, MR abdomen, whole-body bone scan) are
counted under other_modality.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

KINDS = (
    "colour_photo",
    "gray_photo",
    "document",
    "screenshot",
    "noise",
    "blank",
    "other_modality",
)
NOT_COVERED = {
    "other_body_part": (
        "no radiograph of another body part ships with the installed packages; "
        "a transformed chest radiograph would not be another body part"
    ),
}

Rng = np.random.Generator


@dataclass(frozen=True)
class OodImage:
    """One image that is not a frontal chest radiograph, encoded as a client would send it."""

    kind: str  # one of KINDS
    name: str  # short and stable: "skimage/astronaut", "synthetic/document-form"
    data: bytes  # a PNG or JPEG file; a DICOM file where the name ends in ".dcm"


def out_of_distribution_images(seed: int = 0) -> list[OodImage]:
    """The whole set, kind by kind, in a fixed order; the same bytes for the same seed.

    Each kind draws from its own generator, so changing one kind leaves the others as they were;
    builders with nothing random in them take it all the same, for one signature.
    """
    builders: list[tuple[str, Callable[[Rng], list[tuple[str, bytes]]]]] = [
        ("colour_photo", _colour_photos),
        ("gray_photo", _gray_photos),
        ("document", _documents),
        ("screenshot", _screenshots),
        ("noise", _noise),
        ("blank", _blank),
        ("other_modality", _other_modality),
    ]
    images = []
    for index, (kind, build) in enumerate(builders):
        rng = np.random.default_rng([seed, index])
        images += [OodImage(kind, name, data) for name, data in build(rng)]
    return images


# ------------------------------------------------------------------ encoding


def _png(pixels: np.ndarray) -> bytes:
    """(H, W) uint8/uint16 or (H, W, 3|4) uint8 to PNG bytes (fast zlib level: same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """(H, W) or (H, W, 3) uint8 to baseline JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _gray(rgb: np.ndarray) -> np.ndarray:
    """RGB(A) uint8 to ITU-R 601 luma."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))


def _resize(pixels: np.ndarray, scale: float) -> np.ndarray:
    """Rescale by `scale`: area averaging to shrink, cubic to enlarge."""
    height, width = pixels.shape[:2]
    size = (round(width * scale), round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(pixels, size, interpolation=interpolation)


def _skimage(filename: str) -> np.ndarray:
    """A sample image file shipped inside scikit-image's wheel (never one fetched with pooch).

    `files("skimage")` imports scikit-image here, at call time: it is a pipeline
    dependency, not a serving one.
    """
    with Image.open(io.BytesIO((files("skimage") / "data" / filename).read_bytes())) as image:
        return np.asarray(image)


# ------------------------------------------------------------------ photographs


def _colour_photos(rng: Rng) -> list[tuple[str, bytes]]:
    """scikit-image's colour photographs, and crops and rescales of them."""
    astronaut = _skimage("astronaut.png")
    chelsea = _skimage("chelsea.png")
    coffee = _skimage("coffee.png")
    rocket = _skimage("rocket.jpg")
    motorcycle = _skimage("motorcycle_left.png")
    return [
        ("skimage/astronaut", _jpeg(astronaut)),
        ("skimage/chelsea", _jpeg(chelsea)),
        ("skimage/coffee", _jpeg(coffee)),
        ("skimage/rocket", _jpeg(rocket)),
        ("skimage/motorcycle_left", _png(motorcycle)),
        ("skimage/motorcycle_right", _jpeg(_skimage("motorcycle_right.png"))),
        ("skimage/hubble_deep_field", _jpeg(_skimage("hubble_deep_field.jpg"))),
        ("skimage/color", _png(_skimage("color.png"))),
        ("skimage/logo", _png(_skimage("logo.png"))),  # RGBA
        ("skimage/astronaut-face", _png(astronaut[20:220, 150:330])),
        ("skimage/coffee-half", _jpeg(_resize(coffee, 0.5))),
        ("skimage/chelsea-double", _jpeg(_resize(chelsea, 2.0))),
        ("skimage/rocket-portrait", _jpeg(rocket[:, 200:440])),
        ("skimage/motorcycle-crop", _png(_resize(motorcycle[100:400, 150:600], 1.5))),
    ]


def _gray_photos(rng: Rng) -> list[tuple[str, bytes]]:
    """scikit-image's grayscale photographs, and grayscale versions of the colour ones."""
    faces = _skimage_faces()
    images = [
        (f"skimage/{name}", _png(_skimage(f"{name}.png")))
        for name in ("camera", "moon", "coins", "cell", "clock_motion", "brick", "grass", "gravel")
    ]
    images += [
        ("skimage/horse", _png(_gray(_skimage("horse.png")))),  # a silhouette
        ("skimage/lfw-face-0", _png(_resize(faces[0], 4.0))),
        ("skimage/lfw-face-1", _jpeg(_resize(faces[1], 4.0))),
        ("skimage/astronaut-gray", _png(_gray(_skimage("astronaut.png")))),
        ("skimage/chelsea-gray", _jpeg(_gray(_skimage("chelsea.png")))),
        ("skimage/coffee-gray", _jpeg(_gray(_skimage("coffee.png")))),
        ("skimage/hubble_deep_field-gray", _jpeg(_gray(_skimage("hubble_deep_field.jpg")))),
        # Gray pictures in 3-channel JPEGs, as phones and screenshots send them.
        ("skimage/rocket-gray-rgb", _jpeg(np.dstack([_gray(_skimage("rocket.jpg"))] * 3))),
        ("skimage/camera-rgb", _jpeg(np.dstack([_skimage("camera.png")] * 3))),
    ]
    return images


def _skimage_faces() -> np.ndarray:
    """The first faces of scikit-image's LFW subset, as (N, 25, 25) uint8."""
    raw = (files("skimage") / "data" / "lfw_subset.npy").read_bytes()
    faces = np.load(io.BytesIO(raw), allow_pickle=False)[:2]
    return np.rint(faces * 255).astype(np.uint8)


# ------------------------------------------------------------------ documents

_VOCABULARY = (
    "the of and to in report patient total date number please page account amount "
    "order name address service invoice meeting summary agenda section results "
    "table figure payment balance reference customer notes review approved signature "
    "item quantity price tax subtotal thank you for your visit phone email city"
)
_WORDS = tuple(_VOCABULARY.split())
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
)


def _line(rng: Rng, width: int, font: int, scale: float) -> str:
    """Random words that fit in `width` px."""
    words: list[str] = []
    while True:
        word = str(rng.choice(_WORDS))
        if cv2.getTextSize(" ".join([*words, word]), font, scale, 1)[0][0] > width:
            return " ".join(words) or word
        words.append(word)


def _text_block(
    rng: Rng, canvas: np.ndarray, box: tuple[int, int, int, int], font: int, scale: float
) -> None:
    """Fill box (x, y, width, height) of `canvas` with lines of black text and paragraph gaps."""
    x, y, width, height = box
    step = int(cv2.getTextSize("Hg", font, scale, 1)[0][1] * 2.0) + 2
    row = y + step
    while row < y + height:
        ragged = width if rng.random() < 0.8 else int(width * rng.uniform(0.3, 0.9))
        cv2.putText(
            canvas, _line(rng, ragged, font, scale), (x, row), font, scale, 0, 1, cv2.LINE_AA
        )
        row += step * (2 if rng.random() < 0.1 else 1)


def _letter(rng: Rng, font: int, columns: int = 1, paper: int = 255) -> np.ndarray:
    """An A4 portrait page (1240x1754 at 150 dpi, halved) of text in `columns` columns."""
    page = np.full((877, 620), paper, np.uint8)
    cv2.putText(page, "QUARTERLY REPORT", (50, 80), font, 1.0, 0, 2, cv2.LINE_AA)
    gutter = 24
    width = (620 - 100 - gutter * (columns - 1)) // columns
    for column in range(columns):
        box = (50 + column * (width + gutter), 100, width, 720)
        _text_block(rng, page, box, font, 0.42)
    cv2.putText(page, "1", (305, 850), font, 0.4, 0, 1, cv2.LINE_AA)
    return page


def _receipt(rng: Rng) -> np.ndarray:
    """A till receipt: narrow and tall, items with right-aligned prices, a barcode."""
    width, font = 300, cv2.FONT_HERSHEY_PLAIN
    page = np.full((900, width), 250, np.uint8)
    cv2.putText(page, "CORNER STORE", (70, 40), cv2.FONT_HERSHEY_DUPLEX, 0.7, 0, 1, cv2.LINE_AA)
    row = 80
    for _ in range(22):
        price = f"{rng.uniform(0.5, 40):7.2f}"
        cv2.putText(page, str(rng.choice(_WORDS)).upper(), (15, row), font, 1.0, 0, 1)
        cv2.putText(page, price, (200, row), font, 1.0, 0, 1)
        row += 26
    cv2.line(page, (15, row - 12), (285, row - 12), 0, 1)
    cv2.putText(page, "TOTAL      123.45", (15, row + 14), font, 1.3, 0, 2)
    for x in range(40, 260, 3):  # a barcode
        if rng.random() < 0.5:
            cv2.line(page, (x, 800), (x, 870), 0, int(rng.integers(1, 3)))
    return page


def _form(rng: Rng) -> np.ndarray:
    """A form: labelled boxes, tick boxes and a table of numbers."""
    page = np.full((1100, 850), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(page, "APPLICATION FORM", (60, 70), font, 1.1, 0, 2, cv2.LINE_AA)
    for index, label in enumerate(("Name", "Address", "City", "Phone", "Email")):
        y = 120 + index * 60
        cv2.putText(page, label, (60, y + 28), font, 0.6, 0, 1, cv2.LINE_AA)
        cv2.rectangle(page, (200, y), (790, y + 42), 0, 1)
    for index in range(4):
        x = 60 + index * 190
        cv2.rectangle(page, (x, 440), (x + 22, 462), 0, 2)
        if rng.random() < 0.5:
            cv2.line(page, (x + 4, 452), (x + 18, 446), 0, 2)
        cv2.putText(page, f"option {index + 1}", (x + 32, 458), font, 0.55, 0, 1, cv2.LINE_AA)
    for row in range(12):  # a 12 x 5 table, a header row and 11 rows of numbers
        y = 520 + row * 40
        cv2.line(page, (60, y), (790, y), 0, 2 if row < 2 else 1)
        for column in range(5):
            text = "Item" if row == 0 else f"{rng.integers(1, 9999)}"
            cv2.putText(page, text, (75 + column * 146, y + 28), font, 0.55, 0, 1, cv2.LINE_AA)
    cv2.line(page, (60, 1000), (790, 1000), 0, 2)
    for column in range(6):
        cv2.line(page, (60 + column * 146, 520), (60 + column * 146, 1000), 0, 1)
    return page


def _slide(rng: Rng) -> np.ndarray:
    """A presentation slide (4:3): a coloured title bar and bullet points."""
    slide = np.full((768, 1024, 3), 255, np.uint8)
    slide[:120] = (31, 78, 140)
    font = cv2.FONT_HERSHEY_DUPLEX
    cv2.putText(slide, "Project Summary", (50, 80), font, 1.6, (255, 255, 255), 2, cv2.LINE_AA)
    for index in range(6):
        y = 200 + index * 85
        cv2.circle(slide, (70, y - 10), 8, (31, 78, 140), -1)
        cv2.putText(slide, _line(rng, 820, font, 1.0), (100, y), font, 1.0, (40, 40, 40), 1)
    return slide


def _scan(rng: Rng) -> np.ndarray:
    """A scanned letter: gray paper, slightly rotated, with sensor noise."""
    page = _letter(rng, cv2.FONT_HERSHEY_COMPLEX, paper=236)
    rotation = cv2.getRotationMatrix2D((310, 438), 1.5, 1.0)
    page = cv2.warpAffine(page, rotation, (620, 877), borderValue=(90,))
    noisy = page.astype(np.float32) + rng.normal(0, 6, page.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _documents(rng: Rng) -> list[tuple[str, bytes]]:
    """scikit-image's page and text, and synthetic letters, receipt, form, slide and scan."""
    return [
        ("skimage/page", _png(_skimage("page.png"))),
        ("skimage/text", _png(_skimage("text.png"))),
        ("synthetic/document-letter", _png(_letter(rng, _FONTS[0]))),
        ("synthetic/document-letter-triplex", _jpeg(_letter(rng, _FONTS[3]))),
        ("synthetic/document-two-columns", _png(_letter(rng, _FONTS[1], columns=2))),
        ("synthetic/document-plain", _jpeg(_letter(rng, _FONTS[4]), quality=80)),
        ("synthetic/document-script", _png(_letter(rng, _FONTS[5]))),
        ("synthetic/document-receipt", _jpeg(_receipt(rng))),
        ("synthetic/document-form", _png(_form(rng))),
        ("synthetic/document-slide", _png(_slide(rng))),
        ("synthetic/document-scan", _jpeg(_scan(rng), quality=75)),
    ]


# ------------------------------------------------------------------ screenshots

_ACCENTS = ((0, 120, 215), (52, 168, 83), (234, 67, 53), (251, 188, 5), (142, 68, 173))


def _window(rng: Rng, width: int, height: int, dark: bool) -> np.ndarray:
    """A desktop application window: title bar, toolbar, sidebar list, empty content area."""
    background = (32, 33, 36) if dark else (250, 250, 250)
    ink = (230, 230, 230) if dark else (30, 30, 30)
    screen = np.full((height, width, 3), background, np.uint8)
    screen[:32] = (60, 60, 64) if dark else (222, 222, 226)
    for index, colour in enumerate(((237, 106, 94), (245, 191, 79), (98, 197, 84))):
        cv2.circle(screen, (18 + index * 22, 16), 6, colour, -1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for index in range(6):  # toolbar buttons
        x = 12 + index * 96
        cv2.rectangle(screen, (x, 42), (x + 84, 70), _ACCENTS[index % 5], -1)
        cv2.putText(screen, str(rng.choice(_WORDS)), (x + 8, 62), font, 0.45, (255, 255, 255), 1)
    sidebar = width // 5
    screen[80:, :sidebar] = (44, 45, 48) if dark else (236, 238, 241)
    for row in range(100, height - 10, 30):
        cv2.putText(screen, str(rng.choice(_WORDS)), (16, row), font, 0.5, ink, 1, cv2.LINE_AA)
    return screen


def _text_screen(rng: Rng, width: int, height: int, dark: bool = False) -> np.ndarray:
    """A window whose content is a card, paragraphs of text and a button."""
    screen = _window(rng, width, height, dark)
    left = width // 5 + 30
    ink = (230, 230, 230) if dark else (30, 30, 30)
    accent = _ACCENTS[int(rng.integers(0, 5))]
    cv2.rectangle(screen, (left, 100), (width - 30, 220), accent, -1)
    cv2.putText(screen, "Dashboard", (left + 20, 170), cv2.FONT_HERSHEY_DUPLEX, 1.2, (255,) * 3, 2)
    font, row = cv2.FONT_HERSHEY_SIMPLEX, 260
    while row < height - 80:
        cv2.putText(
            screen, _line(rng, width - left - 40, font, 0.5), (left, row), font, 0.5, ink, 1
        )
        row += 26 if rng.random() < 0.85 else 52
    cv2.rectangle(screen, (width - 170, height - 60), (width - 30, height - 24), accent, -1)
    return screen


def _gallery(rng: Rng, width: int, height: int, dark: bool = False) -> np.ndarray:
    """A window whose content is a grid of thumbnails (colour gradients) with captions."""
    screen = _window(rng, width, height, dark)
    left, size, gap = width // 5 + 24, 150, 24
    font = cv2.FONT_HERSHEY_SIMPLEX
    ramp = np.linspace(0.3, 1.0, size, dtype=np.float32)[:, None, None]
    for y in range(100, height - size - 30, size + gap + 20):
        for x in range(left, width - size - 10, size + gap):
            colour = rng.integers(40, 256, 3).astype(np.float32)
            screen[y : y + size, x : x + size] = (ramp * colour).astype(np.uint8)
            caption = f"IMG_{rng.integers(1000, 9999)}"
            cv2.putText(screen, caption, (x, y + size + 16), font, 0.45, (128, 128, 128), 1)
    return screen


def _phone(rng: Rng) -> np.ndarray:
    """A phone screen (portrait 585x1266): status bar, header, a list with avatars, tab bar."""
    width, height = 585, 1266
    screen = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(screen, "9:41", (30, 36), font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.rectangle(screen, (500, 20), (550, 38), (0, 0, 0), 2)
    cv2.putText(screen, "Messages", (30, 120), font, 1.4, (0, 0, 0), 3, cv2.LINE_AA)
    for index, y in enumerate(range(170, height - 150, 110)):
        cv2.circle(screen, (70, y + 45), 36, _ACCENTS[index % 5], -1, cv2.LINE_AA)
        cv2.putText(screen, _line(rng, 300, font, 0.8), (125, y + 35), font, 0.8, (0, 0, 0), 2)
        cv2.putText(screen, _line(rng, 420, font, 0.6), (125, y + 72), font, 0.6, (120,) * 3, 1)
        cv2.line(screen, (125, y + 105), (width, y + 105), (220, 220, 220), 1)
    screen[height - 110 :] = (246, 246, 246)
    for index in range(4):
        cv2.circle(screen, (75 + index * 145, height - 62), 18, _ACCENTS[index], 2, cv2.LINE_AA)
    return screen


def _screenshots(rng: Rng) -> list[tuple[str, bytes]]:
    """Synthetic screenshots: 16:9 and 4:3 desktops, a phone, in colour and in gray."""
    return [
        ("synthetic/screenshot-1280x720", _png(_text_screen(rng, 1280, 720))),
        ("synthetic/screenshot-1920x1080-dark", _png(_text_screen(rng, 1920, 1080, dark=True))),
        ("synthetic/screenshot-1024x768", _jpeg(_text_screen(rng, 1024, 768))),
        ("synthetic/screenshot-gallery-1280x720", _png(_gallery(rng, 1280, 720))),
        ("synthetic/screenshot-gallery-800x600-dark", _jpeg(_gallery(rng, 800, 600, dark=True))),
        ("synthetic/screenshot-phone", _png(_phone(rng))),
        ("synthetic/screenshot-phone-jpeg", _jpeg(_phone(rng))),
        ("synthetic/screenshot-1366x768-gray", _png(_gray(_text_screen(rng, 1366, 768)))),
        ("synthetic/screenshot-gallery-1024x768-gray", _jpeg(_gray(_gallery(rng, 1024, 768)))),
        ("synthetic/screenshot-phone-gray", _png(_gray(_phone(rng)))),
    ]


# ------------------------------------------------------------------ noise and blanks


def _low_pass(rng: Rng, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise, stretched to 0..255."""
    blurred = cv2.GaussianBlur(rng.normal(size=shape).astype(np.float32), (0, 0), sigma)
    low, high = blurred.min(), blurred.max()
    return np.rint((blurred - low) / (high - low) * 255).astype(np.uint8)


def _fractal(rng: Rng, size: int) -> np.ndarray:
    """1/f-like noise: low-pass octaves summed with halving weights, stretched to 0..255."""
    total = np.zeros((size, size), np.float32)
    for octave in range(6):
        total += _low_pass(rng, (size, size), 2.0**octave).astype(np.float32) * 2.0**octave
    total -= total.min()
    return np.rint(total / total.max() * 255).astype(np.uint8)


def _salt_and_pepper(rng: Rng, shape: tuple[int, ...], amount: float) -> np.ndarray:
    """Mid-gray with a fraction `amount` of pixels set to 0 or 255."""
    pixels = np.full(shape, 128, np.uint8)
    hits = rng.random(shape)
    pixels[hits < amount / 2] = 0
    pixels[(hits >= amount / 2) & (hits < amount)] = 255
    return pixels


def _noise(rng: Rng) -> list[tuple[str, bytes]]:
    """Uniform, Gaussian, salt-and-pepper, low-pass and fractal noise, gray, RGB and 16-bit."""

    def gaussian(shape: tuple[int, ...], sd: float) -> np.ndarray:
        return np.clip(rng.normal(128, sd, shape), 0, 255).astype(np.uint8)

    return [
        ("synthetic/noise-uniform-256", _png(rng.integers(0, 256, (256, 256), np.uint8))),
        (
            "synthetic/noise-uniform-rgb-640x480",
            _png(rng.integers(0, 256, (480, 640, 3), np.uint8)),
        ),
        (
            "synthetic/noise-uniform-1024x768-jpeg",
            _jpeg(rng.integers(0, 256, (768, 1024), np.uint8)),
        ),
        ("synthetic/noise-gaussian-512", _png(gaussian((512, 512), 40))),
        ("synthetic/noise-gaussian-rgb-320x240", _jpeg(gaussian((240, 320, 3), 60))),
        ("synthetic/noise-salt-pepper-512", _png(_salt_and_pepper(rng, (512, 512), 0.2))),
        ("synthetic/noise-salt-pepper-rgb-400", _png(_salt_and_pepper(rng, (400, 400, 3), 0.1))),
        ("synthetic/noise-lowpass-4-512", _png(_low_pass(rng, (512, 512), 4))),
        ("synthetic/noise-lowpass-16-1024", _jpeg(_low_pass(rng, (1024, 1024), 16))),
        ("synthetic/noise-lowpass-rgb-8-640x480", _png(_low_pass(rng, (480, 640, 3), 8))),
        ("synthetic/noise-fractal-512", _png(_fractal(rng, 512))),
        ("synthetic/noise-uniform-16bit-256", _png(rng.integers(0, 65536, (256, 256), np.uint16))),
    ]


def _blank(rng: Rng) -> list[tuple[str, bytes]]:
    """Constant and near-constant images."""
    stray = np.full((512, 512), 128, np.uint8)
    stray.flat[rng.choice(stray.size, 20, replace=False)] = rng.integers(0, 256, 20)
    near = np.clip(rng.normal(200, 1.0, (600, 800)), 0, 255).astype(np.uint8)
    gradient = np.tile(np.linspace(126, 130, 1024), (1024, 1)).round().astype(np.uint8)
    return [
        ("synthetic/blank-black-512", _png(np.zeros((512, 512), np.uint8))),
        ("synthetic/blank-white-512", _png(np.full((512, 512), 255, np.uint8))),
        ("synthetic/blank-gray-512", _png(np.full((512, 512), 128, np.uint8))),
        ("synthetic/blank-white-2048", _png(np.full((2048, 2048), 255, np.uint8))),
        ("synthetic/blank-black-rgb-640x480", _jpeg(np.zeros((480, 640, 3), np.uint8))),
        ("synthetic/blank-white-rgb-640x480", _jpeg(np.full((480, 640, 3), 255, np.uint8))),
        ("synthetic/blank-colour-400", _png(np.full((400, 400, 3), (40, 90, 200), np.uint8))),
        ("synthetic/blank-16bit-256", _png(np.full((256, 256), 32768, np.uint16))),
        ("synthetic/blank-gradient-1024", _png(gradient)),
        ("synthetic/blank-stray-pixels-512", _png(stray)),
        ("synthetic/blank-near-constant-jpeg", _jpeg(near)),
    ]


# ------------------------------------------------------------------ other modalities

# pydicom's bundled test files that decode with the installed plugins, one per distinct image.
_DICOM_RENDERS = (
    "CT_small.dcm",  # CT
    "693_J2KI.dcm",  # CT, JPEG 2000
    "J2K_pixelrep_mismatch.dcm",  # CT head, JPEG 2000 lossless
    "MR_small.dcm",  # MR
    "examples_overlay.dcm",  # MR abdomen, 16-bit
    "JPEG2000.dcm",  # NM whole-body bone scan
    "liver_1frame.dcm",  # SEG, a binary liver mask
    "rtdose_1frame.dcm",  # RT dose grid, 10x10
    "examples_palette.dcm",  # US, palette colour
    "examples_rgb_color.dcm",  # US, RGB
    "examples_ybr_color.dcm",  # US, multi-frame YBR JPEG: the first frame
)
# Raw files sent as they are, so the DICOM path's refusal is measured too.
_DICOM_RAW = (
    "CT_small.dcm",
    "693_J2KI.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "examples_jpeg2k.dcm",
    "rtdose_1frame.dcm",
)


def _dicom_path(filename: str) -> Path:
    """A test file in pydicom's wheel; never downloaded."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(filename, download=False)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom's wheel has no test file {filename}")
    return Path(path)


def _window_8bit(pixels: np.ndarray) -> np.ndarray:
    """Window gray pixels of any depth to uint8 between their 0.5 and 99.5 percentiles."""
    values = pixels.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:  # a near-binary image: use its full range
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return np.rint(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _dicom_render(filename: str) -> np.ndarray:
    """The first frame of a DICOM file as a client would export it: 8-bit gray or RGB."""
    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    dataset = pydicom.dcmread(_dicom_path(filename))
    pixels = pixel_array(dataset, index=0 if int(dataset.get("NumberOfFrames", 1)) > 1 else None)
    if dataset.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        return (rgb >> 8).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
    if pixels.ndim == 3:  # colour: already RGB after pydicom's conversion
        return pixels.astype(np.uint8)
    return _window_8bit(pixels)


def _other_modality(rng: Rng) -> list[tuple[str, bytes]]:
    """CT, MR, NM, US, SEG and RT-dose renders and files; a CT phantom, fundus, histology."""
    images = [(f"pydicom/{name[:-4]}", _png(_dicom_render(name))) for name in _DICOM_RENDERS]
    images += [
        ("skimage/phantom", _png(_gray(_skimage("phantom.png")))),
        ("skimage/retina", _jpeg(_skimage("retina.jpg"))),
        ("skimage/microaneurysms", _png(_skimage("microaneurysms.png"))),
        ("skimage/ihc", _jpeg(_skimage("ihc.png"))),
    ]
    images += [(f"pydicom/{name}", _dicom_path(name).read_bytes()) for name in _DICOM_RAW]
    return images
