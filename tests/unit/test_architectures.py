"""lambda/requirements.txt resolves for the image's Python 3.12 on both Lambda architectures:
every pin, and everything they pull in, has a wheel for x86_64 and for aarch64 that Amazon
Linux 2023 (glibc 2.34) can load, and the two resolutions are the same packages at the same
versions. Read offline from the wheelhouses `make install` fills with `pip download
--platform ... --only-binary=:all:`."""

from __future__ import annotations

import re

import pytest
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.conftest import REPO_ROOT

WHEELHOUSE = REPO_ROOT / ".wheelhouse-lambda"
ARCHITECTURES = ("x86_64", "aarch64")
GLIBC = (2, 34)  # public.ecr.aws/lambda/python:3.12 is Amazon Linux 2023


def pins() -> dict[str, str]:
    found = {}
    for line in (REPO_ROOT / "lambda" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            found[canonicalize_name(name.split("[")[0])] = version
    return found


def loadable(tag: Tag, arch: str) -> bool:
    """A tag Python 3.12 on Amazon Linux 2023 on `arch` installs."""
    if tag.interpreter not in ("cp312", "py3", "py2", "cp37", "cp38", "cp39", "cp310", "cp311"):
        return False
    if tag.abi not in ("cp312", "abi3", "none"):
        return False
    if tag.platform == "any":
        return True
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag.platform)
    if tag.platform == f"manylinux2014_{arch}":
        return True
    return bool(match) and match.group(3) == arch and (int(match[1]), int(match[2])) <= GLIBC


def resolved(arch: str) -> dict[str, str]:
    folder = WHEELHOUSE / arch
    assert folder.is_dir(), f"{folder} is missing: run `make install`"
    versions = {}
    for wheel in folder.glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        assert any(loadable(tag, arch) for tag in tags), f"{wheel.name} does not load on {arch}"
        versions[name] = str(version)
    return versions


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_pin_has_a_wheel_the_image_loads_on_each_architecture(arch):
    wheels = resolved(arch)
    for name, version in pins().items():
        assert wheels.get(name) == version, f"{name}=={version} has no {arch} cp312 wheel"
    # The native ones, named: the decoders and the runtime are what could lack a build.
    native = {
        wheel.name.split("-")[0]
        for wheel in (WHEELHOUSE / arch).glob("*.whl")
        if not wheel.name.endswith("-any.whl")
    }
    for name in ("onnxruntime", "numpy", "pillow", "opencv_python_headless", "python_gdcm"):
        assert name in native, f"{name} has no native {arch} wheel"
    assert {"pylibjpeg_openjpeg", "pylibjpeg_rle"} <= native


def test_both_architectures_resolve_to_the_same_packages_and_versions():
    assert resolved("x86_64") == resolved("aarch64")
