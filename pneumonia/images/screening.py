"""The cheap half of "is this a chest X-ray?": checks on the picture itself, before the model.

A frontal chest radiograph is grayscale, uses a wide range of gray levels and is roughly
as wide as it is tall (films are 14x17 or 17x17 inches; detectors likewise). A colour
photograph, a blank or near-constant image, a screenshot or a long strip fails one of these
in about a millisecond. What passes goes on to the learned check (the distance of the
model's features from the training split's; see pneumonia.decision.gate.FeatureGate).

The bounds are wide on purpose: every image of the training data passes by a margin, and
the evaluate stage reports the false rejections on the held-out splits.
"""

from __future__ import annotations

import cv2
import numpy as np

from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import decode_with_colour, read_header, to_uint8
from pneumonia.images.formats import ImageError, is_dicom
from pneumonia.images.prepare import decode_size, prepare_image

NOT_A_CHEST_XRAY = "not_a_chest_xray"  # the reason of every refusal that the image is not one
# A chest X-ray of a patient outside the population the model was trained on (by age).
OUTSIDE_TRAINING_POPULATION = "outside_training_population"

MAX_SATURATION = 0.20  # mean HSV saturation of the thumbnail, 0..1 (radiographs: 0.00;
# a scan of film with a 15% tint: 0.15)
MIN_DYNAMIC_RANGE = 0.15  # 1st to 99th percentile of the gray levels, share of full scale
ASPECT_RANGE = (0.6, 1.67)  # width / height


def saturation(thumbnail: np.ndarray) -> float:
    """Mean HSV saturation (0..1) of an (h, w, 3) uint8 RGB image."""
    hsv = cv2.cvtColor(np.ascontiguousarray(thumbnail), cv2.COLOR_RGB2HSV)
    return float(hsv[:, :, 1].mean()) / 255.0


def dynamic_range(gray: np.ndarray) -> float:
    """The 1st-to-99th percentile spread of an (H, W) gray image, share of full scale."""
    sample = gray
    if gray.size > 16_384:  # a strided sample is enough for two percentiles
        step = int(np.ceil(np.sqrt(gray.size / 16_384)))
        sample = gray[::step, ::step]
    # sampled before converting: to_uint8 is per pixel, and a 16-bit image at the pixel cap
    # converted whole took 286 MiB of float32 and uint8 copies
    levels = to_uint8(sample)
    cumulative = np.cumsum(np.bincount(levels.ravel(), minlength=256))
    low, high = np.searchsorted(cumulative, (0.01 * levels.size, 0.99 * levels.size))
    return float(high - low) / 255.0


def aspect_refusal(width: int, height: int) -> str | None:
    """Why an image of this shape is not a chest radiograph, or None."""
    aspect = width / height
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return (
            f"the image's aspect ratio is {aspect:.2f} (width / height); "
            f"a chest radiograph's is between {ASPECT_RANGE[0]} and {ASPECT_RANGE[1]}"
        )
    return None


def screen(gray: np.ndarray, thumbnail: np.ndarray | None) -> str | None:
    """Why the image is not a chest X-ray, or None when it passes the cheap checks.

    `gray`: the decoded (H, W) gray pixels, EXIF orientation applied; `thumbnail`: a small
    RGB copy when the file is stored in colour (`decode.colour_thumbnail`), else None.
    """
    height, width = gray.shape
    if (why := aspect_refusal(width, height)) is not None:
        return why
    if thumbnail is not None and (value := saturation(thumbnail)) > MAX_SATURATION:
        return f"the image is in colour (mean saturation {value:.2f}); an X-ray is grayscale"
    spread = dynamic_range(gray)
    if spread < MIN_DYNAMIC_RANGE:
        return (
            f"the image is nearly uniform (its gray levels span {spread:.0%} of the range); "
            "a radiograph spans far more"
        )
    return None


class NotAChestXray(ImageError):
    """A decodable image that is not a chest X-ray: `reason` is always NOT_A_CHEST_XRAY."""

    def __init__(self, message: str) -> None:
        """`message` says which check refused it."""
        super().__init__(NOT_A_CHEST_XRAY, message)


def screen_and_prepare(
    data: bytes, config: PreprocessConfig, max_age_years: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(the decoded gray image, the model input) of an encoded image that passes the cheap
    checks. ImageError for bytes that are not a usable image, NotAChestXray (an ImageError)
    for an image the checks refuse, and OUTSIDE_TRAINING_POPULATION for a DICOM whose patient
    is older than `max_age_years` (None: no bound). The age is never put in a message."""
    # Format, structure and pixel caps are checked from the bytes before decoding, and so is
    # the shape of a JPEG or PNG (the aspect ratio is the same whichever way EXIF turns it).
    if not is_dicom(data):
        header = read_header(data)
        if (why := aspect_refusal(header.width, header.height)) is not None:
            raise NotAChestXray(why)
    elif max_age_years is not None:
        age = read_header(data).age_years
        if age is not None and age > max_age_years:
            raise ImageError(
                OUTSIDE_TRAINING_POPULATION,
                "the patient's age in the DICOM header is outside the population the model "
                f"was trained on (pediatric, up to {max_age_years:g} years)",
            )
    gray, thumbnail = decode_with_colour(data, min_size=decode_size(config))
    pixels = prepare_image(gray, config)  # (S, S, 1) uint8, as for bytes
    why = screen(gray, thumbnail)
    if why is not None:
        raise NotAChestXray(why)
    return gray, pixels
