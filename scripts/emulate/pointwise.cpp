// Host emulation of the pointwise kernels (kernels/elementwise.cu, shape.cu, pool.cu) on
// host_cuda.h: each kernel launched as its launcher in src/backend/cuda/{elementwise,shape,pool}.rs
// launches it, against plain loops that mirror the CPU backend (src/backend/cpu). The emulated
// device has one multiprocessor: grid_for then caps a launch at 16 blocks, so launches over more than
// 4,096 elements grid-stride, and the run stays short (each block starts 256 threads). Outputs start
// as NaN and every buffer lies between guards: an unwritten element, a read outside an operand and a
// write past the output all show.
#include <cfloat>
#include <initializer_list>

#include "host_cuda.h"

#include "elementwise.cu"
#include "pool.cu"
#include "shape.cu"

using Shape = std::vector<int64_t>;

constexpr unsigned BLOCK = 256;  // src/backend/cuda/elementwise.rs
constexpr unsigned MULTIPROCESSORS = 1;
constexpr size_t GUARD = 5;
constexpr uint32_t GUARD_BITS = 0x7fc0bad0;  // a NaN that no kernel writes

// grid_for (src/backend/cuda/elementwise.rs): blocks of 256 for n elements, at most 16 per
// multiprocessor; every launcher here uses it with n the number of elements it launches over.
template <class F>
void launch_for(int64_t n, F kernel) {
  const int64_t blocks = std::clamp<int64_t>((n + BLOCK - 1) / BLOCK, 1, 16 * MULTIPROCESSORS);
  emu::launch({(unsigned)blocks, 1, 1}, {BLOCK, 1, 1}, kernel);
}

// A device allocation: its floats between guards of a NaN no kernel writes, so that a read outside
// it gives NaN where a number is expected and a write outside it shows in `values`.
class Buffer {
 public:
  explicit Buffer(const std::vector<float>& v) : mem_(v.size() + 2 * GUARD, __uint_as_float(GUARD_BITS)), n_(v.size()) {
    std::copy(v.begin(), v.end(), mem_.begin() + GUARD);
  }
  // An output, poisoned with NaN so that an element no thread writes fails the comparison.
  static Buffer poisoned(int64_t n) { return Buffer(std::vector<float>((size_t)n, NAN)); }
  float* data() { return mem_.data() + GUARD; }
  std::vector<float> values(const std::string& what) const {
    for (size_t i = 0; i < GUARD; ++i)
      if (__float_as_uint(mem_[i]) != GUARD_BITS || __float_as_uint(mem_[GUARD + n_ + i]) != GUARD_BITS) {
        ++emu::failures;
        printf("FAIL %s: a write outside the output\n", what.c_str());
        break;
      }
    return {mem_.begin() + GUARD, mem_.begin() + GUARD + n_};
  }

 private:
  std::vector<float> mem_;
  size_t n_;
};

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(emu::rng); }
int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(emu::rng); }
float sign() { return pick(2) ? 1.0f : -1.0f; }

// emu::randn with −0 at every `every`-th element: copies must keep the sign.
std::vector<float> randn_with_negative_zeros(int64_t n, int every) {
  auto v = emu::randn((size_t)n);
  for (size_t i = 0; i < v.size(); i += every) v[i] = -0.0f;
  return v;
}

