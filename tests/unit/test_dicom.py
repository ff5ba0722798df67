"""DICOM Part 10 input: same pixels as the JPEG path, refusals from the header, no PHI echoed."""

import io
import logging
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from pneumonia.images import dicom, dicom_bounds
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.decode import decode_gray, read_header
from pneumonia.images.dicom import decode_dicom, read_dicom_header
from pneumonia.images.formats import ImageError, is_dicom
from pneumonia.images.prepare import prepare_image

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "chest-xray-sample"
CONFIG = PreprocessConfig(
    image_size=128, intensity="clahe", clahe_clip_limit=2.0, clahe_tile_grid=8
)
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SENTINELS = {
    "PatientName": "SENTINEL^NAME",
    "PatientID": "SENTINEL-ID-123",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "SENTINELACC77",
    "InstitutionName": "SENTINEL INSTITUTION",
}
# 12-bit version of an 8-bit picture x: stored 16x, rescaled to 8x - 1000 (slope 0.5,
# intercept -1000); window centre 20.5, width 2041 maps 8x - 1000 back to exactly x.
RESCALE = {"RescaleSlope": 0.5, "RescaleIntercept": -1000}
WINDOW_12 = {"WindowCenter": 20.5, "WindowWidth": 2041}


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    smallest = min(SAMPLE.glob("**/*.jpeg"), key=lambda p: p.stat().st_size)
    return smallest.read_bytes()


@pytest.fixture(scope="module")
def xray(jpeg_bytes) -> np.ndarray:
    """A real chest X-ray, (H, W) uint8, as the JPEG path decodes it."""
    pixels = decode_gray(jpeg_bytes)
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    return pixels


@pytest.fixture(scope="module")
def small(xray) -> np.ndarray:
    """The same X-ray at 256 px wide (odd height), for the compressed syntaxes."""
    height = round(xray.shape[0] * 256 / xray.shape[1]) | 1
    return cv2.resize(xray, (256, height), interpolation=cv2.INTER_AREA)


