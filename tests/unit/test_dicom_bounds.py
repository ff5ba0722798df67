"""The bounds a DICOM file meets before pydicom or a decoder sees it: each class of the
audit's hostile payloads refused with its reason, within the request's memory budget (its
CPU is measured by `python -m benchmarks.hostile`), and the structure walker counting what
pydicom would parse."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pneumonia.images import dicom_bounds
from pneumonia.images.dicom import decode_dicom
from pneumonia.images.formats import ImageError
from tests import hostile
from tests.unit.test_dicom import make_dicom, save


@pytest.mark.parametrize("name", list(hostile.DICOM_PAYLOADS))
def test_each_hostile_dicom_class_is_refused_cheaply_with_its_reason(name):
    builder, reason = hostile.DICOM_PAYLOADS[name]
    data = builder()
    tracemalloc.start()
    with pytest.raises(ImageError) as error:
        decode_dicom(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert error.value.reason == reason
    assert peak < 150 << 20  # the request's budget is 300 MB (CPU: benchmarks/hostile.py)


def test_the_file_meta_is_walked_whatever_its_group_length_says():
    data = make_dicom(np.zeros((8, 8), np.uint8))
    syntax, start = dicom_bounds.file_meta(data)
    lying = data[:140] + (0).to_bytes(4, "little") + data[144:]  # group length 0
    assert syntax == ExplicitVRLittleEndian and dicom_bounds.file_meta(lying) == (syntax, start)
    assert data[start : start + 2] == b"\x08\x00"  # the data set's first group


def nested(items: int, syntax: str) -> bytes:
    """A DX file with a sequence of `items` items of two elements each."""
    return dicom_with(make_dicom(np.zeros((4, 4), np.uint8), syntax=syntax), items)


def dicom_with(data: bytes, items: int) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    sequence = Sequence()
    for index in range(items):
        item = Dataset()
        item.CodeValue, item.CodeMeaning = str(index), "x"
        sequence.append(item)
    ds.ProcedureCodeSequence = sequence
    return save(ds)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequence_items_and_their_elements_are_counted(syntax):
    plain = nested(0, syntax)
    with_items = nested(10, syntax)
    count = {}
    for name, data in (("plain", plain), ("items", with_items)):
        file_syntax, start = dicom_bounds.file_meta(data)
        implicit = file_syntax == ImplicitVRLittleEndian
        count[name] = dicom_bounds.count_elements(data[start:], implicit=implicit, little=True)
    # each item: its header, two elements and (undefined length) its end, or no end when
    # written with a defined length; the sequence's own end when it has one
    assert 30 <= count["items"] - count["plain"] <= 42


def test_many_items_in_a_sequence_are_too_complex(monkeypatch):
    monkeypatch.setattr(dicom_bounds, "MAX_ELEMENTS", 500)
    data = nested(300, ExplicitVRLittleEndian)
    with pytest.raises(ImageError) as error:
        decode_dicom(data)
    assert error.value.reason == "too_complex"
    decode_dicom(nested(50, ExplicitVRLittleEndian))  # within the cap: decoded
