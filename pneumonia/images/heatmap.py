"""Class activation maps as images: numpy and OpenCV only, no TensorFlow (serving side).

The model sees the submitted image resized to a square without keeping its aspect
ratio, so its (h, w) map covers the whole image: stretching the map back to the
image's width:height is the exact inverse of that resize.
"""

from __future__ import annotations

import cv2
import numpy as np

BLEND_IMAGE = 0.6  # weight of the image where the map is warm
BLEND_COLOUR = 0.4  # weight of the colour map there
COLOUR_MAP = cv2.COLORMAP_JET


def heatmap_size(width: int, height: int, max_side: int = 512) -> tuple[int, int]:
    """(width, height) of the heat map: the image's aspect ratio, longest side capped."""
    if width < 1 or height < 1 or max_side < 1:
        raise ValueError(f"sizes must be positive, got {width}x{height}, max_side {max_side}")
    longest = min(max_side, max(width, height))
    if width >= height:
        return longest, max(1, round(longest * height / width))
    return max(1, round(longest * width / height)), longest


def heatmap(
    cam: np.ndarray,
    width: int,
    height: int,
    max_side: int = 512,
    region: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """(H', W') uint8 gray map of an (h, w) class activation map, brighter = more pneumonia.

    The map is rectified (ReLU), divided by its maximum (all zeros when that is <= 0 or
    not finite) and upsampled bilinearly to the submitted image's aspect ratio
    width:height, its longest side min(max_side, max(width, height)). `region`, (top, left,
    bottom, right) in the image's px, is the part the model saw (a thorax crop): the map
    covers that part and is zero outside it; None is the whole image.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"expected a non-empty (h, w) map, got shape {cam.shape}")
    out_width, out_height = heatmap_size(width, height, max_side)
    top, left, bottom, right = region if region is not None else (0, 0, height, width)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"region {region} is not inside a {width}x{height} image")
    positive = np.maximum(np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    peak = float(positive.max())
    heat = np.zeros((out_height, out_width), dtype=np.uint8)
    if peak <= 0.0:
        return heat
    scale_y, scale_x = out_height / height, out_width / width
    rows = slice(round(top * scale_y), max(round(top * scale_y) + 1, round(bottom * scale_y)))
    cols = slice(round(left * scale_x), max(round(left * scale_x) + 1, round(right * scale_x)))
    rows = slice(min(rows.start, out_height - 1), min(rows.stop, out_height))
    cols = slice(min(cols.start, out_width - 1), min(cols.stop, out_width))
    box_height, box_width = rows.stop - rows.start, cols.stop - cols.start
    scaled = cv2.resize(
        positive / peak, (box_width, box_height), interpolation=cv2.INTER_LINEAR
    ).reshape(box_height, box_width)
    heat[rows, cols] = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return heat


def png(pixels: np.ndarray) -> bytes:
    """8-bit PNG bytes of an (H, W) gray or (H, W, 3) RGB uint8 image."""
    pixels = np.asarray(pixels)
    rgb = pixels.ndim == 3 and pixels.shape[2] == 3
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or rgb):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if rgb else pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def overlay(gray_image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(H', W', 3) uint8 RGB: the image blended 0.6/0.4 with a colour map of the heat.

    `gray_image` is (H, W) or (H, W, 1) uint8, resized to heat's (H', W'); only pixels
    with heat > 0 are blended, the cold ones show the plain image.
    """
    heat = np.asarray(heat)
    if heat.ndim != 2 or heat.dtype != np.uint8:
        raise ValueError(f"expected (H', W') uint8 heat, got {heat.shape} {heat.dtype}")
    image = np.asarray(gray_image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W) uint8 image, got {image.shape} {image.dtype}")
    out_height, out_width = heat.shape
    if image.shape != heat.shape:
        shrinking = image.shape[0] * image.shape[1] > out_height * out_width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        image = cv2.resize(image, (out_width, out_height), interpolation=interpolation)
    plain = np.repeat(image.reshape(out_height, out_width, 1), 3, axis=2)
    colour = cv2.cvtColor(cv2.applyColorMap(heat, COLOUR_MAP), cv2.COLOR_BGR2RGB)
    blended = BLEND_IMAGE * plain.astype(np.float32) + BLEND_COLOUR * colour.astype(np.float32)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where((heat > 0)[..., None], blended, plain)
