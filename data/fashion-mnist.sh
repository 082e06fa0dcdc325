#!/usr/bin/env bash
# Prepares Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; 28x28 grey, 10 classes) for `ssm-vision train/eval`.
#
#   data/fashion-mnist.sh [OUT]        OUT defaults to data/cache/fashion-mnist (git-ignored)
#
# Source: the Debian package dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist/). If it is not
# installed, the package is downloaded and unpacked without root (apt-get download + dpkg -x; `apt-get update` is
# run first only when apt cannot locate the package, which needs root once on a fresh machine).
# The decompressed files are checked against SHA-256 sums, so every run trains on the same bytes.
#
# Output (gzip IDX, read by vision/Idx.cs; described by OUT/dataset.json):
#   train-{images-idx3,labels-idx1}-ubyte.gz   the first 55,000 images of the official training set
#   val-{images-idx3,labels-idx1}-ubyte.gz     the last 5,000 images of the official training set (validation split;
#                                              450-527 per class; model selection and tuning only)
#   test-{images-idx3,labels-idx1}-ubyte.gz    the official 10,000-image test set, unchanged
#   dataset.json                               class names, splits, and "hflip": true (clothes are mirror-symmetric)
# Idempotent: a complete OUT is left alone; files are written under temporary names and renamed when complete.
set -euo pipefail
trap 'echo "fashion-mnist: failed at line $LINENO" >&2' ERR

out=${1:-data/cache/fashion-mnist}
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz val-images-idx3-ubyte.gz val-labels-idx1-ubyte.gz
       test-images-idx3-ubyte.gz test-labels-idx1-ubyte.gz dataset.json)

complete=1
for f in "${files[@]}"; do [ -s "$out/$f" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "fashion-mnist: $out is already prepared"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

src=/usr/share/datasets/fashion-mnist
if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
  echo "fashion-mnist: fetching the Debian package dataset-fashion-mnist" >&2
  if ! (cd "$work" && apt-get download dataset-fashion-mnist >&2); then
    echo "fashion-mnist: apt-get could not locate the package; running apt-get update" >&2
    apt-get update >&2
    (cd "$work" && apt-get download dataset-fashion-mnist >&2)
  fi
  dpkg -x "$work"/dataset-fashion-mnist_*.deb "$work/pkg"
  src="$work/pkg/usr/share/datasets/fashion-mnist"
fi

# SHA-256 of the decompressed IDX files of dataset-fashion-mnist 0.0~git20200523.55506a9-1 (Debian 12).
declare -A sha=(
  [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)
for f in "${!sha[@]}"; do
  gzip -dc "$src/$f.gz" > "$work/$f"
  got=$(sha256sum "$work/$f" | cut -c1-64)
  if [ "$got" != "${sha[$f]}" ]; then
    echo "fashion-mnist: $src/$f.gz: unexpected content (sha256 $got); a different package version?" >&2
    exit 1
  fi
done

# Big-endian 32-bit integer as raw bytes (IDX header fields).
be32() { printf "\\x$(printf %02x $(($1 >> 24 & 255)))\\x$(printf %02x $(($1 >> 16 & 255)))\\x$(printf %02x $(($1 >> 8 & 255)))\\x$(printf %02x $(($1 & 255)))"; }

train=55000 val=5000 px=784
mkdir -p "$out"
# (head before tail: tail reads all of its input, so no pipe is cut short under pipefail.)
# IDX images: magic 00 00 08 03, count, rows, cols, then count*784 bytes. Labels: 00 00 08 01, count, then count bytes.
{ printf '\x00\x00\x08\x03'; be32 $train; be32 28; be32 28; head -c $((16 + train * px)) "$work/train-images-idx3-ubyte" | tail -c +17; } \
  | gzip -n -6 > "$work/train-images-idx3-ubyte.gz"
{ printf '\x00\x00\x08\x01'; be32 $train; head -c $((8 + train)) "$work/train-labels-idx1-ubyte" | tail -c +9; } \
  | gzip -n -6 > "$work/train-labels-idx1-ubyte.gz"
{ printf '\x00\x00\x08\x03'; be32 $val; be32 28; be32 28; tail -c $((val * px)) "$work/train-images-idx3-ubyte"; } \
  | gzip -n -6 > "$work/val-images-idx3-ubyte.gz"
{ printf '\x00\x00\x08\x01'; be32 $val; tail -c $val "$work/train-labels-idx1-ubyte"; } \
  | gzip -n -6 > "$work/val-labels-idx1-ubyte.gz"
gzip -n -6 -c "$work/t10k-images-idx3-ubyte" > "$work/test-images-idx3-ubyte.gz"
gzip -n -6 -c "$work/t10k-labels-idx1-ubyte" > "$work/test-labels-idx1-ubyte.gz"

cat > "$work/dataset.json" <<'JSON'
{
  "name": "fashion-mnist",
  "labels": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
  "hflip": true,
  "splits": {
    "train": { "images": "train-images-idx3-ubyte.gz", "labels": "train-labels-idx1-ubyte.gz", "count": 55000 },
    "val": { "images": "val-images-idx3-ubyte.gz", "labels": "val-labels-idx1-ubyte.gz", "count": 5000 },
    "test": { "images": "test-images-idx3-ubyte.gz", "labels": "test-labels-idx1-ubyte.gz", "count": 10000 }
  },
  "source": "Debian dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/{train,t10k}-*-ubyte.gz",
  "split_rule": "train = first 55,000 of the official training set, val = its last 5,000, test = the official test set"
}
JSON

# dataset.json last: its presence marks a complete folder.
for f in "${files[@]}"; do
  cp "$work/$f" "$out/.$f.tmp"
  mv -f "$out/.$f.tmp" "$out/$f"
done
echo "fashion-mnist: $out: train $train, val $val, test 10000 images (28x28)"
