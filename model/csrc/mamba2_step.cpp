// One recurrent step of a Mamba-2 layer on a CPU: its causal conv and its SSM, each as a
// single pass over its state, and its RMSNorms, each as one op.
//
// The PyTorch ops of `Mamba2.step` make several passes over each state: for the SSM, the decay
// (`mul_`), the rank-1 update (`addcmul_`) and the readout (`bmm`); for the conv, a cat, a
// copy back, a product, a sum and the SiLU. At batch 32 the SSM state of mamba2-large is
// 75 MB, more than the L3 cache, so each pass streams it from memory; at batch 1 the dozens
// of small ops cost more than their arithmetic. These kernels read each row of a state once,
// update it in place and compute the output while it is in registers. They are registered as
// the operators `playmodel::ssm_step_`, `playmodel::conv_step_` and `playmodel::rms_norm`, so
// that a TorchScript trace records them (`model/cpu_kernels.py` builds and loads them).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

// softplus(v) with PyTorch's default threshold: v itself above 20.
inline float softplus(float v) { return v > 20.f ? v : std::log1p(std::exp(v)); }

// state (b, H, P, N) fp32, updated in place; x (b, H, P), dt (b, H) before its bias and
// softplus, dt_bias, A_log and D (H), B and C (b, G, N), all fp32. Returns
// y (b, H, P) = state C + D x, with state = exp(dt A) state + dt x B^T first.
at::Tensor ssm_step(at::Tensor state, const at::Tensor& x, const at::Tensor& dt,
                    const at::Tensor& dt_bias, const at::Tensor& A_log, const at::Tensor& B,
                    const at::Tensor& C, const at::Tensor& D) {
  TORCH_CHECK(state.dim() == 4 && state.is_contiguous() && state.scalar_type() == at::kFloat,
              "ssm_step_: state must be a contiguous (b, H, P, N) float32 tensor");
  const int64_t b = state.size(0), H = state.size(1), P = state.size(2), N = state.size(3);
  const int64_t G = B.size(1);
  TORCH_CHECK(H % G == 0, "ssm_step_: heads must split evenly over the groups");
  for (const at::Tensor* t : {&x, &dt, &dt_bias, &A_log, &B, &C, &D}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "ssm_step_: inputs must be float32");
  }
  TORCH_CHECK(x.sizes() == at::IntArrayRef({b, H, P}), "ssm_step_: x must be (b, H, P)");
  TORCH_CHECK(dt.sizes() == at::IntArrayRef({b, H}), "ssm_step_: dt must be (b, H)");
  TORCH_CHECK(B.sizes() == at::IntArrayRef({b, G, N}) && C.sizes() == B.sizes(),
              "ssm_step_: B and C must be (b, G, N)");
  TORCH_CHECK(dt_bias.numel() == H && A_log.numel() == H && D.numel() == H,
              "ssm_step_: dt_bias, A_log and D must have one value per head");
  const at::Tensor xs = x.contiguous(), dts = dt.contiguous(), Bs = B.contiguous(),
                   Cs = C.contiguous(), bias = dt_bias.contiguous(), alog = A_log.contiguous(),
                   skip = D.contiguous();
  at::Tensor y = at::empty({b, H, P}, x.options());
  float* S = state.data_ptr<float>();
  const float* X = xs.data_ptr<float>();
  const float* DT = dts.data_ptr<float>();
  const float* BB = Bs.data_ptr<float>();
  const float* CC = Cs.data_ptr<float>();
  const float* bias_h = bias.data_ptr<float>();
  const float* alog_h = alog.data_ptr<float>();
  const float* D_h = skip.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int64_t heads_per_group = H / G;
  // Rows of (batch, head), split over torch's threads when there are at least 256k state
  // values (1 MB) for each: below that, waking a thread costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, 262144 / std::max<int64_t>(1, P * N));
  at::parallel_for(0, b * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t i = bh / H, h = bh % H, g = h / heads_per_group;
      const float step = softplus(DT[bh] + bias_h[h]);
      const float decay = std::exp(step * -std::exp(alog_h[h]));
      const float* Bv = BB + (i * G + g) * N;
      const float* Cv = CC + (i * G + g) * N;
      for (int64_t p = 0; p < P; ++p) {
        float* s = S + (bh * P + p) * N;
        const float xv = X[bh * P + p];
        const float xdt = xv * step;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          const float v = s[n] * decay + xdt * Bv[n];
          s[n] = v;
          acc += v * Cv[n];
        }
        Y[bh * P + p] = acc + D_h[h] * xv;
      }
    }
  });
  return y;
}

