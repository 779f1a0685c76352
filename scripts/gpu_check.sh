#!/usr/bin/env bash
# Run on the GPU machine from the repo root: build with CUDA, run the whole test suite on the
# GPU (CUDA tests may not skip: LT8_REQUIRE_CUDA=1), optionally the memory checkers and the
# benchmark, and print a summary last. Logs go to $OUT when it is set.
#   LT8_CUDA=OFF (build the CPU kernels only, for the cpu and demo stages)
#   STAGES="build tests gemv outlier sanitizer bench models e2e profile kernels cpu demo jaxdecode ncu multi" (default: build tests)   PYTEST_ARGS="-k linear"
#   TESTS="tests/torch/test_x.py ..." (default: tests)   PYTEST_JOBS=8 (pytest-xdist workers)
#   MODELS_ARGS="--models llama3-8b --ms 16,2048"   E2E_ARGS="--variants fp16,lt8"
#   MULTI_ARGS="--models 8b --variants fp16,lt8,fp16-static,lt8-static" (compiled TP: minutes)
# Wheels in .whl/ (bitsandbytes, torchao; carried) are installed first; with bitsandbytes there,
# its interop tests may not skip (LT8_REQUIRE_BNB=1).
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# A CPU-only build (LT8_CUDA=OFF) lets CUDA tests skip.
export LT8_REQUIRE_CUDA=$([ "${LT8_CUDA:-ON}" = OFF ] && echo 0 || echo 1)
# One GPU unless the machine has more: tests that need two GPUs fail rather than skip when
# LT8_GPUS says there are two.
export LT8_GPUS=${LT8_GPUS:-$(nvidia-smi -L | wc -l)}
OUT=${OUT:-/tmp/lt8-gpu-check}; mkdir -p "$OUT"
STAGES=${STAGES:-"build tests"}
PY=${PY:-python3}
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  ls .whl/bitsandbytes-*.whl >/dev/null 2>&1 && export LT8_REQUIRE_BNB=1
fi

if [[ " $STAGES " == *" build "* ]]; then
  start=$SECONDS
  if LT8_CUDA=${LT8_CUDA:-ON} LT8_CUDA_ARCHS=${LT8_CUDA_ARCHS:-90} $PY -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
    note "build: ok ($((SECONDS - start)) s)"
  else
    tail -40 "$OUT/build.log"; note "build: FAILED"; printf '%s\n' "${summary[@]}"; exit 1
  fi
  $PY -m lt8 info | tee "$OUT/info.txt"
  { lscpu; grep -m1 flags /proc/cpuinfo; } >"$OUT/cpu.txt" 2>&1
fi

if [[ " $STAGES " == *" tests "* ]]; then
  LT8_HYPOTHESIS_EXAMPLES=${LT8_HYPOTHESIS_EXAMPLES:-200} $PY -m pytest -q -p no:cacheprovider -rfE -n ${PYTEST_JOBS:-8} ${PYTEST_ARGS:-} ${TESTS:-tests} 2>&1 | tee "$OUT/pytest.log"
  note "tests: $(grep -E '[0-9]+ (passed|failed|error)' "$OUT/pytest.log" | tail -1)"
fi