std::vector<double> widened(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ---- elementwise.cu ----

void test_fill(int64_t n, float value) {
  const std::string what = "fill " + std::to_string(n) + " with " + std::to_string(value);
  Buffer out = Buffer::poisoned(n);
  if (n > 0) launch_for(n, [&] { elementwise_fill_fwd_f32(out.data(), value, n); });
  emu::compare_bits(what, out.values(what), std::vector<float>((size_t)n, value));
}

// UnaryParams::new (src/backend/cuda/params.rs) for the ops and parameters of tests/elementwise.rs.
struct UnaryCase {
  const char* name;
  int32_t op;
  float a, b;
};
const UnaryCase UNARY[] = {
    {"affine", UNARY_AFFINE, 1.7f, -0.3f},
    {"exp", UNARY_EXP, 0, 0},
    {"log", UNARY_LOG, 0, 0},
    {"sqrt", UNARY_SQRT, 0, 0},
    {"rsqrt", UNARY_RSQRT, 0, 0},
    {"recip", UNARY_RECIP, 0, 0},
    {"square", UNARY_SQUARE, 0, 0},
    {"relu", UNARY_RELU, 0, 0},
    {"leaky_relu", UNARY_LEAKY_RELU, 0.2f, 0},
    {"sigmoid", UNARY_SIGMOID, 0, 0},
    {"tanh", UNARY_TANH, 0, 0},
    {"relu_mask", UNARY_RELU_MASK, 0, 0},
    {"leaky_relu_mask", UNARY_LEAKY_RELU_MASK, 0.2f, 0},
    {"clip_factor", UNARY_CLIP_FACTOR, 1.1f, 0},
};

// Whether the device gives the CPU's bits. tests/elementwise.rs compares every op within
// F32_ELEMENTWISE (1e-6): exp, log, tanh and the sigmoid are CUDA's own functions, and nvcc may fuse
// the affine map's a·x + b into an FMA, so those are compared within that tolerance; the others are
// one correctly rounded IEEE operation, a comparison or a selection on both sides, so bit for bit.
bool unary_exact(int32_t op) {
  return op != UNARY_AFFINE && op != UNARY_EXP && op != UNARY_LOG && op != UNARY_SIGMOID && op != UNARY_TANH;
}

// src/dp/rounding.rs's f32_toward_zero: the nearest float, one step back toward zero if it is past
// x (bits, not the FPU's rounding mode that host_cuda.h's __double2float_rz uses).
float f32_toward_zero_ref(double x) {
  float y = (float)x;
  if (std::fabs((double)y) > std::fabs(x)) {
    uint32_t bits;
    std::memcpy(&bits, &y, 4);
    bits -= 1;
    std::memcpy(&y, &bits, 4);
  }
  return y;
}

// src/backend/cpu/elementwise.rs's unary_map in f32.
float unary_ref(const UnaryCase& u, float x) {
  switch (u.op) {
    case UNARY_AFFINE: return u.a * x + u.b;
    case UNARY_EXP: return expf(x);
    case UNARY_LOG: return logf(x);
    case UNARY_SQRT: return sqrtf(x);
    case UNARY_RSQRT: return 1.0f / sqrtf(x);
    case UNARY_RECIP: return 1.0f / x;
    case UNARY_SQUARE: return x * x;
    // f32::max(x, 0): 0 for NaN. Which zero max(−0, 0) gives is unspecified: no −0 among the inputs.
    case UNARY_RELU: return x > 0.0f ? x : 0.0f;
    case UNARY_LEAKY_RELU: return x > 0.0f ? x : u.a * x;
    case UNARY_SIGMOID: {
      if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
      const float e = expf(x);
      return e / (1.0f + e);
    }
    case UNARY_TANH: return tanhf(x);
    case UNARY_RELU_MASK: return x > 0.0f ? 1.0f : 0.0f;
    case UNARY_LEAKY_RELU_MASK: return x > 0.0f ? 1.0f : u.a;
    case UNARY_CLIP_FACTOR: {
      if (!std::isfinite(x)) return NAN;
      const double norm = std::sqrt((double)std::max(x, 0.0f));
      return norm <= (double)u.a ? 1.0f : f32_toward_zero_ref((double)u.a / norm);
    }
  }
  return NAN;
}

// Inputs in the op's domain, drawn as tests/elementwise.rs draws them (exact zeros and large values
// sprinkled in); NaN, ±inf and a negative value too where the result is compared bit for bit.
std::vector<float> unary_input(int32_t op, int64_t n) {
  std::vector<float> x((size_t)n);
  const float specials[] = {NAN, INFINITY, -INFINITY, -2.5f};
  for (int64_t i = 0; i < n; ++i) {
    float& v = x[i];
    if (op == UNARY_LOG || op == UNARY_SQRT || op == UNARY_RSQRT) v = uniform(1e-3f, 50.0f);
    else if (op == UNARY_RECIP) v = uniform(0.05f, 4.0f) * sign();
    else if (op == UNARY_EXP) v = uniform(-20.0f, 20.0f);
    else if (op == UNARY_CLIP_FACTOR) {
      const int k = pick(6);  // squared norms: zeros, far past the bound C² = 1.21, near it
      v = k == 0 ? 0.0f : k == 1 ? uniform(0.0f, 1e6f) : uniform(0.0f, 5.0f);
    } else {
      const int k = pick(10);
      v = k == 0 ? 0.0f : k == 1 ? uniform(-60.0f, 60.0f) : uniform(-4.0f, 4.0f);
    }
    if (unary_exact(op) && i % 61 == 17) v = specials[i / 61 % 4];
  }
  return x;
}

// unary in src/backend/cuda/elementwise.rs: no launch for an empty tensor.
std::vector<float> unary(const UnaryCase& u, const std::vector<float>& x, const std::string& what) {
  const int64_t n = (int64_t)x.size();
  Buffer xb(x), y = Buffer::poisoned(n);
  if (n > 0) {
    const UnaryParams p{n, u.op, u.a, u.b, 0};
    launch_for(n, [&] { elementwise_unary_fwd_f32(p, xb.data(), y.data()); });
  }
  return y.values(what);
}

void test_unary(const UnaryCase& u, int64_t n) {
  const std::string what = std::string("unary ") + u.name + " n " + std::to_string(n);
  const auto x = unary_input(u.op, n);
  std::vector<float> want(x.size());
  std::transform(x.begin(), x.end(), want.begin(), [&](float v) { return unary_ref(u, v); });
  const auto got = unary(u, x, what);
  if (unary_exact(u.op)) emu::compare_bits(what, got, want);
  else emu::compare(what, got, widened(want), 1e-6);
}

// binary_code (params.rs) for the ops and slopes of tests/elementwise.rs.
struct BinaryCase {
  const char* name;
  int32_t op;
  float scalar;
};
const BinaryCase BINARY[] = {
    {"add", BINARY_ADD, 0},
    {"sub", BINARY_SUB, 0},
    {"mul", BINARY_MUL, 0},
    {"div", BINARY_DIV, 0},
    {"bce_with_logits", BINARY_BCE_WITH_LOGITS, 0},
    {"leaky_relu_grad 0", BINARY_LEAKY_RELU_GRAD, 0.0f},
    {"leaky_relu_grad 0.2", BINARY_LEAKY_RELU_GRAD, 0.2f},
    {"tanh_grad", BINARY_TANH_GRAD, 0},
    {"sigmoid_grad", BINARY_SIGMOID_GRAD, 0},
};

// As unary_exact: BCE calls CUDA's expf and log1pf and nvcc may fuse max(a, 0) − a·b, so it is
// compared within tests/elementwise.rs's F32_ELEMENTWISE; every other op is IEEE products and
// differences (tanh_grad's b² rounded on its own) or a selection, so bit for bit.
bool binary_exact(int32_t op) { return op != BINARY_BCE_WITH_LOGITS; }

// src/backend/cpu/elementwise.rs's binary_scalar in f32 (and broadcast_copy's copy for FIRST).
float binary_ref(const BinaryCase& c, float a, float b) {
  switch (c.op) {
    case BINARY_ADD: return a + b;
    case BINARY_SUB: return a - b;
    case BINARY_MUL: return a * b;
    case BINARY_DIV: return a / b;
    case BINARY_BCE_WITH_LOGITS: return std::fmax(a, 0.0f) - a * b + log1pf(expf(-fabsf(a)));
    case BINARY_LEAKY_RELU_GRAD: return b > 0.0f ? a : a * c.scalar;
    case BINARY_FIRST: return a;
    case BINARY_TANH_GRAD: return a * (1.0f - b * b);
    case BINARY_SIGMOID_GRAD: return a * (b * (1.0f - b));
  }
  return NAN;
}

// Operands drawn as tests/elementwise.rs's binary_inputs: divisors away from 0, BCE logits up to
// ±1e4 and targets in [0, 1], zeros at the leaky ReLU's b > 0 boundary, tanh and sigmoid outputs with
// their ends.
std::vector<float> binary_operand(int32_t op, bool second, int64_t n) {
  std::vector<float> v((size_t)n);
  for (float& e : v) {
    if (op == BINARY_DIV && second) e = uniform(0.25f, 4.0f) * sign();
    else if (op == BINARY_BCE_WITH_LOGITS && !second) {
      const int k = pick(4);
      e = k == 0 ? uniform(-1e4f, 1e4f) : k == 1 ? uniform(-120.0f, 120.0f) : uniform(-6.0f, 6.0f);
    } else if ((op == BINARY_BCE_WITH_LOGITS || op == BINARY_SIGMOID_GRAD) && second)
      e = pick(8) ? uniform(0.0f, 1.0f) : (float)pick(2);
    else if (op == BINARY_TANH_GRAD && second) e = pick(8) ? uniform(-1.0f, 1.0f) : sign();
    else if (op == BINARY_LEAKY_RELU_GRAD && second) e = pick(8) ? uniform(-3.0f, 3.0f) : 0.0f;
    else e = uniform(-3.0f, 3.0f);
  }
  return v;
}

// broadcast_shape (src/backend/ops.rs): numpy's, aligned on the right; the shapes given broadcast.
Shape broadcast_shape(const Shape& a, const Shape& b) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i + a.size() >= rank ? a[i + a.size() - rank] : 1;
    const int64_t db = i + b.size() >= rank ? b[i + b.size() - rank] : 1;
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// broadcast_strides (src/backend/cpu/elementwise.rs), as the launcher fills BinaryParams with it.
Shape broadcast_strides(const Shape& shape, const Shape& out) {
  const size_t lead = out.size() - shape.size();
  Shape strides(out.size(), 0);
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[lead + i] = shape[i] == 1 ? 0 : stride;
    stride *= shape[i];
  }
  return strides;
}

