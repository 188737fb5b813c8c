#!/usr/bin/env bash
# Prepare a CUDA 13.0 toolkit from PyPI wheels on a machine with no GPU and no CUDA install, so
# that `cargo build --features cuda` (candle-core 0.11 + cudarc 0.19 with cufft) compiles and
# links, and `--features nccl` (the trainer's data-parallel training) too, with NCCL 2.27.7
# (its libnccl.so.2 reports "2.27.7+cuda13.0"). The binaries it builds run on a machine with an
# NVIDIA driver >= 580 (CUDA 13.0).
#
#   scripts/prepare-cuda-toolkit.sh DIR   # installs into DIR (reused when already there)
#   source DIR/env.sh                     # then: cargo build --release --features cuda
#   scripts/prepare-cuda-toolkit.sh --with-cudnn DIR   # also cuDNN 9 (nvidia-cudnn-cu13, a
#                                         # 350 MB wheel), to link `--features cudnn` builds;
#                                         # checking them (clippy) needs no cuDNN
#
# Facts this script encodes (each one broke a build when ignored):
# - every wheel is pinned to 13.0 and installed with --no-deps: nvidia-cuda-nvcc's unpinned
#   dependency nvidia-nvvm otherwise pulls a newer cicc that emits PTX ISA 9.5, which the 13.0
#   ptxas rejects and a 580 driver cannot load;
# - the wheels ship only versioned libraries (libcublas.so.13, libnccl.so.2): the link needs
#   libX.so names;
# - nvidia-nccl-cu13 goes into its own --target folder (site-nccl): pip --target into a folder
#   that already holds an nvidia/ package skips it (or, with --upgrade, replaces all of nvidia/);
# - no wheel ships libcuda.so (it comes with the driver): a link-time stub with soname
#   libcuda.so.1 is generated from cuda.h. Never copy the stub to the GPU machine. Its functions
#   return CUDA_ERROR_STUB_LIBRARY (34), so a binary that loads it (LD_LIBRARY_PATH=DIR/cuda/lib:
#   DIR/cuda/lib/stubs) fails cleanly: candle's CUDA device creation errors and the GPU tests
#   print why they skip (that is how the CUDA test binaries can run on a machine with no driver);
# - cudarc 0.19.10 emits no -lcufft under dynamic-linking: the crate that uses cudarc's cufft
#   module (kernels-cuda) prints `cargo:rustc-link-lib=dylib=cufft` in its build.rs;
# - cudarc panics at build time if its dynamic-loading and dynamic-linking features are both on:
#   every cudarc dependency uses default-features = false with dynamic-linking (as candle does);
# - CUDA_COMPUTE_CAP=90 (H100/H200) spares candle-kernels' build from calling nvidia-smi, and
#   is the target of kernels-cuda's PTX.
# On the GPU machine: export LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib (PyTorch's wheels
# carry libcublas.so.13, libcufft.so.12, libcurand.so.10, libcudart.so.13); libcuda.so.1 comes
# from the driver (scripts/gpu-run.sh does this). libnccl.so.2 comes from the nvidia-nccl-cu13
# wheel PyTorch installs (nvidia/nccl/lib, also found by gpu-run.sh), and libcudnn.so.9 from its
# nvidia-cudnn-cu13 wheel (nvidia/cudnn/lib, likewise).
#
# The toolkit is about 1 GiB; the link tree and env.sh are regenerated only when missing, so
# concurrent builds that share DIR never see it half-written after the first run.
set -euo pipefail
WITH_CUDNN=0
if [[ ${1:-} == --with-cudnn ]]; then
  WITH_CUDNN=1
  shift
fi
DIR=$(mkdir -p "${1:?usage: prepare-cuda-toolkit.sh [--with-cudnn] DIR}" && cd "$1" && pwd)
SITE=$DIR/site TK=$DIR/site/nvidia/cu13 C=$DIR/cuda
NCCL=$DIR/site-nccl/nvidia/nccl NCCL_VERSION=2.27.7
STAMP=$DIR/.ready-13.0.88-stub34-nccl$NCCL_VERSION
CUDNN=$DIR/site-cudnn/nvidia/cudnn CUDNN_VERSION=9.13.0.50