if [[ " $STAGES " == *" gemv "* ]]; then
  # Every decode GEMV variant against the CPU (the default picks one per shape), then their
  # timings at decode sizes (benchmarks/bench_gemv.py).
  for v in LT8_GEMV_TC=0 LT8_GEMV_TC=1 LT8_GEMV_TILES=1 LT8_GEMV_TILES=2 LT8_GEMV_TILES=4 LT8_GEMV_STREAM=0 LT8_PDL=0; do
    env $v $PY -m pytest -q -p no:cacheprovider -k "decode or gemv" tests/torch/test_gemm_engines.py >"$OUT/gemv-tests-${v//=/_}.log" 2>&1
    note "gemv tests [$v]: $(grep -E '[0-9]+ (passed|failed|error)' "$OUT/gemv-tests-${v//=/_}.log" | tail -1)"
  done
  for v in ${GEMV_VARIANTS:-LT8_GEMV_TC=0 LT8_GEMV_TC=1 LT8_GEMV_DEFAULT=1}; do
    env $v $PY benchmarks/bench_gemv.py ${GEMV_ARGS:-} $([ $v = LT8_GEMV_DEFAULT=1 ] && echo --fp16) 2>&1 | tee -a "$OUT/bench_gemv.log"
  done
  note "bench_gemv: $(grep -c 'gemv \[' "$OUT/bench_gemv.log") rows"
fi

if [[ " $STAGES " == *" outlier "* ]]; then
  # The many-outlier GEMM both ways: CUTLASS's sm_90a kernel (the default on Hopper when built)
  # and lt8's WMMA kernel (LT8_OUTLIER_TC_WMMA=1): its tests, then the layer benchmark at
  # many-outlier sizes, under each.
  for v in 0 1; do
    LT8_OUTLIER_TC_WMMA=$v $PY -m pytest -q -p no:cacheprovider -n ${PYTEST_JOBS:-8} \
      tests/torch/test_outlier_tensor_cores.py tests/jax/test_jax_outlier_terms.py >"$OUT/outlier-tests-wmma$v.log" 2>&1
    note "outlier tests [LT8_OUTLIER_TC_WMMA=$v]: $(grep -E '[0-9]+ (passed|failed|error)' "$OUT/outlier-tests-wmma$v.log" | tail -1)"
    mkdir -p "$OUT/outlier-wmma$v"
    LT8_OUTLIER_TC_WMMA=$v $PY benchmarks/bench_models.py --overwrite --out "$OUT/outlier-wmma$v" \
      ${OUTLIER_ARGS:---models llama3-8b --ms 2048 --outliers 0,512,all --dtypes fp16 --no-torchao} 2>&1 | tee "$OUT/outlier-bench-wmma$v.log"
  done
fi

if [[ " $STAGES " == *" sanitizer "* ]]; then
  for tool in memcheck racecheck; do
    timeout ${SANITIZER_TIMEOUT:-180} compute-sanitizer --tool $tool --error-exitcode 99 \
      --target-processes all $PY -m pytest -q -p no:cacheprovider -x \
      -k "${SANITIZER_K:-cuda and not opcheck}" ${SANITIZER_TESTS:-tests/torch/test_torch_ops.py} \
      >"$OUT/sanitizer-$tool.log" 2>&1
    rc=$?
    note "compute-sanitizer $tool: rc=$rc, $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer-$tool.log" | tail -1) $(grep -E '(passed|failed)' "$OUT/sanitizer-$tool.log" | tail -1)"
  done
fi

if [[ " $STAGES " == *" bench "* ]]; then
  $PY benchmarks/bench_linear.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  cp benchmarks/results/*.csv benchmarks/results/*.png "$OUT"/ 2>/dev/null
  [ -n "${BENCH_OUT:-}" ] && cp "$BENCH_OUT"/* "$OUT"/ 2>/dev/null
  note "bench: $(grep -c 'M=' "$OUT/bench.log") rows, see bench.log"
fi

if [[ " $STAGES " == *" models "* ]]; then
  $PY benchmarks/bench_models.py --overwrite --out "$OUT" ${MODELS_ARGS:-} 2>&1 | tee "$OUT/bench_models.log"
  note "bench_models: $(grep -c 'M=' "$OUT/bench_models.log") rows"
fi

if [[ " $STAGES " == *" e2e "* ]]; then
  timeout ${E2E_TIMEOUT:-3600} $PY benchmarks/bench_e2e.py --out "$OUT" ${E2E_ARGS:-} 2>&1 | tee "$OUT/bench_e2e.log"
  note "bench_e2e: $(grep -c 'variant=' "$OUT/bench_e2e.log") variants"
fi

if [[ " $STAGES " == *" profile "* ]]; then
  # Host vs GPU time of one decoded token in bench_e2e's model (benchmarks/diag_e2e_profile.py).
  timeout ${PROFILE_TIMEOUT:-400} $PY benchmarks/diag_e2e_profile.py ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/diag_e2e_profile.log"
  note "diag_e2e_profile: $(grep -c 'wall' "$OUT/diag_e2e_profile.log") cases"
fi

if [[ " $STAGES " == *" kernels "* ]]; then
  # GPU time per kernel of one linear call at prefill sizes (benchmarks/diag_kernels.py), under
  # each setting of KERNELS_VARIANTS (e.g. "LT8_EPILOGUE_VEC=0 LT8_EPILOGUE_VEC=1").
  for v in ${KERNELS_VARIANTS:-LT8_DEFAULT=1}; do
    echo "== kernels [$v]" | tee -a "$OUT/diag_kernels.log"
    env $v timeout ${KERNELS_TIMEOUT:-120} $PY benchmarks/diag_kernels.py ${KERNELS_ARGS:-} 2>&1 | tee -a "$OUT/diag_kernels.log"
  done
  note "diag_kernels: $(grep -c '^==.*M=' "$OUT/diag_kernels.log") cases"
fi

if [[ " $STAGES " == *" cpu "* ]]; then
  # Issue 15's CPU grid on two cores of this host (its CPU has AVX-512 VNNI, the CI machine's
  # kind), JAX on its CPU backend.
  timeout ${CPU_TIMEOUT:-300} taskset -c ${CPU_CORES:-0,1} env JAX_PLATFORMS=cpu OMP_NUM_THREADS=2 \
    $PY benchmarks/bench_cpu.py --out "$OUT" ${CPU_ARGS:-} 2>&1 | tee "$OUT/bench_cpu.log"
  note "bench_cpu (cores ${CPU_CORES:-0,1}): $(grep -c ',' "$OUT"/bench_cpu-*.csv 2>/dev/null) csv lines"
fi

if [[ " $STAGES " == *" demo "* ]]; then
  # The demo on two cores of this host's CPU (issue 15's target machine is a 2-core AVX-512
  # one), GPU hidden, three runs. The model travels as .demo_model (python
  # scripts/make_demo_model.py .demo_model; carry it and only the CUTLASS wheel of .whl/, since the
  # device tool carries 64 MiB in all).
  for i in 1 2 3; do
    timeout ${DEMO_TIMEOUT:-200} taskset -c ${CPU_CORES:-0,1} env JAX_PLATFORMS=cpu OMP_NUM_THREADS=2 CUDA_VISIBLE_DEVICES= \
      $PY -m lt8 demo --model ${DEMO_MODEL:-.demo_model} --device cpu 2>&1 | tail -7 | tee -a "$OUT/demo.log"
  done
  note "demo (cores ${CPU_CORES:-0,1}): $(grep -E '(fp32|int8).* ms$' "$OUT/demo.log" | sed 's/  */ /g' | tr '\n' ';')"