// launch_binary (src/backend/cuda/elementwise.rs): the same-shape kernel when both operands have
// the output's shape, else the broadcast one; no launch for an empty output.
std::vector<float> launch_binary(int32_t op, float scalar, const std::vector<float>& a, const Shape& a_shape,
                                 const std::vector<float>& b, const Shape& b_shape, const Shape& out_shape,
                                 const std::string& what) {
  const int64_t n = numel(out_shape);
  Buffer ab(a), bb(b), out = Buffer::poisoned(n);
  if (n > 0) {
    BinaryParams p{n, op, (int32_t)out_shape.size(), scalar, 0, {}, {}, {}};
    const Shape sa = broadcast_strides(a_shape, out_shape), sb = broadcast_strides(b_shape, out_shape);
    for (size_t d = 0; d < out_shape.size(); ++d) {
      p.shape[d] = out_shape[d];
      p.a_strides[d] = sa[d];
      p.b_strides[d] = sb[d];
    }
    if (a_shape == out_shape && b_shape == out_shape)
      launch_for(n, [&] { elementwise_binary_same_fwd_f32(p, ab.data(), bb.data(), out.data()); });
    else
      launch_for(n, [&] { elementwise_binary_broadcast_fwd_f32(p, ab.data(), bb.data(), out.data()); });
  }
  return out.values(what);
}