def make_dicom(
    pixels: np.ndarray,
    *,
    syntax: str = ExplicitVRLittleEndian,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    **attributes,
) -> bytes:
    """A Part 10 DX file of `pixels` (uint8 or uint16), with PHI sentinels planted."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for keyword, value in SENTINELS.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return save(ds)


def save(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset(data: bytes) -> FileDataset:
    return pydicom.dcmread(io.BytesIO(data))


def refusal(data: bytes) -> ImageError:
    """The refusal from the header, and the same one from the decoder."""
    with pytest.raises(ImageError) as from_header:
        read_dicom_header(data)
    with pytest.raises(ImageError) as from_decode:
        decode_dicom(data)
    assert from_header.value.reason == from_decode.value.reason
    return from_header.value


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_eight_bit_dicom_decodes_to_the_jpeg_pixels(xray, syntax):
    data = make_dicom(xray, syntax=syntax, WindowCenter=128, WindowWidth=256)
    assert is_dicom(data)
    header = read_header(data)
    assert (header.format, header.width, header.height) == ("DICOM", xray.shape[1], xray.shape[0])
    assert header.mode == "MONOCHROME2"
    decoded = decode_gray(data)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, xray)
    np.testing.assert_array_equal(prepare_image(data, CONFIG), prepare_image(xray, CONFIG))


def test_eight_bit_without_window_uses_the_stored_range(small):
    np.testing.assert_array_equal(decode_dicom(make_dicom(small)), small)


def test_is_dicom_only_sees_the_marker(jpeg_bytes):
    assert not is_dicom(jpeg_bytes)
    assert not is_dicom(b"DICM")
    assert is_dicom(b"\x00" * 128 + b"DICM")


# ---------------------------------------------------------------- 16-bit and LUTs


def twelve_bit(pixels: np.ndarray, inverted: bool = False) -> np.ndarray:
    stored = pixels.astype(np.uint16) * 16
    return (4080 - stored).astype(np.uint16) if inverted else stored


def test_twelve_bit_rescaled_and_windowed_matches_the_eight_bit_picture(small):
    data = make_dicom(twelve_bit(small), bits_stored=12, **RESCALE, **WINDOW_12)
    decoded = decode_dicom(data)
    assert decoded.dtype == np.uint8 and decoded.shape == small.shape
    assert mean_abs(decoded, small) < 1
    assert np.abs(decoded.astype(int) - small).max() <= 1


def test_monochrome1_decodes_to_the_same_picture(small):
    data = make_dicom(
        twelve_bit(small, inverted=True),
        bits_stored=12,
        photometric="MONOCHROME1",
        **RESCALE,
        **WINDOW_12,
    )
    assert read_dicom_header(data).mode == "MONOCHROME1"
    assert mean_abs(decode_dicom(data), small) < 1


def test_presentation_lut_shape_inverse_inverts(small):
    plain = decode_dicom(make_dicom(twelve_bit(small), bits_stored=12, **RESCALE, **WINDOW_12))
    inverse = make_dicom(
        twelve_bit(small), bits_stored=12, PresentationLUTShape="INVERSE", **RESCALE, **WINDOW_12
    )
    np.testing.assert_array_equal(decode_dicom(inverse), 255 - plain)
    both = make_dicom(
        twelve_bit(small, inverted=True),
        bits_stored=12,
        photometric="MONOCHROME1",
        PresentationLUTShape="INVERSE",
        **RESCALE,
        **WINDOW_12,
    )
    np.testing.assert_array_equal(decode_dicom(both), 255 - plain)  # two inversions: none


def test_without_a_window_the_percentiles_span_the_range(small):
    stored = twelve_bit(small)
    decoded = decode_dicom(make_dicom(stored, bits_stored=12, **RESCALE)).astype(int)
    values = stored.astype(np.float64) * 0.5 - 1000
    low, high = np.percentile(values, [0.5, 99.5])
    assert high > low
    at_low = np.abs(values - low) == np.abs(values - low).min()
    at_high = np.abs(values - high) == np.abs(values - high).min()
    assert decoded[at_low].max() <= 2
    assert decoded[at_high].min() >= 253
    assert decoded[values <= low].max() <= 2 and decoded[values >= high].min() >= 253
    expected = np.clip(np.rint((values - low) / (high - low) * 255), 0, 255)
    assert np.abs(decoded - expected).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_histogram_percentiles_equal_numpy(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    stored = rng.integers(max(info.min, -3000), min(info.max, 3000), (97, 131)).astype(dtype)
    np.testing.assert_allclose(
        dicom._integer_percentiles(stored), np.percentile(stored, [0.5, 99.5]), atol=1e-9
    )


def test_voi_lut_sequence_is_normalised_by_its_output_range(small):
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 8])
    item.add_new("LUTData", "US", (np.arange(4096) // 16).tolist())
    data = make_dicom(twelve_bit(small), bits_stored=12, VOILUTSequence=Sequence([item]))
    np.testing.assert_array_equal(decode_dicom(data), small)


def test_sigmoid_window_is_monotonic(small):
    data = make_dicom(small, WindowCenter=128, WindowWidth=256, VOILUTFunction="SIGMOID")
    decoded = decode_dicom(data).astype(int)
    order = np.argsort(small, axis=None)
    assert np.all(np.diff(decoded.ravel()[order]) >= 0)


# ---------------------------------------------------------------- transfer syntaxes


def gdcm_transcode(data: bytes, syntax_name: str, tmp_path: Path) -> bytes:
    """`data` re-encoded by python-gdcm (pydicom has no JPEG lossless / JPEG-LS encoder)."""
    import gdcm  # a hard dependency (pyproject, lambda/requirements.txt): never skipped

    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(data)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax_name)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return target.read_bytes()


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_pydicom_compressed_syntaxes_decode_losslessly(small, syntax):
    ds = dataset(make_dicom(small))
    ds.compress(syntax)
    data = save(ds)
    assert dataset(data).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(decode_dicom(data), small)


def test_sixteen_bit_jpeg2000_decodes_losslessly(small):
    ds = dataset(make_dicom(twelve_bit(small), bits_stored=12, **RESCALE, **WINDOW_12))
    ds.compress(JPEG2000Lossless)
    assert mean_abs(decode_dicom(save(ds)), small) < 1


@pytest.mark.parametrize(
    ("gdcm_name", "syntax"),
    [("JPEGLosslessProcess14_1", JPEGLosslessSV1), ("JPEGLSLossless", JPEGLSLossless)],
)
def test_gdcm_syntaxes_decode_losslessly(small, tmp_path, gdcm_name, syntax):
    data = gdcm_transcode(make_dicom(small), gdcm_name, tmp_path)
    assert dataset(data).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(decode_dicom(data), small)


def codestream_start(data: bytes) -> int:
    """Offset of the first fragment's bytes (after the Basic Offset Table item)."""
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")
    return data.find(b"\xfe\xff\x00\xe0", pixel_data + 12) + 8


