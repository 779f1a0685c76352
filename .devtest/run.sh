set -e
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvcc -std=c++17 -O3 -DLT8_WITH_CUDA -gencode=arch=compute_90,code=sm_90 -Xcompiler -fPIC -shared -Icuda \
  .devtest/shim.cu cuda/layout.cu cuda/layout_cpu.cc -o .devtest/libshim.so
export PYTHONPATH=$PWD/.devtest PYTHONUNBUFFERED=1 LT8_REQUIRE_CUDA=1
python3 -m pytest -p lt8stub -q -rs -x tests/test_layouts_cuda.py tests/test_layouts.py --durations=8 "$@"
python3 .devtest/bench.py