// tests/elementwise.rs's broadcast_index: the element of an operand of `shape` that output element
// `flat` reads (aligned on the right, index 0 on the operand's size-1 dims).
int64_t operand_index(const Shape& out, int64_t flat, const Shape& shape) {
  const size_t lead = out.size() - shape.size();
  Shape index(out.size());
  for (size_t d = out.size(); d-- > 0;) {
    index[d] = flat % out[d];
    flat /= out[d];
  }
  int64_t offset = 0;
  for (size_t d = 0; d < shape.size(); ++d) offset = offset * shape[d] + (shape[d] == 1 ? 0 : index[lead + d]);
  return offset;
}

std::vector<float> binary_ref_all(const BinaryCase& c, const std::vector<float>& a, const Shape& a_shape,
                                  const std::vector<float>& b, const Shape& b_shape, const Shape& out) {
  std::vector<float> want((size_t)numel(out));
  for (int64_t i = 0; i < (int64_t)want.size(); ++i)
    want[i] = binary_ref(c, a[operand_index(out, i, a_shape)], b[operand_index(out, i, b_shape)]);
  return want;
}

void test_binary(const BinaryCase& c, const Shape& a_shape, const Shape& b_shape) {
  const Shape out = broadcast_shape(a_shape, b_shape);
  const std::string what = std::string("binary ") + c.name + " " + str(a_shape) + " with " + str(b_shape);
  const auto a = binary_operand(c.op, false, numel(a_shape)), b = binary_operand(c.op, true, numel(b_shape));
  const auto want = binary_ref_all(c, a, a_shape, b, b_shape, out);
  const auto got = launch_binary(c.op, c.scalar, a, a_shape, b, b_shape, out, what);
  if (binary_exact(c.op)) emu::compare_bits(what, got, want);
  else emu::compare(what, got, widened(want), 1e-6);
}

// broadcast_to: the binary kernels with FIRST and b = a, each value copied bit for bit (as
// tests/elementwise.rs requires), −0, NaN, ±inf and subnormals included.
void test_broadcast_to(const Shape& shape, const Shape& out) {
  const std::string what = "broadcast_to " + str(shape) + " to " + str(out);
  const float specials[] = {-0.0f, NAN, INFINITY, -INFINITY, FLT_MIN / 4};
  std::vector<float> x((size_t)numel(shape));
  for (size_t i = 0; i < x.size(); ++i) x[i] = i % 3 ? uniform(-3.0f, 3.0f) : specials[i / 3 % 5];
  const BinaryCase first{"first", BINARY_FIRST, 0};
  emu::compare_bits(what, launch_binary(BINARY_FIRST, 0, x, shape, x, shape, out, what),
                    binary_ref_all(first, x, shape, x, shape, out));
}

// tests/elementwise.rs's broadcast pairs (equal, either way, across ranks, scalars, size-1 dims,
// empty), rank 0 against rank 0 and 1, the kernels' largest rank, and two that grid-stride.
std::vector<std::pair<Shape, Shape>> broadcast_pairs() {
  const int64_t g = 3, b = 5, f = 33;
  return {
      {{g, b, f}, {g, b, f}},
      {{g, b, f}, {f}},
      {{f}, {g, b, f}},
      {{g, 1, f}, {g, b, 1}},
      {{g, b, 1}, {1, 1, f}},
      {{1, b, 1, 3}, {g, 1, f, 1}},
      {{}, {g, b, f}},
      {{g, b, f}, {1}},
      {{1, 1, 1}, {1}},
      {{g, 0, f}, {f}},
      {{g, 0, f}, {g, 0, f}},
      {{}, {}},
      {{1}, {}},
      {{2, 1, 3, 1, 2, 1, 1, 3}, {3, 1, 1, 2, 2, 3}},
      {{2, 3, 1, 2, 1, 3, 2, 1}, {1, 3, 2, 1, 3, 1, 2, 2}},
      {{3, 23, 70}, {3, 1, 70}},
      {{4500}, {4500}},
  };
}