def mutated(data: bytes, offset: int, value: int) -> bytes:
    changed = bytearray(data)
    changed[codestream_start(data) + offset] = value
    return bytes(changed)


def test_a_gdcm_crash_costs_a_refusal_not_the_process(small, tmp_path):
    # GDCM (CharLS) aborts the process on this one-byte change of a JPEG-LS stream.
    data = mutated(gdcm_transcode(make_dicom(small), "JPEGLSLossless", tmp_path), 14, 177)
    with pytest.raises(ImageError) as error:
        decode_dicom(data)
    assert error.value.reason == "corrupt"


@pytest.mark.parametrize(
    ("child", "reason"),
    [
        ("import os; os.abort()", "corrupt"),
        ("import sys; sys.exit(2)", "corrupt"),
        ("import sys; sys.stdout.write('not an array')", "corrupt"),
        ("import time; time.sleep(30)", "corrupt"),
    ],
)
def test_the_gdcm_child_fails_closed(small, tmp_path, monkeypatch, child, reason):
    data = gdcm_transcode(make_dicom(small), "JPEGLosslessProcess14_1", tmp_path)
    monkeypatch.setattr(dicom, "_CHILD", child)
    monkeypatch.setattr(dicom, "CHILD_TIMEOUT_S", 1)
    with pytest.raises(ImageError) as error:
        decode_dicom(data)
    assert error.value.reason == reason


def test_a_gdcm_child_without_its_libraries_is_a_server_fault(small, tmp_path, monkeypatch):
    data = gdcm_transcode(make_dicom(small), "JPEGLosslessProcess14_1", tmp_path)
    monkeypatch.setattr(dicom, "_CHILD", "import sys; sys.exit(3)")
    with pytest.raises(RuntimeError):
        decode_dicom(data)


def test_an_rle_decoder_panic_is_corrupt():
    # pylibjpeg-rle panics (pyo3 PanicException, a BaseException) on this changed byte.
    pixels = (np.arange(64 * 65) % 4096).astype(np.uint16).reshape(65, 64)
    ds = dataset(make_dicom(pixels, bits_stored=12))
    ds.compress(RLELossless)
    with pytest.raises(ImageError) as error:
        decode_dicom(mutated(save(ds), 1701, 46))
    assert error.value.reason == "corrupt"


def jpeg_baseline_dicom(
    pixels: np.ndarray, rows: int, columns: int, syntax: str = JPEGBaseline8Bit
) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    ds = dataset(make_dicom(pixels))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.Rows, ds.Columns = rows, columns
    ds.LossyImageCompression = "01"
    return save(ds)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGExtended12Bit])
def test_eight_bit_jpeg_decodes_close_to_the_pixels(small, syntax):
    decoded = decode_dicom(jpeg_baseline_dicom(small, *small.shape, syntax=syntax))
    assert decoded.shape == small.shape
    assert mean_abs(decoded, small) < 2


def test_a_compressed_frame_of_another_size_than_the_header_is_corrupt(small):
    data = jpeg_baseline_dicom(small, small.shape[0] - 1, small.shape[1])
    with pytest.raises(ImageError) as error:
        decode_dicom(data)
    assert error.value.reason == "corrupt"


