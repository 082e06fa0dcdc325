#!/usr/bin/env bash
# Prepares the 5,000 handwritten digits of OpenCV's samples (a subset of MNIST, 20x20, 500 per class) as a 28x28
# data folder for `ssm-vision train/eval`: a second, small real data set (digits must not be flipped).
#
#   data/mnist-digits.sh [OUT]        OUT defaults to data/cache/mnist-digits (git-ignored)
#
# Source: examples/data/digits.png of the Debian package opencv-doc (2000 x 1000 grey, 20 x 20 cells, 100 per row,
# rows 5d .. 5d+4 hold digit d). If opencv-doc is not installed, the package is downloaded (95 MB) and only that
# file is unpacked, without root (`apt-get update` is run first only when apt cannot locate the package).
# The image is checked against its SHA-256 sum.
#
# The cutting is done by `ssm-vision prepare-digits` (vision/Classification.cs, OpenCvDigits), which:
#   - pads each 20x20 cell by 4 black pixels to 28x28 (MNIST's own 20x20 box in a 28x28 frame)
#   - splits each class in reading order (row by row, left to right): the first 360 samples -> train, the next 40 ->
#     val, the last 100 -> test (train 3,600 / val 400 / test 1,000, balanced)
#   - writes {train,val,test}-{images-idx3,labels-idx1}-ubyte.gz and dataset.json ("hflip": false)
# The app is taken from $SSM_VISION if set, else `ssm-vision` on the PATH, else `dotnet run` of apps/vision.
# Idempotent: a complete OUT is left alone.
set -euo pipefail
trap 'echo "mnist-digits: failed at line $LINENO" >&2' ERR

out=${1:-data/cache/mnist-digits}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz val-images-idx3-ubyte.gz val-labels-idx1-ubyte.gz
       test-images-idx3-ubyte.gz test-labels-idx1-ubyte.gz dataset.json)

complete=1
for f in "${files[@]}"; do [ -s "$out/$f" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "mnist-digits: $out is already prepared"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

member=usr/share/doc/opencv-doc/examples/data/digits.png
png=/$member
if [ ! -f "$png" ]; then
  echo "mnist-digits: fetching the Debian package opencv-doc (for $png)" >&2
  if ! (cd "$work" && apt-get download opencv-doc >&2); then
    echo "mnist-digits: apt-get could not locate the package; running apt-get update" >&2
    apt-get update >&2
    (cd "$work" && apt-get download opencv-doc >&2)
  fi
  # Like dpkg -x, but only the one file (the package unpacks to ~300 MB).
  dpkg-deb --fsys-tarfile "$work"/opencv-doc_*.deb | tar -x -C "$work" "./$member"
  png="$work/$member"
fi

want=60c917758ef97cc090f35cd8e293e4de691ef942847da0ff80dedab33d57c662   # opencv-doc 4.6.0+dfsg-12 (Debian 12)
got=$(sha256sum "$png" | cut -c1-64)
if [ "$got" != "$want" ]; then
  echo "mnist-digits: $png: unexpected content (sha256 $got); a different package version?" >&2
  exit 1
fi

if [ -n "${SSM_VISION:-}" ]; then
  read -r -a app <<< "$SSM_VISION"
elif command -v ssm-vision > /dev/null; then
  app=(ssm-vision)
else
  app=(dotnet run -c Release --project "$root/apps/vision" --)
fi
# Written to a temporary folder beside OUT, then moved into place: an interrupted run leaves no half folder.
tmp="$out.tmp.$$"
rm -rf "$tmp"
"${app[@]}" prepare-digits --png "$png" --out "$tmp"
mkdir -p "$out"
for f in "${files[@]}"; do mv -f "$tmp/$f" "$out/$f"; done
rm -rf "$tmp"
echo "mnist-digits: $out: train 3600, val 400, test 1000 images (28x28)"