// ---- shape.cu ----

struct Axis {
  int64_t outer, dim, inner;
};

Axis split(const Shape& s, size_t axis) {
  Axis a{1, s[axis], 1};
  for (size_t d = 0; d < axis; ++d) a.outer *= s[d];
  for (size_t d = axis + 1; d < s.size(); ++d) a.inner *= s[d];
  return a;
}

// narrow in src/backend/cuda/shape.rs.
std::vector<float> narrow(const std::vector<float>& x, const Shape& s, size_t axis, int64_t start, int64_t len,
                          const std::string& what) {
  const Axis a = split(s, axis);
  const int64_t n = a.outer * len * a.inner;
  Buffer xb(x), out = Buffer::poisoned(n);
  if (n > 0) {
    const AxisCopyParams p{n, a.inner, a.dim, len, start, 0, len};
    launch_for(n, [&] { shape_narrow_fwd_f32(p, xb.data(), out.data()); });
  }
  return out.values(what);
}

// pad in src/backend/cuda/shape.rs: launched over the whole output, even when x is empty.
std::vector<float> pad(const std::vector<float>& x, const Shape& s, size_t axis, int64_t before, int64_t after,
                       const std::string& what) {
  const Axis a = split(s, axis);
  const int64_t padded = before + a.dim + after, n = a.outer * padded * a.inner;
  Buffer xb(x), out = Buffer::poisoned(n);
  if (n > 0) {
    const AxisCopyParams p{n, a.inner, a.dim, padded, 0, before, a.dim};
    launch_for(n, [&] { shape_pad_fwd_f32(p, xb.data(), out.data()); });
  }
  return out.values(what);
}

// concat in src/backend/cuda/shape.rs: one launch per non-empty part into one output.
std::vector<float> concat(const std::vector<std::vector<float>>& parts, const Shape& s, size_t axis,
                          const std::vector<int64_t>& sizes, const std::string& what) {
  const Axis a = split(s, axis);
  int64_t total = 0;
  for (int64_t len : sizes) total += len;
  Buffer out = Buffer::poisoned(a.outer * total * a.inner);
  int64_t offset = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const int64_t len = sizes[i], n = a.outer * len * a.inner;
    if (n > 0) {
      Buffer part(parts[i]);
      const AxisCopyParams p{n, a.inner, len, total, 0, offset, len};
      launch_for(n, [&] { shape_concat_part_fwd_f32(p, part.data(), out.data()); });
    }
    offset += len;
  }
  return out.values(what);
}

// src/backend/cpu/shape.rs's narrow, pad and concat.
std::vector<float> narrow_ref(const std::vector<float>& x, const Axis& a, int64_t start, int64_t len) {
  std::vector<float> out;
  for (int64_t o = 0; o < a.outer; ++o)
    out.insert(out.end(), x.begin() + (o * a.dim + start) * a.inner, x.begin() + (o * a.dim + start + len) * a.inner);
  return out;
}

std::vector<float> pad_ref(const std::vector<float>& x, const Axis& a, int64_t before, int64_t after) {
  const int64_t padded = before + a.dim + after;
  std::vector<float> out((size_t)(a.outer * padded * a.inner), 0.0f);
  for (int64_t o = 0; o < a.outer; ++o)
    std::copy(x.begin() + o * a.dim * a.inner, x.begin() + (o + 1) * a.dim * a.inner,
              out.begin() + (o * padded + before) * a.inner);
  return out;
}

std::vector<float> concat_ref(const std::vector<std::vector<float>>& parts, const Axis& a,
                              const std::vector<int64_t>& sizes) {
  std::vector<float> out;
  for (int64_t o = 0; o < a.outer; ++o)
    for (size_t i = 0; i < parts.size(); ++i)
      out.insert(out.end(), parts[i].begin() + o * sizes[i] * a.inner, parts[i].begin() + (o + 1) * sizes[i] * a.inner);
  return out;
}

// Every shape op only moves values (pad adds zeros): bit for bit, as tests/shape.rs requires.
void test_narrow(const Shape& s, size_t axis, int64_t start, int64_t len) {
  const std::string what = "narrow " + str(s) + " axis " + std::to_string(axis) + " " + std::to_string(start) + "+" +
                           std::to_string(len);
  const auto x = randn_with_negative_zeros(numel(s), 5);
  emu::compare_bits(what, narrow(x, s, axis, start, len, what), narrow_ref(x, split(s, axis), start, len));
}