fi

if [[ " $STAGES " == *" jaxdecode "* ]]; then
  # Issue 16's decode target: JAX jit of 16 layers vs torch's CUDA graph and XLA's fp16 dense.
  # JAXDECODE_VARIANTS="LT8_PDL=0 LT8_GEMV_DEFAULT=1" compares settings.
  for v in ${JAXDECODE_VARIANTS:-LT8_GEMV_DEFAULT=1}; do
    echo "== jaxdecode [$v]" | tee -a "$OUT/bench_jax_decode.log"
    env $v $PY benchmarks/bench_jax_decode.py ${JAXDECODE_ARGS:-} 2>&1 | tee -a "$OUT/bench_jax_decode.log"
  done
  note "bench_jax_decode: $(grep -o 'M=.*' "$OUT/bench_jax_decode.log" | grep target | tr '\n' ';')"
fi

if [[ " $STAGES " == *" ncu "* ]]; then
  # Nsight Compute on one decode call per case (benchmarks/diag_decode_ncu.py): each kernel's
  # duration, DRAM throughput, occupancy and stall reasons, caches flushed between kernels.
  ncu --clock-control none ${NCU_SECTIONS:---section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats} \
    --csv --page details $PY benchmarks/diag_decode_ncu.py ${NCU_ARGS:-} >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
  note "ncu: rc=$?, $(grep -c 'Duration' "$OUT/ncu.csv") kernels"
fi

if [[ " $STAGES " == *" multi "* ]]; then
  # Tensor parallelism over this host's GPUs (1 up to LT8_GPUS): torch DTensor and JAX meshes.
  widths=$(for w in 1 2 4 8; do [ "$w" -le "$LT8_GPUS" ] && printf '%s,' "$w"; done); widths=${widths%,}
  $PY benchmarks/bench_multi_gpu.py --launch "$widths" --out "$OUT" ${MULTI_ARGS:-} 2>&1 | tee "$OUT/bench_multi_gpu.log"
  note "bench_multi_gpu (torch, widths $widths): $(grep -c ',' "$OUT"/bench_multi_gpu-*.csv 2>/dev/null) csv lines"
  $PY benchmarks/bench_multi_gpu_jax.py --widths "$widths" --out "$OUT" ${MULTI_JAX_ARGS:-} 2>&1 | tee "$OUT/bench_multi_gpu_jax.log"
  note "bench_multi_gpu_jax (widths $widths): $(grep -c ',' "$OUT"/bench_multi_gpu_jax-*.csv 2>/dev/null) csv lines"
fi

echo; echo "===== summary ($(cat "$OUT/gpu.txt"))"; printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
# The device tool brings back at most 8 files from $OUT: everything else travels in one archive.
if [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
  tar czf /tmp/lt8-logs.tgz -C "$OUT" . && find "$OUT" -mindepth 1 ! -name summary.txt -delete && mv /tmp/lt8-logs.tgz "$OUT/logs.tgz"
fi
