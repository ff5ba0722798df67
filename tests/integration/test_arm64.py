"""The endpoint's handler code on aarch64 (emulated by qemu-user, no Docker) answers exactly as
on this machine: the same probabilities within 1e-5, decisions and refusals, for JPEG, PNG
and a DICOM of each transfer syntax. tests/arm64/README.md says how it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests.conftest import REPO_ROOT
from tests.unit.test_dicom import dataset, gdcm_transcode, jpeg_baseline_dicom, make_dicom, save

pytestmark = pytest.mark.integration

ARM64 = REPO_ROOT / "build" / "arm64"
CPUINFO = REPO_ROOT / "tests" / "arm64" / "cpuinfo-neoverse-n1"
TOLERANCE = 1e-5
# int8: the same integers, but onnxruntime's requantization on ARM rounds its float scales
# apart from x86's (measured up to about 1e-4 in the probability); labels and decisions agree.
INT8_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def arm64_python() -> list[str]:
    """The emulated interpreter's command line; builds build/arm64 when it is missing."""
    subprocess.run([str(REPO_ROOT / "tests" / "arm64" / "setup.sh")], check=True)
    root = ARM64 / "root"
    return [
        "qemu-aarch64-static",
        "-cpu",
        "neoverse-n1",
        "-L",
        str(root),
        str(root / "usr" / "bin" / "python3.11"),
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_data) -> list:
    """JPEG and PNG X-rays, a colour photograph, and one DICOM per transfer syntax."""
    folder = tmp_path_factory.mktemp("arm64-inputs")
    files = sorted(sample_data.glob("train/*/*.jpeg"))[::15]
    xray = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(xray, (256, 255), interpolation=cv2.INTER_AREA)
    written = []
    for path in files:
        written.append(folder / path.name)
        written[-1].write_bytes(path.read_bytes())
    cv2.imwrite(str(folder / "xray.png"), xray)
    photo = np.zeros((200, 240, 3), np.uint8)
    photo[:, :, 2], photo[:, :, 1] = 220, np.arange(240, dtype=np.uint8)  # colour: refused
    cv2.imwrite(str(folder / "photo.jpeg"), photo)
    written += [folder / "xray.png", folder / "photo.jpeg"]
    dicoms = {
        "explicit-le": make_dicom(small, syntax=ExplicitVRLittleEndian),
        "implicit-le": make_dicom(small, syntax=ImplicitVRLittleEndian),
        "deflated": make_dicom(small, syntax=DeflatedExplicitVRLittleEndian),
        "jpeg-baseline": jpeg_baseline_dicom(small, *small.shape),
        "jpeg-extended": jpeg_baseline_dicom(small, *small.shape, syntax=JPEGExtended12Bit),
        "lateral": make_dicom(small, ViewPosition="LL"),  # refused from the header
    }
    for name, syntax in (("rle", RLELossless), ("j2k-lossless", JPEG2000Lossless)):
        ds = dataset(make_dicom(small))
        ds.compress(syntax)
        dicoms[name] = save(ds)
    work = tmp_path_factory.mktemp("gdcm")
    for name, gdcm_name in (
        ("jpeg-lossless-sv1", "JPEGLosslessProcess14_1"),
        ("jpeg-ls-lossless", "JPEGLSLossless"),
        ("jpeg-ls-near", "JPEGLSNearLossless"),
        ("j2k", "JPEG2000"),
        ("explicit-be", "ExplicitVRBigEndian"),
    ):
        # No birth date: GDCM stamps today as the content date (1901 would be an adult).
        dicoms[name] = gdcm_transcode(make_dicom(small, PatientBirthDate=""), gdcm_name, work)
    expected_syntaxes = {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        RLELossless,
        JPEG2000Lossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000,
        ExplicitVRBigEndian,
    }
    assert {
        dataset(data).file_meta.TransferSyntaxUID for data in dicoms.values()
    } == expected_syntaxes
    for name, data in dicoms.items():
        written.append(folder / f"{name}.dcm")
        written[-1].write_bytes(data)
    return written


def answers(command: list[str], model_dir, files, emulated: bool) -> dict:
    script = [*command, str(REPO_ROOT / "tests" / "arm64" / "answers.py"), str(model_dir)]
    script += [str(path) for path in files]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ARM64 / "site"), str(REPO_ROOT)] if emulated else [str(REPO_ROOT)]
        ),
    }
    if emulated:
        env["CHILD_PYTHON"] = str(REPO_ROOT / "tests" / "arm64" / "python-aarch64")
    if emulated:  # onnxruntime's cpuinfo needs an ARM /proc/cpuinfo (tests/arm64/README.md)
        privileged = [] if os.geteuid() == 0 else ["sudo", "-n", "-E"]  # a mount namespace
        script = [
            *privileged,
            "unshare",
            "--mount",
            "sh",
            "-c",
            f'mount --bind "{CPUINFO}" /proc/cpuinfo && exec "$@"',
            "sh",
            *script,
        ]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {"machine": lines[0]["machine"], **{line["file"]: line for line in lines[1:]}}


@pytest.mark.parametrize("model", ["model_dir", "int8_model_dir"], ids=["float32", "int8"])
def test_the_handler_answers_the_same_on_aarch64(arm64_python, model, inputs, request):
    model_dir = request.getfixturevalue(model)
    tolerance = INT8_TOLERANCE if model == "int8_model_dir" else TOLERANCE
    native = answers([sys.executable], model_dir, inputs, emulated=False)
    emulated = answers(arm64_python, model_dir, inputs, emulated=True)
    assert (native.pop("machine"), emulated.pop("machine")) == ("x86_64", "aarch64")
    assert native.keys() == emulated.keys() == {path.name for path in inputs}
    answered, differences = 0, []
    for name, here in native.items():
        there = emulated[name]
        assert here["status"] == there["status"], name
        if here["status"] == 200:
            answered += 1
            differences.append(abs(here["probability"] - there["probability"]))
            assert differences[-1] <= tolerance, name
            assert (here["decision"], here["label"]) == (there["decision"], there["label"]), name
        else:
            assert here["reason"] == there["reason"], name
    assert answered >= 15  # the X-rays and the DICOMs, not only refusals
    print(f"{model}: largest |p_x86_64 - p_aarch64| {max(differences):.2e}")
    assert native["photo.jpeg"]["reason"] == "not_a_chest_xray"
    assert native["lateral.dcm"]["reason"] == "lateral_view"
