// Thin XLA FFI adapters over the cuda/ launch API, shared by the cpu and CUDA handler files.
// Each op of cuda/ops.def is one <Camel>Impl function taking an lt8::Exec plus decoded buffers,
// and one Bind<Camel> binder that declares its buffers and attributes. The platform files define
// a handler per op from the list; they only add the stream and the traits.
// Leading dimensions of an activation are batch dimensions: M is their product.
#pragma once

#include <cstdint>
#include <string>

#include "lt8.h"
#include "xla/ffi/api/ffi.h"

namespace lt8::ffi {

namespace xffi = ::xla::ffi;
using xffi::AnyBuffer;
using xffi::Buffer;
using xffi::Result;

inline xffi::Error to_error(const Status& s) {
  if (s.ok()) return xffi::Error::Success();
  auto code = s.code == Code::kInvalidArgument ? xffi::ErrorCode::kInvalidArgument
                                               : xffi::ErrorCode::kInternal;
  return xffi::Error(code, "lt8: " + s.message);
}

inline xffi::Error invalid(const std::string& m) {
  return xffi::Error::InvalidArgument("lt8: " + m);
}

inline bool float_dtype(xffi::DataType t, DType* out) {
  switch (t) {
    case xffi::DataType::F32:
      *out = DType::kF32;
      return true;
    case xffi::DataType::F16:
      *out = DType::kF16;
      return true;
    case xffi::DataType::BF16:
      *out = DType::kBF16;
      return true;
    default:
      return false;
  }
}

// (M, K) view of an array whose last dimension is K and leading dimensions are batch.
struct Rows {
  int64_t M = 1, K = 0;
};
inline Rows as_rows(const AnyBuffer::Dimensions& dims) {
  Rows r;
  if (dims.size() == 0) return r;
  r.K = dims.back();
  for (size_t i = 0; i + 1 < dims.size(); ++i) r.M *= dims[i];
  return r;
}

#define LT8_FFI_TRY(expr)                            \
  do {                                               \
    ::lt8::Status _st = (expr);                      \
    if (!_st.ok()) return ::lt8::ffi::to_error(_st); \
  } while (0)

// --- quantize_rows: x (..., K) -> q (..., K) s8, row_scale (...) f32, mask (K,) u8 ---------
inline xffi::Error QuantizeRowsImpl(const Exec& ex, AnyBuffer x, Result<Buffer<xffi::S8>> q,
                                    Result<Buffer<xffi::F32>> row_scale,
                                    Result<Buffer<xffi::U8>> mask, float threshold) {
  DType dt;
  if (!float_dtype(x.element_type(), &dt)) return invalid("x must be float32, float16 or bfloat16");
  Rows r = as_rows(x.dimensions());
  if (q->element_count() != size_t(r.M * r.K) || row_scale->element_count() != size_t(r.M) ||
      mask->element_count() != size_t(r.K))
    return invalid("quantize_rows: output shapes do not match x");
  LT8_FFI_TRY(quantize_rows(ex, dt, x.untyped_data(), r.M, r.K, threshold, q->typed_data(),
                            row_scale->typed_data(), mask->typed_data()));
  return xffi::Error::Success();
}
template <typename B>
auto BindQuantizeRows(B b) {
  return std::move(b)
      .template Arg<AnyBuffer>()
      .template Ret<Buffer<xffi::S8>>()
      .template Ret<Buffer<xffi::F32>>()
      .template Ret<Buffer<xffi::U8>>()
      .template Attr<float>("threshold");
}

// --- dequantize_rows: q (..., K) s8, row_scale (...) f32 -> out (..., K) float ------------
inline xffi::Error DequantizeRowsImpl(const Exec& ex, Buffer<xffi::S8> q,
                                      Buffer<xffi::F32> row_scale, Result<AnyBuffer> out) {
  DType dt;
  if (!float_dtype(out->element_type(), &dt)) return invalid("out must be a float dtype");
  Rows r = as_rows(q.dimensions());
  if (row_scale.element_count() != size_t(r.M) || out->element_count() != size_t(r.M * r.K))
    return invalid("dequantize_rows: shapes do not match");
  LT8_FFI_TRY(dequantize_rows(ex, q.typed_data(), row_scale.typed_data(), r.M, r.K, dt,
                              out->untyped_data()));
  return xffi::Error::Success();
}
template <typename B>
auto BindDequantizeRows(B b) {
  return std::move(b)
      .template Arg<Buffer<xffi::S8>>()
      .template Arg<Buffer<xffi::F32>>()
      .template Ret<AnyBuffer>();
}

// --- int8_gemm: A (..., K) s8, B (N, K) s8 -> C (..., N) s32 ---------------------------------
inline xffi::Error Int8GemmImpl(const Exec& ex, Buffer<xffi::S8> a, Buffer<xffi::S8, 2> b,
                                Result<Buffer<xffi::S32>> c) {
  Rows r = as_rows(a.dimensions());
  int64_t N = b.dimensions()[0];
  if (b.dimensions()[1] != r.K) return invalid("int8_gemm: A and B disagree on K");
  if (c->element_count() != size_t(r.M * N)) return invalid("int8_gemm: C has the wrong shape");
  LT8_FFI_TRY(int8_gemm(ex, a.typed_data(), b.typed_data(), r.M, N, r.K, c->typed_data()));
  return xffi::Error::Success();
}
template <typename B>
auto BindInt8Gemm(B b) {
  return std::move(b)
      .template Arg<Buffer<xffi::S8>>()
      .template Arg<Buffer<xffi::S8, 2>>()
      .template Ret<Buffer<xffi::S32>>();
}

// --- dequant_epilogue: C (..., N) s32, row_scale (...), col_scale (N,), bias (N,) or (0,) ---
inline xffi::Error DequantEpilogueImpl(const Exec& ex, Buffer<xffi::S32> c,
                                       Buffer<xffi::F32> row_scale, Buffer<xffi::F32> col_scale,
                                       AnyBuffer bias, Result<AnyBuffer> out) {
  DType dt, bt = DType::kF32;
  if (!float_dtype(out->element_type(), &dt)) return invalid("out must be a float dtype");
  Rows r = as_rows(c.dimensions());
  bool has_bias = bias.element_count() > 0;
  if (has_bias && !float_dtype(bias.element_type(), &bt)) return invalid("bias must be float");
  if (row_scale.element_count() != size_t(r.M) || col_scale.element_count() != size_t(r.K) ||
      (has_bias && bias.element_count() != size_t(r.K)) ||
      out->element_count() != size_t(r.M * r.K))
    return invalid("dequant_epilogue: shapes do not match");
  LT8_FFI_TRY(dequant_epilogue(ex, c.typed_data(), row_scale.typed_data(), col_scale.typed_data(),
                               bt, has_bias ? bias.untyped_data() : nullptr, r.M, r.K, dt,
                               out->untyped_data()));
  return xffi::Error::Success();
}
template <typename B>
auto BindDequantEpilogue(B b) {
  return std::move(b)
      .template Arg<Buffer<xffi::S32>>()
      .template Arg<Buffer<xffi::F32>>()
      .template Arg<Buffer<xffi::F32>>()
      .template Arg<AnyBuffer>()
      .template Ret<AnyBuffer>();
}

// --- transform_layout: 2-D int8 between row-major and a tiled order -------------------------
// Attributes give the logical shape; buffers are flat (padded for the tiled side).
inline xffi::Error TransformLayoutImpl(const Exec& ex, Buffer<xffi::S8> in,
                                       Result<Buffer<xffi::S8>> out, int64_t rows, int64_t cols,
                                       int32_t from, int32_t to) {
  if (!is_valid(static_cast<Layout>(from)) || !is_valid(static_cast<Layout>(to)))
    return invalid("unknown layout code");
  auto bytes = [&](int32_t layout) {
    int64_t pr = rows, pc = cols;
    layout_padded_shape(static_cast<Layout>(layout), rows, cols, &pr, &pc);
    return size_t(pr * pc);
  };
  if (in.element_count() != bytes(from) || out->element_count() != bytes(to))
    return invalid("transform_layout: buffer sizes do not match the logical shape");
  LT8_FFI_TRY(transform_layout(ex, in.typed_data(), out->typed_data(), rows, cols,
                               static_cast<Layout>(from), static_cast<Layout>(to)));
  return xffi::Error::Success();
}
template <typename B>
auto BindTransformLayout(B b) {
  return std::move(b)
      .template Arg<Buffer<xffi::S8>>()
      .template Ret<Buffer<xffi::S8>>()
      .template Attr<int64_t>("rows")
      .template Attr<int64_t>("cols")
      .template Attr<int32_t>("from_layout")
      .template Attr<int32_t>("to_layout");
}

// --- int8_linear: the fused op. x (..., K), CB (N, K), SCB (N,), bias (N,) or (0,) ----------
// Returns out (..., N) in x's dtype and the workspace (scratch, sized by the caller).
inline xffi::Error Int8LinearImpl(const Exec& ex, AnyBuffer x, Buffer<xffi::S8, 2> cb,
                                  Buffer<xffi::F32, 1> scb, AnyBuffer bias, Result<AnyBuffer> out,
                                  Result<Buffer<xffi::U8>> workspace, float threshold) {
  DType dt, bt = DType::kF32;
  if (!float_dtype(x.element_type(), &dt)) return invalid("x must be float32, float16 or bfloat16");
  if (out->element_type() != x.element_type()) return invalid("out must have x's dtype");
  Rows r = as_rows(x.dimensions());
  int64_t N = cb.dimensions()[0];
  bool has_bias = bias.element_count() > 0;
  if (has_bias && !float_dtype(bias.element_type(), &bt)) return invalid("bias must be float");
  if (cb.dimensions()[1] != r.K) return invalid("int8_linear: x and CB disagree on K");
  if (scb.element_count() != size_t(N) || (has_bias && bias.element_count() != size_t(N)) ||
      out->element_count() != size_t(r.M * N))
    return invalid("int8_linear: shapes do not match");
  LT8_FFI_TRY(int8_linear(ex, dt, x.untyped_data(), cb.typed_data(), scb.typed_data(), bt,
                          has_bias ? bias.untyped_data() : nullptr, r.M, N, r.K, threshold,
                          out->untyped_data(), workspace->untyped_data(), workspace->size_bytes()));
  return xffi::Error::Success();
}
template <typename B>
auto BindInt8Linear(B b) {
  return std::move(b)
      .template Arg<AnyBuffer>()
      .template Arg<Buffer<xffi::S8, 2>>()
      .template Arg<Buffer<xffi::F32, 1>>()
      .template Arg<AnyBuffer>()
      .template Ret<AnyBuffer>()
      .template Ret<Buffer<xffi::U8>>()
      .template Attr<float>("threshold");
}

// --- int8_weight_linear: weight-only path; x (..., K), CB (N, K), SCB (N,), bias or (0,) ---
inline xffi::Error Int8WeightLinearImpl(const Exec& ex, AnyBuffer x, Buffer<xffi::S8, 2> cb,
                                        Buffer<xffi::F32, 1> scb, AnyBuffer bias,
                                        Result<AnyBuffer> out) {
  DType dt, bt = DType::kF32;
  if (!float_dtype(x.element_type(), &dt)) return invalid("x must be float32, float16 or bfloat16");
  if (out->element_type() != x.element_type()) return invalid("out must have x's dtype");
  Rows r = as_rows(x.dimensions());
  int64_t N = cb.dimensions()[0];
  bool has_bias = bias.element_count() > 0;
  if (has_bias && !float_dtype(bias.element_type(), &bt)) return invalid("bias must be float");
  if (cb.dimensions()[1] != r.K || scb.element_count() != size_t(N) ||
      (has_bias && bias.element_count() != size_t(N)) || out->element_count() != size_t(r.M * N))
    return invalid("int8_weight_linear: shapes do not match");
  LT8_FFI_TRY(int8_weight_linear(ex, dt, x.untyped_data(), cb.typed_data(), scb.typed_data(), bt,
                                 has_bias ? bias.untyped_data() : nullptr, r.M, N, r.K,
                                 out->untyped_data()));
  return xffi::Error::Success();
}
template <typename B>
auto BindInt8WeightLinear(B b) {
  return std::move(b)
      .template Arg<AnyBuffer>()
      .template Arg<Buffer<xffi::S8, 2>>()
      .template Arg<Buffer<xffi::F32, 1>>()
      .template Arg<AnyBuffer>()
      .template Ret<AnyBuffer>();
}

// --- int8_linear_grad_input: grad_out (..., N), CB (N, K), SCB (N,) -> grad_x (..., K) ------
inline xffi::Error Int8LinearGradInputImpl(const Exec& ex, AnyBuffer g, Buffer<xffi::S8, 2> cb,
                                           Buffer<xffi::F32, 1> scb, Result<AnyBuffer> grad_x) {
  DType dt;
  if (!float_dtype(g.element_type(), &dt)) return invalid("grad_out must be a float dtype");
  if (grad_x->element_type() != g.element_type()) return invalid("grad_x must have grad's dtype");
  Rows r = as_rows(g.dimensions());  // r.K is N here
  int64_t N = cb.dimensions()[0], K = cb.dimensions()[1];
  if (r.K != N || scb.element_count() != size_t(N) || grad_x->element_count() != size_t(r.M * K))
    return invalid("int8_linear_grad_input: shapes do not match");
  LT8_FFI_TRY(int8_linear_grad_input(ex, dt, g.untyped_data(), cb.typed_data(), scb.typed_data(),
                                     r.M, N, K, grad_x->untyped_data()));
  return xffi::Error::Success();
}
template <typename B>
auto BindInt8LinearGradInput(B b) {
  return std::move(b)
      .template Arg<AnyBuffer>()
      .template Arg<Buffer<xffi::S8, 2>>()
      .template Arg<Buffer<xffi::F32, 1>>()
      .template Ret<AnyBuffer>();
}

// --- add_outlier_terms: x (..., K), mask (K,) u8, CB (N, K), SCB (N,), base (..., N) f32 -------
inline xffi::Error AddOutlierTermsImpl(const Exec& ex, AnyBuffer x, Buffer<xffi::U8, 1> mask,
                                       Buffer<xffi::S8, 2> cb, Buffer<xffi::F32, 1> scb,
                                       Buffer<xffi::F32> base, Result<Buffer<xffi::F32>> out,
                                       Result<Buffer<xffi::U8>> workspace) {
  DType dt;
  if (!float_dtype(x.element_type(), &dt)) return invalid("x must be float32, float16 or bfloat16");
  Rows r = as_rows(x.dimensions());
  int64_t N = cb.dimensions()[0];
  if (cb.dimensions()[1] != r.K || mask.element_count() != size_t(r.K) ||
      scb.element_count() != size_t(N) || base.element_count() != size_t(r.M * N) ||
      out->element_count() != size_t(r.M * N))
    return invalid("add_outlier_terms: shapes do not match");
  LT8_FFI_TRY(add_outlier_terms(ex, dt, x.untyped_data(), mask.typed_data(), cb.typed_data(),
                                scb.typed_data(), base.typed_data(), r.M, N, r.K, out->typed_data(),
                                workspace->untyped_data(), workspace->size_bytes()));
  return xffi::Error::Success();
}
template <typename B>
auto BindAddOutlierTerms(B b) {
  return std::move(b)
      .template Arg<AnyBuffer>()
      .template Arg<Buffer<xffi::U8, 1>>()
      .template Arg<Buffer<xffi::S8, 2>>()
      .template Arg<Buffer<xffi::F32, 1>>()
      .template Arg<Buffer<xffi::F32>>()
      .template Ret<Buffer<xffi::F32>>()
      .template Ret<Buffer<xffi::U8>>();
}

}  // namespace lt8::ffi
