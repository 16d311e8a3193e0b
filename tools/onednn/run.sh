#!/bin/sh
# Builds and runs the zipar-vs-oneDNN int8 GEMM comparison (see README.md). Needs Debian's libdnnl-dev
# (installed here if missing; the Swift package itself never links oneDNN). Usage: [THREADS=n] ./run.sh [runs]
set -eu
cd "$(dirname "$0")"
if [ ! -f /usr/include/oneapi/dnnl/dnnl.h ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y libdnnl-dev; else sudo apt-get install -y libdnnl-dev; fi
fi
SRC=../../Sources/CKernels
BUILD=${BUILD:-/tmp/zipar-onednn-bench}
mkdir -p "$BUILD"
# zipar's kernels with the flags Package.swift gives CKernels, and by default the clang SwiftPM uses
# (the Swift toolchain's, else the system's cc); the driver with cc + OpenMP (oneDNN's runtime).
KCC=${KCC:-$(command -v clang || echo cc)}
for f in qkernels pool; do
    "$KCC" -O3 -ffp-contract=off -I"$SRC/include" -c "$SRC/$f.c" -o "$BUILD/$f.o"
done
"${CC:-cc}" -O3 -std=gnu11 -fopenmp -I"$SRC/include" bench.c "$BUILD/qkernels.o" "$BUILD/pool.o" \
    -o "$BUILD/onednn-bench" -ldnnl -lpthread -lm
echo "kernels compiled with: $("$KCC" --version | head -1)"
# The same number of threads on both sides (default 2, the decode configuration on this 2-vCPU machine):
# zipar's pool (ck_pool_start) and oneDNN's OpenMP runtime.
THREADS=${THREADS:-2}
OMP_NUM_THREADS=$THREADS BENCH_THREADS=$THREADS exec "$BUILD/onednn-bench" "$@"
