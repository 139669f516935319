// One timestep of float32 LIF neurons, for kernels that fuse the neurons into their output (lif.cpp).
#pragma once

#include <cstdint>

namespace tna_cpu {

// The parameters of LIF neurons with one tau and one threshold for all (lif_forward's v_reset, soft_reset and
// decay_input).
struct LifParams {
  float tau;
  float v_threshold;
  float v_reset;
  bool soft_reset;
  bool decay_input;
};

// One timestep of `len` neurons: from the input x [len] and the membrane v [len] (updated in place), the spikes
// [len] (0 or 1) with the arithmetic of lif_forward, bit for bit; returns how many fired. tau and v_threshold
// hold the neurons' parameters ([len] each: lif_forward's per-neuron layout).
int64_t lif_step(const float* x, float* spikes, float* v, const float* tau, const float* v_threshold,
                 const LifParams& p, int64_t len);

}  // namespace tna_cpu