def test_deflated_decodes_and_a_deflate_bomb_is_refused(small, monkeypatch):
    data = make_dicom(small, syntax=DeflatedExplicitVRLittleEndian)
    np.testing.assert_array_equal(decode_dicom(data), small)
    monkeypatch.setattr(dicom_bounds, "MAX_INFLATED", small.size // 2)  # the image inflates past it
    assert refusal(data).reason == "too_large"


# ---------------------------------------------------------------- refusals


def edited(pixels: np.ndarray, **attributes) -> bytes:
    return make_dicom(pixels, **attributes)


def rgb_dicom(small: np.ndarray, photometric: str) -> bytes:
    ds = dataset(make_dicom(small))
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.PixelData = np.repeat(small[:, :, np.newaxis], 3, axis=2).tobytes()
    return save(ds)


def oversize(small: np.ndarray) -> bytes:
    ds = dataset(make_dicom(small[:4, :4]))
    ds.Rows = ds.Columns = 9000
    return save(ds)  # 16 bytes of pixel data for 81 M pixels declared


def without_pixel_data(data: bytes) -> bytes:
    ds = dataset(data)
    del ds.PixelData
    return save(ds)


def unsupported_syntax(small: np.ndarray, syntax: str) -> bytes:
    ds = dataset(make_dicom(small))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    return save(ds)


REFUSED = {
    "multi_frame": lambda s: edited(s, NumberOfFrames=2),
    "rgb": lambda s: rgb_dicom(s, "RGB"),
    "ybr_full": lambda s: rgb_dicom(s, "YBR_FULL"),
    "palette": lambda s: edited(s, PhotometricInterpretation="PALETTE COLOR"),
    "ct": lambda s: edited(s, Modality="CT"),
    "lateral": lambda s: edited(s, ViewPosition="LL"),
    "oversize": oversize,
    "mpeg2": lambda s: unsupported_syntax(s, "1.2.840.10008.1.2.4.100"),
    "no_pixel_data": lambda s: without_pixel_data(make_dicom(s)),
}
REASONS = {
    "multi_frame": "multi_frame",
    "rgb": "colour",
    "ybr_full": "colour",
    "palette": "colour",
    "ct": "wrong_modality",
    "lateral": "lateral_view",
    "oversize": "too_large",
    "mpeg2": "unsupported_transfer_syntax",
    "no_pixel_data": "corrupt",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_from_the_header_with_its_reason(small, case):
    data = REFUSED[case](small)
    error = refusal(data)
    assert error.reason == REASONS[case], str(error)
    with pytest.raises(ImageError):
        decode_gray(data)


def test_oversize_is_refused_before_any_decoding(small, monkeypatch):
    data = oversize(small)

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(FileDataset, "pixel_array", property(no_decoding))
    started = time.perf_counter()
    assert refusal(data).reason == "too_large"
    assert time.perf_counter() - started < 0.5


def test_unsupported_transfer_syntax_is_named(small):
    error = refusal(unsupported_syntax(small, "1.2.840.10008.1.2.4.100"))
    assert "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)" in str(error)


def test_jpeg_ls_without_a_decoder_is_refused_by_name(small, tmp_path, monkeypatch):
    data = gdcm_transcode(make_dicom(small), "JPEGLSLossless", tmp_path)

    class Missing:
        is_available = False
        available_plugins = ()

    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Missing())
    error = refusal(data)
    assert error.reason == "unsupported_transfer_syntax"
    assert "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in str(error)


def test_garbage_and_truncation_are_corrupt(small):
    rng = np.random.default_rng(3)
    garbage = b"\x00" * 128 + b"DICM" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    assert refusal(garbage).reason == "corrupt"
    whole = make_dicom(small)
    for cut in (132, 140, 300):
        assert refusal(whole[:cut]).reason == "corrupt"
    with pytest.raises(ImageError) as error:  # the header is whole, the pixels are cut
        decode_gray(whole[: len(whole) - 1000])
    assert error.value.reason == "corrupt"


# ---------------------------------------------------------------- privacy


def refused_files(small: np.ndarray) -> list[bytes]:
    files = [make(small) for make in REFUSED.values()]
    whole = make_dicom(small)
    files += [whole[:400], whole[: len(whole) - 1000], jpeg_baseline_dicom(small, 10, 10)]
    # Values pydicom's validation would quote: a Modality no radiograph has, and (in an
    # image that decodes) a malformed window and birth date.
    invalid = make_dicom(small, Modality="ZZZZZZZZZZZZZ")
    files.append(invalid.replace(b"ZZZZZZZZZZZZZ", b"SENTINEL^NAME", 1))
    decodable = make_dicom(small, WindowCenter="12345678", WindowWidth=256)
    files.append(
        decodable.replace(b"12345678", b"SENTINEL", 1).replace(b"19010203", b"SENTINEL", 1)
    )
    return files


def test_no_tag_value_reaches_messages_logs_or_warnings(small, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    messages = []
    files = refused_files(small)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data in files:
            for function in (read_dicom_header, decode_dicom, decode_gray):
                try:
                    function(data)
                except ImageError as error:
                    messages.append(str(error))
    assert len(messages) >= 20
    assert decode_dicom(files[-1]).shape == small.shape  # an unreadable window is no window
    text = "\n".join(
        messages
        + [record.getMessage() for record in caplog.records]
        + [str(w.message) for w in caught]
    )
    for value in [*SENTINELS.values(), "SENTINEL", "19010203", "CT", "LL"]:
        needle = value if len(value) > 2 else f"'{value}'"
        assert needle not in text


# ---------------------------------------------------------------- pydicom's own files


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", "wrong_modality"),
        ("MR_small.dcm", "wrong_modality"),
        ("MR_small_jpeg_ls_lossless.dcm", "wrong_modality"),
        ("SC_rgb_rle.dcm", "colour"),
        ("SC_rgb_jpeg_gdcm.dcm", "colour"),
        ("SC_rgb_rle_2frame.dcm", "multi_frame"),
        ("examples_palette.dcm", "colour"),
    ],
)
def test_pydicom_test_files_are_refused(name, reason):
    data = Path(get_testdata_file(name)).read_bytes()
    assert refusal(data).reason == reason


