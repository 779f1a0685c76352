// lt8._C: the nanobind module.
//   * pointer entry points for torch (integers in: data pointers, sizes, dtype codes, stream);
//   * registrations(): XLA FFI handler capsules per platform, for lt8.jax.
// Bad arguments raise ValueError, CUDA failures RuntimeError; nothing aborts the process.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <stdexcept>

#include "lt8.h"

#ifdef LT8_WITH_FFI
#include "registry.h"
#endif

namespace nb = nanobind;
using lt8::DType;
using lt8::Status;

namespace {

void raise_if_error(const Status& s) {
  if (s.ok()) return;
  if (s.code == lt8::Code::kInvalidArgument) throw std::invalid_argument(s.message);
  throw std::runtime_error(s.message);
}

// (device, stream, device_index) as passed from Python: device 0 = cpu, 1 = cuda.
lt8::Exec make_exec(int device, uintptr_t stream, int device_index) {
  if (device != 0 && device != 1) throw std::invalid_argument("device must be 0 (cpu) or 1 (cuda)");
  lt8::Exec ex;
  ex.device = static_cast<lt8::Device>(device);
  ex.stream = reinterpret_cast<void*>(stream);
  ex.device_index = device_index;
  return ex;
}

DType to_dtype(int code) {
  if (code < 0 || code > 5)
    throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

// The kernel entry points take raw pointers and never touch Python objects, so they release the
// GIL: forwards from several Python threads run their kernels concurrently.
NB_MODULE(_C, m) {
  m.doc() = "lt8 native kernels (CPU always; CUDA when built with a CUDA toolkit)";

  m.def("has_cuda", &lt8::cuda_built, "True when this build contains CUDA kernels.");
  m.def(
      "cuda_archs", [] { return std::string(lt8::cuda_archs()); },
      "CUDA architectures compiled in, e.g. '75,80,86,89,90' ('' without CUDA).");
  m.def(
      "cublaslt_available", &lt8::cublaslt_available,
      "True when the CUDA kernels can use cuBLASLt's int8 tensor-core GEMM (loaded at run time).");
  m.def("set_cublaslt_enabled", &lt8::set_cublaslt_enabled, nb::arg("enabled"),
        "Lets (True, default) or stops (False) the CUDA kernels using cuBLASLt; for "
        "tests/benchmarks.");
  m.def("has_ffi", [] {
#ifdef LT8_WITH_FFI
    return true;
#else
    return false;
#endif
  });

  m.def(
      "quantize_rows",
      [](int device, uintptr_t stream, int dev_idx, int x_dtype, uintptr_t x, int64_t M, int64_t K,
         float threshold, uintptr_t q, uintptr_t row_scale, uintptr_t mask) {
        raise_if_error(lt8::quantize_rows(make_exec(device, stream, dev_idx), to_dtype(x_dtype),
                                          ptr<const void>(x), M, K, threshold, ptr<int8_t>(q),
                                          ptr<float>(row_scale), ptr<uint8_t>(mask)));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def(
      "dequantize_rows",
      [](int device, uintptr_t stream, int dev_idx, uintptr_t q, uintptr_t row_scale, int64_t M,
         int64_t K, int out_dtype, uintptr_t out) {
        raise_if_error(lt8::dequantize_rows(make_exec(device, stream, dev_idx),
                                            ptr<const int8_t>(q), ptr<const float>(row_scale), M, K,
                                            to_dtype(out_dtype), ptr<void>(out)));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def(
      "int8_gemm",
      [](int device, uintptr_t stream, int dev_idx, uintptr_t A, uintptr_t B, int64_t M, int64_t N,
         int64_t K, uintptr_t C) {
        raise_if_error(lt8::int8_gemm(make_exec(device, stream, dev_idx), ptr<const int8_t>(A),
                                      ptr<const int8_t>(B), M, N, K, ptr<int32_t>(C)));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def(
      "dequant_epilogue",
      [](int device, uintptr_t stream, int dev_idx, uintptr_t C, uintptr_t row_scale,
         uintptr_t col_scale, int bias_dtype, uintptr_t bias, int64_t M, int64_t N, int out_dtype,
         uintptr_t out) {
        raise_if_error(lt8::dequant_epilogue(
            make_exec(device, stream, dev_idx), ptr<const int32_t>(C), ptr<const float>(row_scale),
            ptr<const float>(col_scale), to_dtype(bias_dtype), ptr<const void>(bias), M, N,
            to_dtype(out_dtype), ptr<void>(out)));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def("layout_padded_shape", [](int layout, int64_t rows, int64_t cols) {
    if (layout < 0 || layout > 3) throw std::invalid_argument("unknown layout code");
    int64_t pr = 0, pc = 0;
    lt8::layout_padded_shape(static_cast<lt8::Layout>(layout), rows, cols, &pr, &pc);
    return std::make_tuple(pr, pc);
  });

  m.def(
      "transform_layout",
      [](int device, uintptr_t stream, int dev_idx, uintptr_t in, uintptr_t out, int64_t rows,
         int64_t cols, int from, int to) {
        raise_if_error(lt8::transform_layout(
            make_exec(device, stream, dev_idx), ptr<const int8_t>(in), ptr<int8_t>(out), rows, cols,
            static_cast<lt8::Layout>(from), static_cast<lt8::Layout>(to)));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def("linear_workspace_size", &lt8::int8_linear_workspace_size,
        "Bytes of scratch the fused linear op needs for (M, N, K).");

  m.def(
      "int8_linear",
      [](int device, uintptr_t stream, int dev_idx, int x_dtype, uintptr_t x, uintptr_t CB,
         uintptr_t SCB, int bias_dtype, uintptr_t bias, int64_t M, int64_t N, int64_t K,
         float threshold, uintptr_t out, uintptr_t workspace, size_t workspace_bytes) {
        raise_if_error(lt8::int8_linear(make_exec(device, stream, dev_idx), to_dtype(x_dtype),
                                        ptr<const void>(x), ptr<const int8_t>(CB),
                                        ptr<const float>(SCB), to_dtype(bias_dtype),
                                        ptr<const void>(bias), M, N, K, threshold, ptr<void>(out),
                                        ptr<void>(workspace), workspace_bytes));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def(
      "int8_weight_linear",
      [](int device, uintptr_t stream, int dev_idx, int x_dtype, uintptr_t x, uintptr_t CB,
         uintptr_t SCB, int bias_dtype, uintptr_t bias, int64_t M, int64_t N, int64_t K,
         uintptr_t out) {
        raise_if_error(lt8::int8_weight_linear(
            make_exec(device, stream, dev_idx), to_dtype(x_dtype), ptr<const void>(x),
            ptr<const int8_t>(CB), ptr<const float>(SCB), to_dtype(bias_dtype),
            ptr<const void>(bias), M, N, K, ptr<void>(out)));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def(
      "int8_linear_grad_input",
      [](int device, uintptr_t stream, int dev_idx, int g_dtype, uintptr_t grad_out, uintptr_t CB,
         uintptr_t SCB, int64_t M, int64_t N, int64_t K, uintptr_t grad_x) {
        raise_if_error(lt8::int8_linear_grad_input(
            make_exec(device, stream, dev_idx), to_dtype(g_dtype), ptr<const void>(grad_out),
            ptr<const int8_t>(CB), ptr<const float>(SCB), M, N, K, ptr<void>(grad_x)));
      },
      nb::call_guard<nb::gil_scoped_release>());

  m.def(
      "registrations",
      [] {
        nb::dict platforms;
#ifdef LT8_WITH_FFI
        auto to_dict = [](const std::vector<lt8::ffi::Target>& targets) {
          nb::dict d;
          for (const auto& t : targets) d[t.name] = nb::capsule(t.handler);
          return d;
        };
        platforms["cpu"] = to_dict(lt8::ffi::cpu_targets());
#ifdef LT8_WITH_CUDA
        platforms["CUDA"] = to_dict(lt8::ffi::cuda_targets());
#endif
#endif
        return platforms;
      },
      "XLA FFI handlers: {platform: {target_name: capsule}}.");
}