void test_pad(const Shape& s, size_t axis, int64_t before, int64_t after) {
  const std::string what = "pad " + str(s) + " axis " + std::to_string(axis) + " (" + std::to_string(before) + ", " +
                           std::to_string(after) + ")";
  const auto x = randn_with_negative_zeros(numel(s), 5);
  emu::compare_bits(what, pad(x, s, axis, before, after, what), pad_ref(x, split(s, axis), before, after));
}

void test_concat(const Shape& s, size_t axis, const std::vector<int64_t>& sizes) {
  std::string what = "concat " + str(s) + " axis " + std::to_string(axis) + " sizes " + str(sizes);
  std::vector<std::vector<float>> parts;
  for (int64_t len : sizes) {
    Shape part = s;
    part[axis] = len;
    parts.push_back(emu::randn((size_t)numel(part)));
  }
  emu::compare_bits(what, concat(parts, s, axis, sizes, what), concat_ref(parts, split(s, axis), sizes));
}

// tests/shape.rs's windows: the first and last slice, a middle run, all but the ends, an empty
// window; and the whole axis, which ops never launches but the launcher would.
std::vector<std::pair<int64_t, int64_t>> windows(int64_t dim) {
  std::vector<std::pair<int64_t, int64_t>> w{{0, std::min<int64_t>(1, dim)},
                                             {std::max<int64_t>(dim - 1, 0), std::min<int64_t>(1, dim)},
                                             {dim / 3, dim - dim / 3 - dim / 4},
                                             {dim / 2, 0},
                                             {0, dim}};
  if (dim > 2) w.push_back({1, dim - 2});
  return w;
}

// gather_rows in src/backend/cuda/shape.rs (the indices checked against the table's rows): up to
// GATHER_INLINE_ROWS indices in the parameters and a null index pointer, more in a buffer.
void test_gather_rows(const Shape& table_shape, int64_t count) {
  const std::string what = "gather_rows " + str(table_shape) + " count " + std::to_string(count);
  const int64_t rows = table_shape[0], row_len = numel(table_shape) / rows, n = count * row_len;
  const auto table = emu::randn((size_t)numel(table_shape));
  // tests/shape.rs's row_indices: random, repeats, the last row first and row 0 last.
  std::vector<uint32_t> indices((size_t)count);
  for (auto& i : indices) i = (uint32_t)pick((int)rows);
  if (count >= 2) indices.front() = (uint32_t)rows - 1, indices.back() = 0;
  Buffer tb(table), out = Buffer::poisoned(n);
  if (n > 0) {
    GatherRowsParams p{n, row_len, {}};
    const bool in_params = count <= GATHER_INLINE_ROWS;
    if (in_params) std::copy(indices.begin(), indices.end(), p.inline_indices);
    const uint32_t* index_buf = in_params ? nullptr : indices.data();
    launch_for(n, [&] { shape_gather_rows_fwd_f32(p, tb.data(), index_buf, out.data()); });
  }
  std::vector<float> want;
  for (uint32_t i : indices) want.insert(want.end(), table.begin() + i * row_len, table.begin() + (i + 1) * row_len);
  emu::compare_bits(what, out.values(what), want);
}

// ---- pool.cu ----

struct Planes {
  int64_t count, h, w;
};

Planes planes(const Shape& s) {
  Planes p{1, s[s.size() - 2], s[s.size() - 1]};
  for (size_t d = 0; d + 2 < s.size(); ++d) p.count *= s[d];
  return p;
}

// src/backend/cpu/pool.rs's argmax: the first maximum of the window at (oy, ox) in row-major order,
// a NaN winning over numbers and a later NaN over an earlier one.
int64_t argmax_ref(const float* x, int64_t w, int64_t oy, int64_t ox) {
  int64_t best = 2 * oy * w + 2 * ox;
  for (auto [dy, dx] : {std::pair{0, 1}, std::pair{1, 0}, std::pair{1, 1}}) {
    const int64_t at = (2 * oy + dy) * w + 2 * ox + dx;
    if (x[at] > x[best] || std::isnan(x[at])) best = at;
  }
  return best;
}

// The launchers in src/backend/cuda/pool.rs.
std::vector<float> max_pool_gather(const std::vector<float>& x, const std::vector<float>& v, const Shape& s,
                                   const std::string& what) {
  const Planes q = planes(s);
  const int64_t n = q.count * (q.h / 2) * (q.w / 2);
  Buffer xb(x), vb(v), out = Buffer::poisoned(n);
  if (n > 0) {
    const Pool2x2Params p{n, q.h, q.w, q.h / 2, q.w / 2};
    launch_for(n, [&] { pool_max2x2_gather_fwd_f32(p, xb.data(), vb.data(), out.data()); });
  }
  return out.values(what);
}