def test_twelve_bit_jpeg_extended_is_refused_by_name():
    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))  # 12 bits stored
    ds.Modality = "DX"
    error = refusal(save(ds))
    assert error.reason == "unsupported_transfer_syntax"
    assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in str(error)


def test_a_pydicom_mr_file_relabelled_as_dx_decodes_like_pydicom():
    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    ds.Modality = "DX"
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    decoded = decode_dicom(save(ds))
    assert decoded.shape == reference.shape and decoded.dtype == np.uint8
    # 16 bits stored, no window: the percentile window keeps the ordering of the values.
    order = np.argsort(reference, axis=None, kind="stable")
    assert np.all(np.diff(decoded.ravel()[order].astype(int)) >= 0)


# The accepted syntaxes no other test decodes: each read from a file a real encoder wrote.


def big_endian(data: bytes, vr: str) -> bytes:
    ds = dataset(data)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds["PixelData"].VR = vr
    if vr == "OW":  # pydicom writes the value as it holds it: the words are swapped here
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    return buffer.getvalue()


def test_explicit_vr_big_endian_decodes_to_the_same_pixels(small):
    # 8 bits as OB: bytes in order; 16 bits as OW: each word swapped on the wire
    eight = big_endian(make_dicom(small), "OB")
    assert dataset(eight).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    np.testing.assert_array_equal(decode_dicom(eight), small)
    little = make_dicom(twelve_bit(small), bits_stored=12, **RESCALE, **WINDOW_12)
    np.testing.assert_array_equal(decode_dicom(big_endian(little, "OW")), decode_dicom(little))


def test_jpeg_2000_of_the_lossy_syntax_decodes_close_to_the_pixels(small):
    ds = dataset(make_dicom(small))
    ds.compress(JPEG2000, j2k_psnr=[60])
    data = save(ds)
    assert dataset(data).file_meta.TransferSyntaxUID == JPEG2000
    assert mean_abs(decode_dicom(data), small) < 1


@pytest.mark.parametrize(
    ("gdcm_name", "syntax"),
    [("JPEGLosslessProcess14", JPEGLossless), ("JPEGLSNearLossless", JPEGLSNearLossless)],
)
def test_the_other_gdcm_syntaxes_decode_close_to_the_pixels(small, tmp_path, gdcm_name, syntax):
    data = gdcm_transcode(make_dicom(small), gdcm_name, tmp_path)
    assert dataset(data).file_meta.TransferSyntaxUID == syntax
    assert mean_abs(decode_dicom(data), small) < 2


@pytest.mark.parametrize(
    ("tags", "years"),
    [
        ({"PatientAge": "004Y"}, 4.0),
        ({"PatientAge": "018M"}, 1.5),
        ({"PatientAge": "026W"}, 26 * 7 / 365.25),
        ({"PatientAge": "045Y"}, 45.0),
        ({"PatientAge": "3Y"}, 3.0),  # short forms, as some devices write them
        ({"StudyDate": "19060203"}, 5.0),  # birth 1901-02-03 (the sentinel), exam 5 years on
        ({"AcquisitionDate": "19030203"}, 2.0),
        ({"PatientAge": "abc", "StudyDate": "19110203"}, 10.0),  # unreadable age: the dates
        ({}, None),  # a birth date alone says nothing
        ({"StudyDate": "18990101"}, None),  # an exam before birth: unknown
        ({"PatientAge": "", "StudyDate": "2024"}, None),
    ],
)
def test_the_patient_age_is_read_from_the_age_or_from_the_dates(small, tags, years):
    age = read_dicom_header(make_dicom(small, **tags)).age_years
    assert age == (pytest.approx(years, abs=0.01) if years is not None else None)