# cuDNN in its own --target folder (as NCCL), its libraries linked into the CUDA root under
# unversioned names too.
add_cudnn() {
  [[ $WITH_CUDNN == 1 ]] || return 0
  if [[ ! -f $CUDNN/lib/libcudnn.so.9 ]]; then
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
      --target "$DIR/site-cudnn" nvidia-cudnn-cu13==$CUDNN_VERSION
  fi
  local f b
  for f in "$CUDNN"/lib/libcudnn*.so.*; do
    b=$(basename "$f"); ln -sf "$f" "$C/lib/$b"; ln -sf "$f" "$C/lib/${b%%.so.*}.so"
  done
  echo "cuDNN $CUDNN_VERSION linked into $C/lib"
}

if [[ -f $STAMP && -x $C/bin/nvcc && -f $C/lib/stubs/libcuda.so && -e $C/lib/libnccl.so && -f $DIR/env.sh ]]; then
  add_cudnn
  echo "CUDA 13.0 toolkit ready: source $DIR/env.sh"
  exit 0
fi

if [[ ! -x $TK/bin/nvcc || ! -x $TK/nvvm/bin/cicc ]]; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$SITE" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3 \
    nvidia-curand==10.4.0.35 nvidia-cufft==12.0.0.61 nvidia-cuda-nvrtc==13.0.88
fi
if [[ ! -f $NCCL/lib/libnccl.so.2 ]]; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$DIR/site-nccl" nvidia-nccl-cu13==$NCCL_VERSION
fi

# A CUDA root made of links, with unversioned library names and the libcuda stub; built aside
# and moved into place so that a concurrent build never sees it half-written.
T=$C.tmp.$$
rm -rf "$T"; mkdir -p "$T/bin" "$T/lib/stubs"
ln -s "$TK"/bin/* "$T/bin/"
ln -s "$TK/include" "$T/include"
ln -s "$TK/nvvm" "$T/nvvm"
for f in "$TK"/lib/lib*.so.* "$NCCL"/lib/libnccl.so.*; do
  b=$(basename "$f"); ln -sf "$f" "$T/lib/$b"; ln -sf "$f" "$T/lib/${b%%.so.*}.so"
done
{ gcc -E -P -D__CUDA_API_VERSION_INTERNAL -x c "$T/include/cuda.h"
  gcc -E -P -x c "$T/include/cuda.h"; } | tr -s ' \n' ' ' | sed 's/;/;\n/g' |
  grep -oE '^[A-Za-z_ ]*\bcu[A-Z][A-Za-z0-9_]*\s*\(' | grep -oE 'cu[A-Z][A-Za-z0-9_]*' > "$T/lib/stubs/names.txt"
printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop >> "$T/lib/stubs/names.txt"
sort -u -o "$T/lib/stubs/names.txt" "$T/lib/stubs/names.txt"
sed 's/.*/int &(void) { return 34; }/' "$T/lib/stubs/names.txt" > "$T/lib/stubs/libcuda_stub.c"
gcc -shared -fPIC -nostdlib -Wl,-soname,libcuda.so.1 -o "$T/lib/stubs/libcuda.so" "$T/lib/stubs/libcuda_stub.c"
ln -s libcuda.so "$T/lib/stubs/libcuda.so.1"
rm -rf "$C"; mv "$T" "$C"

cat > "$DIR/env.sh" <<EOT
export PATH=$C/bin:\$PATH
export CUDA_HOME=$C CUDA_PATH=$C CUDA_ROOT=$C
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-\$(nproc)}
EOT
touch "$STAMP"
add_cudnn
echo "CUDA 13.0 toolkit ready: source $DIR/env.sh"
