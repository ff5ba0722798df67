"""The cheap "is this a chest X-ray?" checks: every committed real X-ray passes, with its
framing and exposure shifted too; colour, near-uniform and strip-shaped pictures do not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.images.decode import colour_thumbnail, decode_gray
from pneumonia.images.screening import screen
from tests.conftest import SAMPLE_DATA


def judged(data: bytes) -> str | None:
    return screen(decode_gray(data), colour_thumbnail(data))


def encoded(pixels: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


XRAYS = sorted(SAMPLE_DATA.rglob("*.jpeg"))


def test_every_committed_real_xray_passes():
    assert len(XRAYS) == 150
    refused = {path.name: why for path in XRAYS if (why := judged(path.read_bytes()))}
    assert refused == {}


@pytest.mark.parametrize(
    "shift",
    [
        lambda g: np.clip(g.astype(int) * 0.6 + 50, 0, 255).astype(np.uint8),  # low contrast
        lambda g: np.pad(g, 20),  # a black border
        lambda g: g[:, 20:-20],  # narrower: aspect 0.82
        lambda g: np.stack([g] * 3, axis=-1),  # gray stored as RGB
    ],
    ids=["low contrast", "padded", "portrait crop", "gray as RGB"],
)
def test_real_xrays_stay_accepted_under_ordinary_variation(shift):
    for path in XRAYS[::15]:
        gray = decode_gray(path.read_bytes())
        assert judged(encoded(np.ascontiguousarray(shift(gray)))) is None


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_a_colour_picture_is_refused(format):
    rgb = np.zeros((240, 240, 3), np.uint8)  # red to green across, blue down: a colourful scene
    rgb[..., 0] = np.linspace(0, 255, 240)[None, :]
    rgb[..., 1] = np.linspace(255, 0, 240)[None, :]
    rgb[..., 2] = np.linspace(0, 200, 240)[:, None]
    assert "colour" in judged(encoded(rgb, format))


def test_a_tinted_xray_with_little_saturation_is_still_gray_enough():
    gray = decode_gray(XRAYS[0].read_bytes()).astype(np.float32)
    sepia = np.stack([gray, gray * 0.95, gray * 0.85], axis=-1).astype(np.uint8)
    assert judged(encoded(sepia)) is None


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_images_are_refused(level):
    assert "uniform" in judged(encoded(np.full((300, 300), level, np.uint8)))


def test_a_near_constant_image_with_a_few_stray_pixels_is_refused():
    pixels = np.full((300, 300), 120, np.uint8)
    pixels[::50, ::50] = 255
    assert "uniform" in judged(encoded(pixels))


@pytest.mark.parametrize("shape", [(100, 400), (1920, 600)], ids=["banner", "tall strip"])
def test_strips_are_refused_for_their_aspect_ratio(shape):
    pixels = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    assert "aspect ratio" in judged(encoded(pixels))


def test_serving_decodes_once_and_gets_the_same_gray_pixels_as_the_pipeline():
    """decode_with_colour (serving: one YCbCr decode for a colour JPEG) against decode_gray
    (pipeline): bit-identical gray, at the model's size and in full, EXIF rotation included."""
    from pneumonia.images.decode import decode_with_colour

    picture = Image.open(XRAYS[0])  # an RGB JPEG, as every committed X-ray is
    rotated = []
    for value in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = value
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
        rotated.append(buffer.getvalue())
    for data in [path.read_bytes() for path in XRAYS] + rotated:
        for min_size in (128, None):
            gray, thumbnail = decode_with_colour(data, min_size=min_size)
            np.testing.assert_array_equal(gray, decode_gray(data, min_size=min_size))
            assert thumbnail is None or (thumbnail.ndim == 3 and max(thumbnail.shape) <= 64)
            verdict = screen(gray, thumbnail)
            assert verdict == screen(decode_gray(data), colour_thumbnail(data))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "I;16"])
def test_a_colour_png_is_decoded_once_into_the_pipelines_gray_and_its_thumbnail(mode, monkeypatch):
    from pneumonia.images import decode
    from pneumonia.images.decode import decode_with_colour

    picture = Image.open(XRAYS[0]).convert("RGB")
    converted = picture.convert("I;16") if mode == "I;16" else picture.convert(mode)
    data = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the gray must follow EXIF as decode_gray does
    converted.save(data, format="PNG", exif=exif.tobytes())
    data = data.getvalue()
    expected = (decode_gray(data), colour_thumbnail(data))
    opened = []
    real = decode._open_checked
    monkeypatch.setattr(decode, "_open_checked", lambda raw: opened.append(1) or real(raw))
    gray, thumbnail = decode_with_colour(data, min_size=128)
    np.testing.assert_array_equal(gray, expected[0])
    if expected[1] is None:
        assert thumbnail is None
    else:
        np.testing.assert_array_equal(thumbnail, expected[1])
        assert len(opened) == 1  # one open, one decode


