#!/usr/bin/env bash
# cmake --install into a fresh prefix, then build programs against the installed tree only:
#  - tests/consumers/c/classify.c with nothing but `pkg-config --cflags --libs --static perceiver`, linked to the
#    shared library (as installed) and to the static one (a copy of the prefix without libperceiver.so);
#  - tests/consumers/cmake/ with find_package(perceiver CONFIG) (static and shared).
# Each classifies Fashion-MNIST test images (top-1 = Hugging Face's, from expected/images_logits.npy) and
# samples/cat.jpg (top-1 = `perceiver classify --json`); a non-image must give status 3 naming the file.
# Usage: test_install.sh PERCEIVER_CLI SHARED_DIR
set -euo pipefail
cli=$(realpath "$1")
shared=${PERCEIVER_SHARED_DIR:-$2}
build=$(dirname "$(dirname "$cli")")
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
model=$shared/models/fashion-mnist-conv
python=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" > "$tmp/install.log"
libdir=$(dirname "$(find "$prefix" -name perceiver.pc)")/..
for f in include/perceiver/perceiver.h include/perceiver/perceiver_c.h include/perceiver/image.h \
         include/perceiver/error.h bin/perceiver share/perceiver/imagenet-1k-labels.txt; do
  [[ -f $prefix/$f ]] || fail "not installed: $f"
done
for f in libperceiver.a pkgconfig/perceiver.pc cmake/perceiver/perceiverConfig.cmake; do
  [[ -f $libdir/$f ]] || fail "not installed: lib/$f"
done
ls "$libdir"/libperceiver.so* > /dev/null || fail "not installed: libperceiver.so"
[[ $(wc -l < "$prefix/share/perceiver/imagenet-1k-labels.txt") -eq 1000 ]] || fail "labels file is not 1000 lines"

# The images and the labels HF's logits give them.
images=("$model/expected/images/00000_9_ankle_boot.png" "$model/expected/images/00018_8_bag.png"
        "$model/expected/images/00004_6_shirt.png")
hf_top1=$("$python" - "$model" "${images[@]}" <<'PY'
import json, os, sys
import numpy as np
model, files = sys.argv[1], sys.argv[2:]
logits = np.load(os.path.join(model, "expected/images_logits.npy"))
names = sorted(os.listdir(os.path.join(model, "expected/images")))  # rows in sorted file-name order
id2label = json.load(open(os.path.join(model, "config.json")))["id2label"]
for f in files:
    print(f + "\t" + id2label[str(int(logits[names.index(os.path.basename(f))].argmax()))])
PY
)
cat_label=$("$cli" classify --model "$model" --json --top-k 1 "$source_dir/samples/cat.jpg" |
            "$python" -c 'import json,sys; print(json.loads(sys.stdin.readline())["labels"][0])')
expected=$(printf '%s\n%s\t%s' "$hf_top1" "$source_dir/samples/cat.jpg" "$cat_label")

# Checks one consumer program: "<file>\t<label>\t..." lines = expected, and a non-image fails naming it.
check_program() {
  local name=$1
  shift
  local out
  out=$("$@" "$model" "${images[@]}" "$source_dir/samples/cat.jpg" | cut -f1,2) || fail "$name: status $?"
  [[ $out == "$expected" ]] || fail "$name: top-1 differs: got
$out
expected
$expected"
  local status=0
  "$@" "$model" "$source_dir/CMakeLists.txt" 2> "$tmp/err" > /dev/null || status=$?
  [[ $status -eq 3 ]] || fail "$name: a non-image gave status $status, not 3"
  grep -q "$source_dir/CMakeLists.txt: " "$tmp/err" || fail "$name: the error does not name the file: $(cat "$tmp/err")"
  echo "ok: $name"
}

cc=${CC:-cc}
# C, through pkg-config only, as installed (shared library present: -lperceiver links it, run path set).
PKG_CONFIG_PATH=$libdir/pkgconfig "$cc" "$source_dir/tests/consumers/c/classify.c" -o "$tmp/classify" \
  $(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --cflags --libs --static perceiver)
check_program "C via pkg-config (shared)" "$tmp/classify"

# C, through pkg-config only, against libperceiver.a alone (a relocated copy of the prefix without the .so).
cp -a "$prefix" "$tmp/static"
rm -f "$tmp/static/${libdir#"$prefix"/}"/libperceiver.so*
static_pc=$tmp/static/${libdir#"$prefix"/}/pkgconfig
"$cc" "$source_dir/tests/consumers/c/classify.c" -o "$tmp/classify_static" \
  $(PKG_CONFIG_PATH=$static_pc pkg-config --cflags --libs --static perceiver)
if ldd "$tmp/classify_static" | grep -q libperceiver; then fail "classify_static links libperceiver.so"; fi
check_program "C via pkg-config --static (libperceiver.a)" "$tmp/classify_static"

# C++, through find_package(perceiver CONFIG).
cmake -S "$source_dir/tests/consumers/cmake" -B "$tmp/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" ${CMAKE_CXX_COMPILER:+-DCMAKE_CXX_COMPILER=$CMAKE_CXX_COMPILER} > "$tmp/consumer.log" ||
  { cat "$tmp/consumer.log"; fail "find_package(perceiver CONFIG) consumer did not configure"; }
cmake --build "$tmp/consumer" > "$tmp/consumer-build.log" || { cat "$tmp/consumer-build.log"; fail "consumer did not build"; }
check_program "C++ via find_package (perceiver::perceiver)" "$tmp/consumer/embed"
check_program "C++ via find_package (perceiver::perceiver_shared)" "$tmp/consumer/embed_shared"

# The examples in docs/library.md compile and link against the installed tree with pkg-config alone.
awk -v dir="$tmp" '/^```c$/ {f = dir "/doc_example.c"; next} /^```cpp$/ {f = dir "/doc_example.cpp"; next}
                   /^```/ {f = ""; next} f != "" {print > f}' "$source_dir/docs/library.md"
[[ -s $tmp/doc_example.c && -s $tmp/doc_example.cpp ]] || fail "docs/library.md: no C or C++ example found"
flags=$(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --cflags --libs --static perceiver)
"$cc" -Wall -Wextra -Werror "$tmp/doc_example.c" -o "$tmp/doc_example_c" $flags || fail "docs/library.md: the C example"
"${CMAKE_CXX_COMPILER:-c++}" -std=c++20 -Wall -Wextra -Werror "$tmp/doc_example.cpp" -o "$tmp/doc_example_cpp" $flags ||
  fail "docs/library.md: the C++ example"
"$tmp/doc_example_c" "$model" "${images[0]}" | grep -q "Ankle boot" || fail "docs/library.md: the C example's output"
"$tmp/doc_example_cpp" "$model" "${images[0]}" | grep -q "Ankle boot" || fail "docs/library.md: the C++ example's output"
echo "ok: docs/library.md examples"
echo "all install checks passed"