def test_an_older_patient_is_refused_before_decoding_and_the_age_is_never_said(small):
    from pneumonia.images.config import PreprocessConfig
    from pneumonia.images.screening import OUTSIDE_TRAINING_POPULATION, screen_and_prepare

    config = PreprocessConfig(
        image_size=32, intensity="none", clahe_clip_limit=2.0, clahe_tile_grid=8
    )
    adult = make_dicom(small, PatientAge="045Y")
    with pytest.raises(ImageError) as refused:
        screen_and_prepare(adult, config, max_age_years=17)
    assert refused.value.reason == OUTSIDE_TRAINING_POPULATION
    assert "45" not in str(refused.value) and "17" in str(refused.value)
    # At the bound, without a bound, and with no age at all: answered as before.
    for data, bound in (
        (make_dicom(small, PatientAge="017Y"), 17),
        (adult, None),
        (make_dicom(small), 17),
    ):
        _gray, pixels = screen_and_prepare(data, config, max_age_years=bound)
        assert pixels.shape == (32, 32, 1)


# ---------------------------------------------------------------- branches, by hand


def ramp16(rows: int = 8, columns: int = 16) -> np.ndarray:
    """Stored values 0, 100, 200, ... row by row: a known input for the formulas below."""
    return (np.arange(rows * columns, dtype=np.uint16) * 100).reshape(rows, columns)


def test_linear_exact_window_is_the_standards_formula():
    stored = np.arange(128, dtype=np.uint16).reshape(8, 16)
    data = make_dicom(
        stored, bits_stored=16, WindowCenter=64, WindowWidth=16, VOILUTFunction="LINEAR_EXACT"
    )
    # C.11.2.1.3.2: y = ((x - c) / w + 0.5) * 255, clipped. LINEAR would give 136 at x = 64.
    expected = np.clip(((stored.astype(float) - 64) / 16 + 0.5) * 255, 0, 255)
    decoded = decode_dicom(data)
    assert np.abs(decoded.astype(float) - expected).max() <= 0.5 + 1e-3
    assert decoded[4, 0] == 128  # x = 64: 127.5, rounded half to even in float32 -> 128


def test_signed_pixels_are_read_as_signed():
    signed = (np.arange(128, dtype=np.int16) * 40 - 2560).reshape(8, 16)  # -2560 .. 2520
    ds = dataset(make_dicom(signed.view(np.uint16), bits_stored=16))
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = 0, 5121
    decoded = decode_dicom(save(ds))
    # Read as unsigned, the negative half would be the brightest; signed, it is the darkest.
    expected = np.clip(((signed.astype(float) + 0.5) / 5120 + 0.5) * 255, 0, 255)
    np.testing.assert_array_equal(decoded, np.rint(expected).astype(np.uint8))
    assert decoded[0, 0] == 0 and decoded[-1, -1] > 250


def test_a_modality_lut_sequence_maps_stored_values_before_the_window():
    stored = (np.arange(128, dtype=np.uint16) % 4).reshape(8, 16)  # values 0..3
    ds = dataset(make_dicom(stored, bits_stored=16))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]  # 4 entries from stored value 0, 16 bits each
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [0, 1000, 3000, 4000])  # LUTData
    ds.ModalityLUTSequence = Sequence([item])
    ds.WindowCenter, ds.WindowWidth = 2000.5, 4001  # LINEAR: 0 -> 0, 4000 -> 255
    decoded = decode_dicom(save(ds))
    lut = np.array([0, 1000, 3000, 4000], dtype=float)[stored]
    expected = np.clip(((lut - 2000) / 4000 + 0.5) * 255, 0, 255)
    np.testing.assert_array_equal(decoded, np.rint(expected).astype(np.uint8))


@pytest.mark.parametrize(
    "edit",
    [
        {"RescaleSlope": 0},
        {"BitsStored": 17},  # more than BitsAllocated (16)
        {"BitsStored": 0},
        {"PixelRepresentation": 2},
    ],
    ids=["rescale slope 0", "bits stored over allocated", "bits stored 0", "pixel repr 2"],
)
def test_unusable_pixel_descriptions_are_corrupt(edit):
    ds = dataset(make_dicom(ramp16(), bits_stored=16))
    for keyword, value in edit.items():
        setattr(ds, keyword, value)
    with pytest.raises(ImageError) as refused:
        decode_dicom(save(ds))
    assert refused.value.reason == "corrupt"
    assert "SENTINEL" not in str(refused.value)
