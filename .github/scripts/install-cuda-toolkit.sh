#!/usr/bin/env bash
# Installs the CUDA toolkit pieces lt8's build needs (nvcc, the static CUDA runtime, CCCL
# headers) into a manylinux_2_28 container (AlmaLinux 8) from NVIDIA's RHEL 8 repository, under
# /usr/local/cuda. cibuildwheel runs it once per container (CIBW_BEFORE_ALL_LINUX in
# .github/workflows/wheels.yml). Usage: install-cuda-toolkit.sh [MAJOR.MINOR] (default 12.8).
set -euo pipefail
version=${1:-12.8}
pkg=${version/./-}
dnf install -y dnf-plugins-core
dnf config-manager --add-repo \
  https://developer.download.nvidia.com/compute/cuda/repos/rhel8/x86_64/cuda-rhel8.repo
dnf install -y "cuda-nvcc-$pkg" "cuda-cudart-devel-$pkg" "cuda-cccl-$pkg"
ln -sfn "/usr/local/cuda-$version" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