std::vector<float> max_pool_scatter(const std::vector<float>& x, const std::vector<float>& dy, const Shape& s,
                                    const std::string& what) {
  const Planes q = planes(s);
  const int64_t n = q.count * q.h * q.w;
  Buffer xb(x), dyb(dy), out = Buffer::poisoned(n);
  if (n > 0) {
    const Pool2x2Params p{n, q.h, q.w, q.h / 2, q.w / 2};
    launch_for(n, [&] { pool_max2x2_scatter_bwd_f32(p, xb.data(), dyb.data(), out.data()); });
  }
  return out.values(what);
}

std::vector<float> upsample(const std::vector<float>& x, const Shape& s, const std::string& what) {
  const Planes q = planes(s);
  const int64_t n = q.count * 4 * q.h * q.w;
  Buffer xb(x), out = Buffer::poisoned(n);
  if (n > 0) {
    const Pool2x2Params p{n, q.h, q.w, 2 * q.h, 2 * q.w};
    launch_for(n, [&] { pool_upsample_nearest2x_fwd_f32(p, xb.data(), out.data()); });
  }
  return out.values(what);
}

// sum_pool2x2: the launcher refuses odd H or W.
std::vector<float> sum_pool(const std::vector<float>& x, const Shape& s, const std::string& what) {
  const Planes q = planes(s);
  const int64_t n = q.count * (q.h / 2) * (q.w / 2);
  Buffer xb(x), out = Buffer::poisoned(n);
  if (n > 0) {
    const Pool2x2Params p{n, q.h, q.w, q.h / 2, q.w / 2};
    launch_for(n, [&] { pool_sum2x2_fwd_f32(p, xb.data(), out.data()); });
  }
  return out.values(what);
}

// src/backend/cpu/pool.rs's gather, scatter (dy added into zeros: −0 becomes +0), upsample and
// sum pool (left to right).
std::vector<float> gather_ref(const std::vector<float>& x, const std::vector<float>& v, const Planes& q) {
  std::vector<float> out;
  for (int64_t p = 0; p < q.count; ++p)
    for (int64_t oy = 0; oy < q.h / 2; ++oy)
      for (int64_t ox = 0; ox < q.w / 2; ++ox)
        out.push_back(v[p * q.h * q.w + argmax_ref(&x[p * q.h * q.w], q.w, oy, ox)]);
  return out;
}

std::vector<float> scatter_ref(const std::vector<float>& x, const std::vector<float>& dy, const Planes& q) {
  const int64_t oh = q.h / 2, ow = q.w / 2;
  std::vector<float> d_x(x.size(), 0.0f);
  for (int64_t p = 0; p < q.count; ++p)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox)
        d_x[p * q.h * q.w + argmax_ref(&x[p * q.h * q.w], q.w, oy, ox)] += dy[(p * oh + oy) * ow + ox];
  return d_x;
}

std::vector<float> upsample_ref(const std::vector<float>& x, const Planes& q) {
  std::vector<float> out;
  for (int64_t p = 0; p < q.count; ++p)
    for (int64_t y = 0; y < 2 * q.h; ++y)
      for (int64_t xx = 0; xx < 2 * q.w; ++xx) out.push_back(x[(p * q.h + y / 2) * q.w + xx / 2]);
  return out;
}

std::vector<float> sum_pool_ref(const std::vector<float>& x, const Planes& q) {
  std::vector<float> out;
  for (int64_t p = 0; p < q.count; ++p)
    for (int64_t oy = 0; oy < q.h / 2; ++oy)
      for (int64_t ox = 0; ox < q.w / 2; ++ox) {
        auto at = [&](int64_t dy, int64_t dx) { return x[(p * q.h + 2 * oy + dy) * q.w + 2 * ox + dx]; };
        out.push_back(at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1));
      }
  return out;
}

// tests/pool.rs's selectors: values from {−1, 0, 1} (ties in most windows), and those with NaN (one
// in the first slot), ±inf and ±0 sprinkled in.
std::vector<float> tied(int64_t n) {
  std::vector<float> x((size_t)n);
  for (auto& v : x) v = (float)(pick(3) - 1);
  return x;
}

std::vector<float> with_specials(int64_t n) {
  auto x = tied(n);
  const float specials[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f};
  for (int64_t i = 0; i < (n + 6) / 7; ++i) x[pick((int)n)] = specials[pick(5)];
  if (n > 0) x[0] = NAN;
  return x;
}

