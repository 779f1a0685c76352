// lt8._C: the nanobind module.
//   * one pointer entry point per op of cuda/ops.def, for torch (integers in: data pointers,
//     sizes, dtype codes, stream), and ops(), the table of them;
//   * the enums DType, Device and Layout of cuda/lt8.h, and the layout geometry
//     (layout_padded_shape, layout_offsets) for lt8.core.layouts;
//   * registrations(): XLA FFI handler capsules per platform, for lt8.jax.
// Bad arguments raise ValueError, CUDA failures RuntimeError; nothing aborts the process.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "layout/layout_offsets.h"
#include "lt8.h"

#ifdef LT8_WITH_FFI
#include "registry.h"
#endif

namespace nb = nanobind;
using lt8::Device;
using lt8::DType;
using lt8::Layout;
using lt8::Status;

namespace {

void raise_if_error(const Status& s) {
  if (s.ok()) return;
  if (s.code == lt8::Code::kInvalidArgument) throw std::invalid_argument(s.message);
  throw std::runtime_error(s.message);
}

// An enum code from Python, checked by the enum's one validity check. `what` names the argument
// ("dtype"), `type` the enum's Python class ("DType").
template <class E>
E checked_code(int code, const char* what, const char* type) {
  const E e = static_cast<E>(code);
  if (!lt8::is_valid(e))
    throw std::invalid_argument(std::string(what) + " must be a member of lt8._C." + type +
                                ", got unknown " + what + " code " + std::to_string(code));
  return e;
}

// How a parameter of a C API function crosses the binding: Python passes plain ints and floats
// (no enum objects, no tensors), so a call costs no conversion beyond the integer itself.
template <class T>
struct PyArg {  // sizes, thresholds: as they are
  using type = T;
  static T from(T v) { return v; }
};
template <class T>
struct PyArg<T*> {  // buffers: integer addresses
  using type = uintptr_t;
  static T* from(uintptr_t p) { return reinterpret_cast<T*>(p); }
};
template <>
struct PyArg<DType> {
  using type = int;
  static DType from(int c) { return checked_code<DType>(c, "dtype", "DType"); }
};
template <>
struct PyArg<Layout> {
  using type = int;
  static Layout from(int c) { return checked_code<Layout>(c, "layout", "Layout"); }
};

// The first three arguments of every entry point: (device code, stream, device index).
lt8::Exec make_exec(int device, uintptr_t stream, int device_index) {
  lt8::Exec ex;
  ex.device = checked_code<Device>(device, "device", "Device");
  ex.stream = reinterpret_cast<void*>(stream);
  ex.device_index = device_index;
  return ex;
}

// The entry points, in ops.def order: (name, number of Python arguments).
std::vector<std::pair<const char*, size_t>>& op_table() {
  static std::vector<std::pair<const char*, size_t>> table;
  return table;
}

// Defines lt8._C.<name>(device, stream, device_index, <fn's parameters as PyArg types>), which
// calls lt8::<name>. The kernels take raw pointers and never touch Python objects, so the entry
// points release the GIL: forwards from several Python threads run their kernels concurrently.
template <class... P>
void def_op(nb::module_& m, const char* name, Status (*fn)(const lt8::Exec&, P...)) {
  m.def(
      name,
      [fn](int device, uintptr_t stream, int device_index, typename PyArg<P>::type... a) {
        raise_if_error(fn(make_exec(device, stream, device_index), PyArg<P>::from(a)...));
      },
      nb::call_guard<nb::gil_scoped_release>());
  op_table().emplace_back(name, 3 + sizeof...(P));
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "lt8 native kernels (CPU always; CUDA when built with a CUDA toolkit)";

  // Python members are named as lt8 names them elsewhere ("float32", "cuda", "col_turing").
  // is_arithmetic: members are ints, so Python can cache int(member) for the per-call paths.
#define LT8_VALUE(e, code, name, ...) enum_type.value(name, E::e);
  {
    using E = DType;
    nb::enum_<E> enum_type(m, "DType", nb::is_arithmetic(), "Element types (cuda/lt8.h).");
    LT8_DTYPES(LT8_VALUE)
  }
  {
    using E = Device;
    nb::enum_<E> enum_type(m, "Device", nb::is_arithmetic(), "Where an op runs.");
    LT8_DEVICES(LT8_VALUE)
  }
  {
    using E = Layout;
    nb::enum_<E> enum_type(m, "Layout", nb::is_arithmetic(), "cuBLASLt's int8 tile orders.");
    LT8_LAYOUTS(LT8_VALUE)
  }
#undef LT8_VALUE

  m.def("has_cuda", &lt8::cuda_built, "True when this build contains CUDA kernels.");
  m.def("use_openmp_threads", &lt8::use_openmp_threads, nb::arg("on"),
        "Run the CPU kernels' threads in OpenMP regions (shared with torch's libgomp) instead of "
        "lt8's own pool; returns whether they now are (False on builds without OpenMP).");
  m.def("cutlass_sm90_built", &lt8::cutlass_sm90_built,
        "True when this build carries the Hopper outlier GEMM built from CUTLASS's headers.");
  m.def("small_batch_rows", &lt8::small_batch_rows,
        "Rows up to which the fused linear op takes the GPU's decode GEMV.");
  m.def(
      "cuda_archs", [] { return std::string(lt8::cuda_archs()); },
      "CUDA architectures compiled in, e.g. '75,80,86,89,90' ('' without CUDA).");
  m.def(
      "cublaslt_available", &lt8::cublaslt_available,
      "True when the CUDA kernels can use cuBLASLt's int8 tensor-core GEMM (loaded at run time).");
  m.def("set_cublaslt_enabled", &lt8::set_cublaslt_enabled, nb::arg("enabled"),
        "Lets (True, default) or stops (False) the CUDA kernels using cuBLASLt; for "
        "tests/benchmarks.");
  m.def("set_cpu_threads", &lt8::set_cpu_threads, nb::arg("n"),
        "Threads of the CPU kernels: n > 0 uses n; n <= 0 restores the default (OMP_NUM_THREADS, "
        "else the process's CPU affinity).");
  m.def("cpu_threads", &lt8::cpu_threads, "Threads the next CPU kernel call will use.");
  m.def(
      "cpu_isa", [] { return std::string(lt8::cpu_isa()); },
      "Instruction set of the CPU kernels now: scalar, neondot, avx2, avxvnni, avx512vnni or amx "
      "(detected, lowered by LT8_CPU_ISA).");
  m.def("has_ffi", [] {
#ifdef LT8_WITH_FFI
    return true;
#else
    return false;
#endif
  });

#define LT8_OP(name, Camel) def_op(m, #name, &lt8::name);
#include "ops.def"
  m.def(
      "ops",
      [] {
        nb::dict d;
        for (const auto& [name, arity] : op_table()) d[name] = arity;
        return d;
      },
      "The pointer entry points of cuda/ops.def: {name: number of arguments}, in list order.");

  m.def(
      "layout_padded_shape",
      [](int layout, int64_t rows, int64_t cols) {
        int64_t pr = 0, pc = 0;
        lt8::layout_padded_shape(PyArg<Layout>::from(layout), rows, cols, &pr, &pc);
        return std::make_tuple(pr, pc);
      },
      nb::arg("layout"), nb::arg("rows"), nb::arg("cols"),
      "(padded_rows, padded_cols) of a (rows, cols) int8 matrix stored in `layout`.");

  m.def(
      "layout_offsets",
      [](int layout, int64_t rows, int64_t cols) {
        const Layout l = PyArg<Layout>::from(layout);
        if (rows < 0 || cols < 0)
          throw std::invalid_argument("rows and cols must be >= 0, got " + std::to_string(rows) +
                                      " and " + std::to_string(cols));
        int64_t padded_rows = 0;
        lt8::layout_padded_shape(l, rows, cols, &padded_rows, nullptr);
        auto* data = new int64_t[static_cast<size_t>(rows * cols)];
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c)
            data[r * cols + c] = lt8::layout_offset(l, r, c, cols, padded_rows);
        nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<int64_t*>(p); });
        return nb::ndarray<nb::numpy, int64_t, nb::ndim<2>>(
            data, {static_cast<size_t>(rows), static_cast<size_t>(cols)}, owner);
      },
      nb::arg("layout"), nb::arg("rows"), nb::arg("cols"),
      "int64 (rows, cols) numpy array: the byte offset of each element of a (rows, cols) int8 "
      "matrix in the buffer of `layout` (cuda/layout_offsets.h, the kernels' formula).");

  m.def(
      "linear_workspace_size",
      [](int64_t M, int64_t N, int64_t K, int dtype, float threshold, int device) {
        return lt8::int8_linear_workspace_size(M, N, K, PyArg<DType>::from(dtype), threshold,
                                               checked_code<Device>(device, "device", "Device"));
      },
      nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("dtype"), nb::arg("threshold"),
      nb::arg("device"),
      "Bytes of scratch the fused linear op needs for (M, N, K), x's dtype code, the threshold "
      "and the device code (Device.CUDA's size serves every device).");
  m.def(
      "outlier_terms_workspace_size",
      [](int64_t M, int64_t N, int64_t K, int dtype, int device) {
        return lt8::add_outlier_terms_workspace_size(
            M, N, K, PyArg<DType>::from(dtype), checked_code<Device>(device, "device", "Device"));
      },
      nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("dtype"), nb::arg("device"),
      "Bytes of scratch add_outlier_terms needs for (M, N, K), x's dtype code and the device "
      "code (Device.CUDA's size serves every device).");

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
