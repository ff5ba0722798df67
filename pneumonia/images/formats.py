"""What every image path shares: the accepted formats, the size caps, the error and the header.

Imports nothing else of the project, so the DICOM reader and the JPEG/PNG decoder can both
import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

# Formats the pipeline and the endpoint accept; anything else is rejected.
ACCEPTED_FORMATS = ("JPEG", "PNG")


# Caps checked from the header, before any pixel is decoded.
MAX_PIXELS = 25_000_000
MAX_SIDE = 8192


class ImageError(ValueError):
    """An input that is not a usable image; `reason` is a stable short code."""

    def __init__(self, reason: str, message: str) -> None:
        """`reason` picks the HTTP status and the quarantine entry; `message` explains."""
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    """Format, size and mode, as read from the header before decoding."""

    format: str
    width: int
    height: int
    mode: str
    age_years: float | None = None  # the patient's age, from a DICOM header; None: unknown


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: "DICM" after the 128-byte preamble."""
    return data[128:132] == b"DICM"
