#!/usr/bin/env bash
# An aarch64 Python with the Lambda image's pins, run under qemu-user without Docker:
#   build/arm64/root  Debian bookworm arm64 (debootstrap's first stage, minbase, unpacked)
#   build/arm64/site  lambda/requirements.txt's aarch64 wheels (pip install --target)
# Bookworm's Python is 3.11, the image's 3.12: the same pins, as cp311 aarch64 wheels
# (tests/unit/test_architectures.py checks the cp312 ones resolve identically).
# Needs root (debootstrap) and Debian's qemu-user-static and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=build/arm64
stamp="$dest/stamp"
want="$(sha256sum lambda/requirements.txt tests/arm64/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)  # debootstrap and apt need root
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends qemu-user-static debootstrap
fi
rm -rf "$dest"
mkdir -p "$dest"
$SUDO debootstrap --foreign --variant=minbase --arch=arm64 \
  --include=python3.11,libstdc++6,libgomp1 bookworm "$dest/root" http://deb.debian.org/debian
$SUDO chown -R "$(id -u):$(id -g)" "$dest/root"
# The first stage unpacks the base only; the Python and its libraries are unpacked here
# (nothing is configured: the tests run python3.11 directly).
for deb in "$dest"/root/var/cache/apt/archives/*.deb; do
  dpkg-deb -x "$deb" "$dest/root"
done
.venv/bin/pip install --quiet --target "$dest/site" --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux2014_aarch64 -r lambda/requirements.txt
echo "$want" > "$stamp"