def test_a_strip_is_refused_from_its_header_before_its_pixels_are_decoded(monkeypatch):
    from pneumonia.images import screening
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.images.screening import NotAChestXray, screen_and_prepare
    from tests.hostile import rgba_png_at_the_cap

    def never(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(screening, "decode_with_colour", never)
    config = PreprocessConfig(
        image_size=128, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    data = rgba_png_at_the_cap()  # 8192 x 3051 RGBA: 100 MB decoded
    with pytest.raises(NotAChestXray) as refused:
        screen_and_prepare(data, config)
    assert "aspect ratio is 2.69" in str(refused.value)


# ---------------------------------------------------------------- each check at its edge


def config():
    from pneumonia.images.config import PreprocessConfig

    return PreprocessConfig(
        image_size=32, intensity="none", clahe_clip_limit=2.0, clahe_tile_grid=8
    )


def two_tone(height: int, width: int) -> np.ndarray:
    pixels = np.zeros((height, width), np.uint8)
    pixels[:, width // 2 :] = 200
    return pixels


@pytest.mark.parametrize(("width", "height"), [(60, 100), (167, 100), (100, 100)])
def test_an_aspect_ratio_at_either_bound_passes(width, height):
    from pneumonia.images.screening import aspect_refusal

    assert aspect_refusal(width, height) is None
    assert screen(two_tone(height, width), None) is None


@pytest.mark.parametrize(("width", "height", "shown"), [(59, 100, "0.59"), (168, 100, "1.68")])
def test_an_aspect_ratio_past_a_bound_is_refused_saying_both_bounds(width, height, shown):
    assert screen(two_tone(height, width), None) == (
        f"the image's aspect ratio is {shown} (width / height); "
        "a chest radiograph's is between 0.6 and 1.67"
    )


def test_saturation_is_the_mean_hsv_saturation_as_a_share():
    from pneumonia.images.screening import saturation

    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert saturation(red) == 1.0
    assert saturation(np.full((4, 4, 3), 90, np.uint8)) == 0.0
    pink = np.zeros((4, 4, 3), np.uint8)
    pink[...] = (255, 204, 204)  # saturation 51 / 255 = 0.2 exactly
    assert saturation(pink) == 0.2


def test_a_saturation_at_the_limit_passes_and_above_it_is_refused():
    gray = two_tone(64, 64)
    at_limit = np.zeros((8, 8, 3), np.uint8)
    at_limit[...] = (255, 204, 204)
    assert screen(gray, at_limit) is None
    above = at_limit.copy()
    above[...] = (255, 203, 203)  # saturation 52 / 255 = 0.20392
    assert screen(gray, above) == (
        "the image is in colour (mean saturation 0.20); an X-ray is grayscale"
    )


def test_the_dynamic_range_is_the_1st_to_99th_percentile_spread():
    from pneumonia.images.screening import dynamic_range

    assert dynamic_range(two_tone(64, 64)) == 200 / 255
    # 0.5% of the pixels at 0, the rest from 100 up: the 1st percentile ignores the dark few
    pixels = np.full((100, 100), 100, np.uint8)
    pixels[:, 50:] = 180
    pixels[0, :50] = 0
    assert dynamic_range(pixels) == 80 / 255
    # 16-bit gray is read on the 8-bit scale
    assert dynamic_range(two_tone(64, 64).astype(np.uint16) * 257) == 200 / 255


def test_a_large_image_is_sampled_with_a_stride_for_the_percentiles():
    from pneumonia.images.screening import dynamic_range

    stripes = np.zeros((5, 3277), np.uint8)  # 16,385 pixels: one over the sampling size
    stripes[:, 1::2] = 255  # odd columns white: a stride of 2 sees only the black ones
    assert dynamic_range(stripes) == 0.0
    assert dynamic_range(stripes[:, :3276]) == 1.0  # 16,380 pixels: every one counted


def test_a_nearly_uniform_image_is_refused_saying_how_much_it_spans():
    pixels = np.full((64, 64), 100, np.uint8)
    pixels[:, 32:] = 130  # 30 levels: 12% of the range
    assert screen(pixels, None) == (
        "the image is nearly uniform (its gray levels span 12% of the range); "
        "a radiograph spans far more"
    )
    pixels[:, 32:] = 139  # 39 levels: 15.3%, just over the minimum
    assert screen(pixels, None) is None


def test_screen_and_prepare_gives_the_decoded_gray_and_the_model_input():
    from pneumonia.images.prepare import decode_size, prepare_image
    from pneumonia.images.screening import screen_and_prepare

    data = XRAYS[3].read_bytes()
    gray, pixels = screen_and_prepare(data, config())
    assert decode_size(config()) == 88  # 224 px: 1/2 in the DCT, 112 px >= 88
    np.testing.assert_array_equal(gray, decode_gray(data, 88))
    assert gray.shape == (112, 112)
    np.testing.assert_array_equal(pixels, prepare_image(data, config()))
    assert pixels.shape == (32, 32, 1)


def test_screen_and_prepare_decodes_a_large_jpeg_at_decode_size_as_prepare_image_does():
    from pneumonia.evaluation.shifts import original_size
    from pneumonia.images.decode import decode_image
    from pneumonia.images.prepare import decode_size, prepare_image
    from pneumonia.images.screening import screen_and_prepare

    data = original_size(decode_image(XRAYS[3].read_bytes()), 600)
    gray, pixels = screen_and_prepare(data, config())
    # 600 px: 1/8 would give 75 px, under 2.75 x 32; 1/4 gives 150 (at the input size, 1/8).
    assert gray.shape == decode_gray(data, decode_size(config())).shape == (150, 150)
    np.testing.assert_array_equal(pixels, prepare_image(data, config()))


@pytest.mark.parametrize(
    ("pixels", "words"),
    [
        (np.full((64, 64), 128, np.uint8), "nearly uniform"),
        (np.full((64, 300), 128, np.uint8), "aspect ratio is 4.69"),
    ],
)
def test_screen_and_prepare_refuses_what_the_checks_refuse(pixels, words):
    from pneumonia.images.screening import NOT_A_CHEST_XRAY, NotAChestXray, screen_and_prepare

    with pytest.raises(NotAChestXray) as refused:
        screen_and_prepare(encoded(pixels), config())
    assert refused.value.reason == NOT_A_CHEST_XRAY
    assert words in str(refused.value)


def test_a_colour_picture_is_refused_after_decoding():
    from pneumonia.images.screening import NOT_A_CHEST_XRAY, NotAChestXray, screen_and_prepare

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)
    rgb[:, 32:] = (0, 0, 255)
    with pytest.raises(NotAChestXray) as refused:
        screen_and_prepare(encoded(rgb), config())
    assert refused.value.reason == NOT_A_CHEST_XRAY
    assert str(refused.value) == (
        "the image is in colour (mean saturation 1.00); an X-ray is grayscale"
    )


def dicom(pixels: np.ndarray, **attributes) -> bytes:
    """A Part 10 DX file of 8-bit pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    storage = "1.2.840.10008.5.1.4.1.1.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = storage, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_dicom_patient_over_the_age_bound_is_refused_without_saying_the_age():
    from pneumonia.images.formats import ImageError
    from pneumonia.images.screening import OUTSIDE_TRAINING_POPULATION, screen_and_prepare

    pixels = two_tone(64, 64)
    with pytest.raises(ImageError) as refused:
        screen_and_prepare(dicom(pixels, PatientAge="018Y"), config(), max_age_years=17.5)
    assert refused.value.reason == OUTSIDE_TRAINING_POPULATION
    assert str(refused.value) == (
        "the patient's age in the DICOM header is outside the population the model was "
        "trained on (pediatric, up to 17.5 years)"
    )
    for data, bound in (
        (dicom(pixels, PatientAge="017Y"), 17),  # at the bound
        (dicom(pixels, PatientAge="045Y"), None),  # no bound
        (dicom(pixels), 17),  # no age
    ):
        gray, model_input = screen_and_prepare(data, config(), max_age_years=bound)
        np.testing.assert_array_equal(gray, pixels)
        assert model_input.shape == (32, 32, 1)
    with pytest.raises(ImageError, match="nearly uniform"):  # a DICOM is screened as well
        screen_and_prepare(dicom(np.full((64, 64), 9, np.uint8)), config(), max_age_years=17)


def test_a_large_16_bit_image_is_sampled_before_it_is_converted():
    """The same spread as converting the whole image first (to_uint8 is per pixel), without
    a float copy of it: the conversion sees the strided sample only."""
    import tracemalloc

    from pneumonia.images.decode import to_uint8
    from pneumonia.images.screening import dynamic_range

    gray = np.random.default_rng(7).integers(0, 65536, (2500, 2000)).astype(np.uint16)
    step = int(np.ceil(np.sqrt(gray.size / 16_384)))
    whole = to_uint8(gray)[::step, ::step]  # the conversion first, as it was
    cumulative = np.cumsum(np.bincount(whole.ravel(), minlength=256))
    low, high = np.searchsorted(cumulative, (0.01 * whole.size, 0.99 * whole.size))
    tracemalloc.start()
    spread = dynamic_range(gray)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert spread == float(high - low) / 255.0
    assert peak < gray.size  # under a uint8 copy of it (5 MB); a float32 one is 20 MB