// Max pool (gather with v = x), gather and scatter on random, tied and special selectors, then
// upsample and sum pool; all only move values or add four of them in the CPU's order, so bit for
// bit, as tests/pool.rs requires.
void test_pool(const Shape& s) {
  const Planes q = planes(s);
  const int64_t n = numel(s);
  Shape pooled = s;
  pooled[s.size() - 2] /= 2;
  pooled[s.size() - 1] /= 2;
  const std::pair<const char*, std::vector<float>> selectors[] = {
      {"random", emu::randn((size_t)n)}, {"tied", tied(n)}, {"specials", with_specials(n)}};
  for (const auto& [kind, x] : selectors) {
    const std::string what = std::string(kind) + " " + str(s);
    const auto v = randn_with_negative_zeros(n, 5), dy = randn_with_negative_zeros(numel(pooled), 3);
    emu::compare_bits("max_pool " + what, max_pool_gather(x, x, s, "max_pool " + what), gather_ref(x, x, q));
    emu::compare_bits("gather " + what, max_pool_gather(x, v, s, "gather " + what), gather_ref(x, v, q));
    emu::compare_bits("scatter " + what, max_pool_scatter(x, dy, s, "scatter " + what), scatter_ref(x, dy, q));
  }
  const auto x = randn_with_negative_zeros(n, 4);
  emu::compare_bits("upsample " + str(s), upsample(x, s, "upsample " + str(s)), upsample_ref(x, q));
  // sum_pool needs even H and W: pool the upsampled shape, with −0s (−0 + −0 stays −0).
  Shape up = s;
  up[s.size() - 2] *= 2;
  up[s.size() - 1] *= 2;
  const auto y = randn_with_negative_zeros(4 * n, 2);
  emu::compare_bits("sum_pool " + str(up), sum_pool(y, up, "sum_pool " + str(up)), sum_pool_ref(y, planes(up)));
}

int main() {
  const std::pair<int64_t, float> fills[] = {{0, 1.0f}, {1, -0.0f}, {300, 0.0f}, {4500, 3.25f}};
  for (auto [n, value] : fills) test_fill(n, value);
  for (const UnaryCase& u : UNARY)
    for (int64_t n : {0, 1, 1001, 4500}) test_unary(u, n);
  printf("unary done, %d failures\n", emu::failures);
  for (const BinaryCase& c : BINARY)
    for (const auto& [a, b] : broadcast_pairs()) test_binary(c, a, b);
  for (const auto& [a, b] : broadcast_pairs()) {
    const Shape out = broadcast_shape(a, b);
    test_broadcast_to(a, out);
    test_broadcast_to(b, out);
  }
  printf("binary done, %d failures\n", emu::failures);
  // tests/shape.rs's shapes, [G, B, C, H, W] activations; size-1 axes and sizes not a multiple of
  // the block.
  const Shape shapes[] = {{7}, {3, 4, 5}, {2, 3, 4, 5}, {1, 6, 1, 3}, {2, 1, 9}, {3, 1, 5, 3, 7}, {2, 4, 3, 1, 13}};
  for (const Shape& s : shapes)
    for (size_t axis = 0; axis < s.size(); ++axis) {
      for (auto [start, len] : windows(s[axis])) test_narrow(s, axis, start, len);
      for (auto [before, after] : std::initializer_list<std::pair<int64_t, int64_t>>{{1, 0}, {0, 3}, {2, 5}, {4, 1}})
        test_pad(s, axis, before, after);
      for (const Shape& sizes : std::initializer_list<Shape>{{s[axis]}, {s[axis], 3}, {2, 0, s[axis], 1}})
        test_concat(s, axis, sizes);
    }
  // Large enough to grid-stride; an empty axis padded (the kernel writes all the zeros).
  const Shape big{2, 23, 3, 61};
  test_narrow(big, 1, 2, 19);
  test_pad(big, 2, 1, 2);
  test_concat(big, 1, {2, 0, 23, 1});
  test_pad({2, 0, 3}, 1, 2, 1);
  for (auto [table, count] : std::initializer_list<std::pair<Shape, int64_t>>{
           {{7, 3, 5}, 9}, {{10, 10}, 900}, {{4}, 0}, {{4}, 5}, {{1, 6}, 3}, {{300, 17}, 1}, {{300, 17}, 256},
           {{300, 17}, 257}})
    test_gather_rows(table, count);
  printf("shape done, %d failures\n", emu::failures);
  // tests/pool.rs's shapes and its GPU shapes: odd H and W (a dropped last row and column), planes
  // too small to pool, an empty batch, and one large enough to grid-stride.
  const Shape pool_shapes[] = {{2, 3, 7, 5}, {4, 6},          {5, 8},          {3, 9, 4},         {1, 1, 2, 2},
                               {2, 1, 3, 1, 6}, {2, 2, 1, 5}, {2, 3, 8, 8},    {1, 1, 1, 33, 65}, {3, 5, 2, 17, 13},
                               {1, 1, 1, 1, 1}, {1, 1, 2, 1, 9}, {2, 0, 3, 6, 6}, {1, 2, 91, 93}};
  for (const Shape& s : pool_shapes) test_pool(s);
  printf("pool done, %d failures\n", emu::failures);
  return emu::finish("pointwise");
}
