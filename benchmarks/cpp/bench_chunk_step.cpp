// C++-level benchmark of the fused chunk step, one thread, no Python: the kernel's own cost.
// D=100, chunks of 50, 50 in-chunk + 50 uniform negatives per side, dot, softmax.
// Prints one JSON line.
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/blas.h"
#include "cpu/chunk_step.h"

int main() {
  using namespace pbg;
  const int64_t N = 100000, D = 100, P = 50, U = 50, chunks = 4000;
  std::mt19937_64 rng(0);
  std::normal_distribution<float> normal(0.f, 0.1f);
  std::uniform_int_distribution<int64_t> row(0, N - 1);
  std::vector<float> src(N * D), dst(N * D);
  for (auto& x : src) x = normal(rng);
  for (auto& x : dst) x = normal(rng);
  std::vector<int64_t> idx(4 * (P + U));
  std::vector<float> g_src((P + U) * D), g_dst((P + U) * D);
  cpu::ChunkTables<float> tables{src.data(), D, dst.data(), D, nullptr, 0, D};
  cpu::ChunkConfig<float> cfg{NegMode::BatchUniform, NegMode::BatchUniform, P, 0.1f};
  cpu::ChunkWorkspace<float> ws;
  cpu::blas_single_thread_in_this_thread();
  double loss = 0;
  auto run = [&](int64_t n) {
    for (int64_t c = 0; c < n; ++c) {
      for (auto& i : idx) i = row(rng);
      cpu::ChunkInput in{idx.data(), idx.data() + P, nullptr, P, idx.data() + 2 * P, U,
                         idx.data() + 2 * P + U, U};
      cpu::ChunkGrads<float> out{g_src.data(), g_src.data() + P * D, g_dst.data(),
                                 g_dst.data() + P * D, nullptr};
      loss += cpu::chunk_step_one<float>(Comparator::Dot, Operator::None, Loss::Softmax, tables,
                                         cfg, in, nullptr, out, ws)
                  .loss;
    }
  };
  run(100);
  const auto t0 = std::chrono::steady_clock::now();
  run(chunks);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flops = 6.0 * 2.0 * P * (P + U) * D * chunks;  // 2 forward + 4 backward GEMMs
  std::printf(
      "{\"what\": \"chunk_step_cpp\", \"threads\": 1, \"blas\": \"%s\", \"edges_per_s\": %.0f, "
      "\"us_per_chunk\": %.2f, \"gemm_gflops\": %.1f, \"loss_checksum\": %.3f}\n",
      cpu::blas_name(), P * chunks / s, s / chunks * 1e6, flops / s / 1e9, loss);
  return loss > 0 ? 0 : 1;
}
