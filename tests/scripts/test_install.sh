#!/usr/bin/env bash
# cmake --install into a fresh prefix, then a C program (pkg-config --static only) and a C++ CMake project
# (find_package) built against it; both must give the CLI's top-1 label on a real image, and the C program
# a non-zero status naming the file for a non-image.
# Usage: test_install.sh PERCEIVER_CLI SHARED_DIR
set -euo pipefail
cli=$1
shared=$2
build_dir=$(cd "$(dirname "$cli")/.." && pwd)
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
model=$shared/models/fashion-mnist-conv
image=$source_dir/samples/cat.jpg

cmake --install "$build_dir" --prefix "$prefix" >/dev/null
test -f "$prefix/include/perceiver/perceiver_c.h" && test -x "$prefix/bin/perceiver"
test -f "$prefix/share/perceiver/imagenet-1k-labels.txt"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig

want=$("$cli" classify --model "$model" "$image" --json -k 1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["labels"][0])')

# C, through pkg-config alone
cc "$source_dir/tests/consumers/c/classify.c" $(pkg-config --cflags --libs --static perceiver) -o "$work/classify_c"
got=$("$work/classify_c" "$model" "$image" | cut -f1)
[ "$got" = "$want" ] || { echo "C consumer: top-1 '$got', CLI '$want'"; exit 1; }
echo "not an image" > "$work/notes.jpg"
if "$work/classify_c" "$model" "$work/notes.jpg" 2> "$work/err.txt"; then echo "C consumer accepted a non-image"; exit 1; fi
grep -q "notes.jpg" "$work/err.txt" || { echo "C consumer error does not name the file:"; cat "$work/err.txt"; exit 1; }

# C++, through find_package(perceiver CONFIG)
cmake -S "$source_dir/tests/consumers/cmake" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
got=$("$work/cmake-build/classify_cpp" "$model" "$image" | cut -f1)
[ "$got" = "$want" ] || { echo "C++ consumer: top-1 '$got', CLI '$want'"; exit 1; }
echo "install consumers: ok (top-1 '$want')"