// state (b, C, K) laid out (b, K, C) in memory (channels contiguous, as mamba_ssm lays it
// out), float32, the last K inputs, newest last: shifted in place to take x (b, C), whose
// rows may be strided. weight (C, 1, K) and bias (C). Returns silu(the causal depthwise conv
// of the K inputs + bias), (b, C), summing over the K inputs oldest first, as the PyTorch ops
// do.
at::Tensor conv_step(at::Tensor state, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& bias) {
  TORCH_CHECK(state.dim() == 3 && state.scalar_type() == at::kFloat &&
                  state.transpose(1, 2).is_contiguous(),
              "conv_step_: state must be float32 (b, C, K), laid out (b, K, C)");
  const int64_t b = state.size(0), C = state.size(1), K = state.size(2);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == b && x.size(1) == C && x.stride(1) == 1 &&
                  x.scalar_type() == at::kFloat,
              "conv_step_: x must be float32 (b, C) with contiguous rows");
  TORCH_CHECK(weight.numel() == C * K && bias.numel() == C && weight.is_contiguous() &&
                  weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat,
              "conv_step_: weight must be float32 (C, 1, K), contiguous, and bias (C)");
  // The taps as (K, C), so that each input row is weighed by a contiguous row of taps.
  std::vector<float> taps(K * C);
  const float* w = weight.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = 0; k < K; ++k) taps[k * C + c] = w[c * K + k];
  }
  const at::Tensor shift = bias.contiguous();
  at::Tensor y = at::empty({b, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  float* S = state.data_ptr<float>();
  const float* X = x.data_ptr<float>();
  const float* W = taps.data();
  const float* bias_c = shift.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int64_t x_row = x.stride(0);
  // Games split over torch's threads when each gets at least 128k state values.
  const int64_t grain = std::max<int64_t>(1, 131072 / std::max<int64_t>(1, K * C));
  at::parallel_for(0, b, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* s = S + i * K * C;  // row k of this game's inputs: s + k * C
      const float* xi = X + i * x_row;
      float* yi = Y + i * C;
      for (int64_t c = 0; c < C; ++c) yi[c] = 0.f;
      for (int64_t k = 0; k + 1 < K; ++k) {  // the window's older inputs: rows 1..K-1
        const float* row = s + (k + 1) * C;
        const float* wk = W + k * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yi[c] += row[c] * wk[c];
      }
      const float* w_new = W + (K - 1) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yi[c] = yi[c] + xi[c] * w_new[c] + bias_c[c];
      std::memmove(s, s + C, sizeof(float) * (K - 1) * C);
      std::memcpy(s + (K - 1) * C, xi, sizeof(float) * C);
    }
  });
  return at::silu_(y);  // ATen's vectorised SiLU: a scalar exp per channel costs more
}

// RMSNorm over groups of `group_size` channels of x (b, D), float32 rows with unit stride:
// x * rsqrt(mean(x^2) + eps) * weight, where x is first gated by silu(z) when z (b, D) is
// given (mamba_ssm's gated norm, `RMSNormGated`; without z, a block's `RMSNorm`).
at::Tensor rms_norm(const at::Tensor& x, const c10::optional<at::Tensor>& z,
                    const at::Tensor& weight, int64_t group_size, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kFloat,
              "rms_norm: x must be float32 (b, D) with contiguous rows");
  const int64_t b = x.size(0), D = x.size(1);
  TORCH_CHECK(group_size > 0 && D % group_size == 0, "rms_norm: D must split into groups");
  TORCH_CHECK(weight.numel() == D && weight.scalar_type() == at::kFloat,
              "rms_norm: weight must be float32 (D)");
  at::Tensor gate;
  if (z.has_value()) {
    TORCH_CHECK(z->sizes() == x.sizes() && z->scalar_type() == at::kFloat,
                "rms_norm: z must be float32 and shaped like x");
    gate = at::silu(*z).contiguous();  // ATen's vectorised SiLU
  }
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty({b, D}, x.options().memory_format(at::MemoryFormat::Contiguous));
  const float* X = x.data_ptr<float>();
  const float* G = gate.defined() ? gate.data_ptr<float>() : nullptr;
  const float* W = w.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const int64_t x_row = x.stride(0);
  const float inv_size = 1.f / static_cast<float>(group_size);
  const float epsilon = static_cast<float>(eps);
  for (int64_t i = 0; i < b; ++i) {
    const float* xi = X + i * x_row;
    float* oi = O + i * D;
    if (G != nullptr) {
      const float* gi = G + i * D;
#pragma omp simd
      for (int64_t c = 0; c < D; ++c) oi[c] = xi[c] * gi[c];
    } else {
      std::memcpy(oi, xi, sizeof(float) * D);
    }
    for (int64_t start = 0; start < D; start += group_size) {
      float* v = oi + start;
      float squares = 0.f;
#pragma omp simd reduction(+ : squares)
      for (int64_t c = 0; c < group_size; ++c) squares += v[c] * v[c];
      const float scale = 1.f / std::sqrt(squares * inv_size + epsilon);
      const float* wg = W + start;
#pragma omp simd
      for (int64_t c = 0; c < group_size; ++c) v[c] = v[c] * scale * wg[c];
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(playmodel, m) {
  m.def(
      "ssm_step_(Tensor(a!) state, Tensor x, Tensor dt, Tensor dt_bias, Tensor A_log, "
      "Tensor B, Tensor C, Tensor D) -> Tensor");
  m.def("conv_step_(Tensor(a!) state, Tensor x, Tensor weight, Tensor bias) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor? z, Tensor weight, int group_size, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(playmodel, CPU, m) {
  m.impl("ssm_step_", &ssm_step);
  m.impl("conv_step_", &conv_step);
  m.impl("rms_norm", &rms_norm);
}
