#!/usr/bin/env bash
# build-cuda.sh: build `firstrank` with `--features cuda` on a machine that has
# no CUDA toolkit and no GPU, for carrying the binary to a GPU machine.
#
# What it does:
#   1. Fetches NVIDIA's CUDA 13.0 compiler pieces as PyPI wheels with
#      `pip download --no-deps` (no apt, no NVIDIA installer) and unpacks them
#      into one prefix, $CUDA_PREFIX_ROOT/cuda (default /work/cuda-toolkit/cuda):
#        nvidia-cuda-nvcc 13.0.88     nvcc, ptxas, fatbinary, nvlink, cudafe++
#        nvidia-nvvm 13.0.88          cicc + libdevice (nvcc's device front end)
#        nvidia-cuda-crt 13.0.88      include/crt (split out of nvcc in CUDA 13)
#        nvidia-cuda-runtime 13.0.96  CUDA runtime headers + libcudart.so.13
#        nvidia-cuda-cccl 13.0.85     include/cccl (libcu++, CUB, Thrust)
#      All wheels unpack to nvidia/cu13/{bin,include,lib,nvvm}; the script
#      adds lib64 -> lib and libcudart.so -> libcudart.so.13 for the linker.
#   2. Builds with nvcc on PATH, CUDA_HOME set and CUDA_COMPUTE_CAP (default
#      90: H100/H200; no GPU is needed to build). candle-kernels compiles its
#      .cu files to PTX (embedded in the binary, JIT-compiled by the driver)
#      and a static libmoe.a for sm_$CUDA_COMPUTE_CAP; cudarc reads the CUDA
#      version from `nvcc --version` and, with candle's `dynamic-linking`
#      feature, links libcuda, libcublas, libcublasLt, libcurand and libnvrtc
#      at link time (candle-kernels adds libcudart, which the runtime wheel
#      ships). The others are not in the toolkit wheels (libcuda is the
#      driver's), so the script writes link-time stubs into $PREFIX/lib/stubs
#      (a path cudarc's build script searches under CUDA_HOME): tiny shared
#      libraries with the real sonames (libcuda.so.1, libcublas.so.13,
#      libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13) that define every
#      function cudarc declares, versioned as the CUDA 13 libraries version
#      theirs (`name@@<soname>`; libcuda's are unversioned). The binary then
#      records those sonames and the GPU machine's real libraries serve them.
#
# The PTX is CUDA 13.0's (PTX ISA 9.0): the GPU machine's driver must support
# CUDA 13.0 or newer (driver >= 580).
#
# Usage:   scripts/build-cuda.sh [--toolkit-only] [cargo build args...]
#          (from the workspace root; --toolkit-only stops after step 1)
# Env:     CUDA_PREFIX_ROOT (default /work/cuda-toolkit), CUDA_COMPUTE_CAP (90),
#          CARGO_TARGET_DIR (default /work/cuda-target: kept apart from the
#          CPU build so the two never invalidate each other).
# Result:  $CARGO_TARGET_DIR/release/firstrank
# Running it on the GPU machine needs libcuda.so.1 (the driver's) and
# libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 on the
# loader path; on this project's lent H100/H200 image they are in
#   LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/nvidia/lib64
# The first CUDA run on a fresh machine spends ~20 s in the driver's JIT of the
# PTX (cached in ~/.nv/ComputeCache for later runs on the same machine).
set -euo pipefail

ROOT=${CUDA_PREFIX_ROOT:-/work/cuda-toolkit}
PREFIX=$ROOT/cuda
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/cuda-target}

if [ ! -x "$PREFIX/bin/nvcc" ]; then
    mkdir -p "$ROOT/wheels" "$ROOT/unpacked"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
        -d "$ROOT/wheels" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    for w in "$ROOT"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$ROOT/unpacked"
    done
    ln -sfn unpacked/nvidia/cu13 "$PREFIX"
    chmod +x "$PREFIX"/bin/* "$PREFIX"/nvvm/bin/*
    ln -sfn lib "$PREFIX/lib64"
    ln -sf libcudart.so.13 "$PREFIX/lib/libcudart.so"
fi

if [ ! -e "$PREFIX/lib/stubs/libcuda.so" ]; then
    CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)
    mkdir -p "$PREFIX/lib/stubs"
    python3 - "$CUDARC" "$PREFIX/lib/stubs" <<'PY'
import pathlib, re, subprocess, sys
cudarc, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# (cudarc sys module, link name, soname, symbol version or None)
libs = [("driver", "cuda", "libcuda.so.1", None),
        ("cublas", "cublas", "libcublas.so.13", "libcublas.so.13"),
        ("cublaslt", "cublasLt", "libcublasLt.so.13", "libcublasLt.so.13"),
        ("curand", "curand", "libcurand.so.10", "libcurand.so.10"),
        ("nvrtc", "nvrtc", "libnvrtc.so.13", "libnvrtc.so.13")]
for module, name, soname, version in libs:
    text = (cudarc / "src" / module / "sys" / "mod.rs").read_text()
    names = sorted(set(re.findall(r"^\s+fn ([A-Za-z0-9_]+)\(", text, re.M)))
    c = out / f"{name}.c"
    c.write_text("".join(f"void {n}(void) {{}}\n" for n in names))
    args = ["gcc", "-shared", "-fPIC", "-o", str(out / f"lib{name}.so"),
            f"-Wl,-soname,{soname}", str(c)]
    if version:
        vs = out / f"{name}.map"
        vs.write_text(f"{version} {{ global: *; }};\n")
        args.append(f"-Wl,--version-script={vs}")
    subprocess.run(args, check=True)
    print(f"stub lib{name}.so ({soname}): {len(names)} functions")
PY
    # Also visible from lib/ itself, in case cudarc's build script ran (and
    # cached its search paths) before lib/stubs existed.
    for f in "$PREFIX"/lib/stubs/*.so; do ln -sfn "stubs/${f##*/}" "$PREFIX/lib/${f##*/}"; done
fi

export PATH=$PREFIX/bin:$PATH
export CUDA_HOME=$PREFIX
nvcc --version | tail -2
if [ "${1:-}" = --toolkit-only ]; then exit 0; fi

cargo build --release -p firstrank --features cuda "$@"
ls -la "$CARGO_TARGET_DIR/release/firstrank"
