// `memory` as a host kernel program's first argument: every per-step value (a noise key's step, an
// SGD learning rate, Adam's bias corrections) is moved out of the launch parameters into memory, as
// a step bound to a step block passes it (src/backend/cuda/step_block.rs), and its copy in the
// parameters is poisoned: a kernel that still read the parameters would print other values.
#pragma once
#include <cmath>
#include <cstring>

// Included after the kernel sources, whose common.cuh (the host stand-in) defines the structs.

static bool values_from_memory(int argc, char** argv) { return argc > 1 && std::strcmp(argv[1], "memory") == 0; }

// words[0..2] receive the step; every key of a step shares them.
static void step_from_memory(NoiseKeyParams& k, uint32_t* words) {
  words[0] = k.step_lo;
  words[1] = k.step_hi;
  k.step_at = words;
  k.step_lo = ~k.step_lo;
  k.step_hi ^= 0x5a5a5a5au;
}

static void lr_from_memory(SgdUpdateParams& p, float* word) {
  *word = p.lr;
  p.lr_at = word;
  p.lr = NAN;
}

static void corrections_from_memory(AdamUpdateParams& p, float* words) {
  words[0] = p.step_size;
  words[1] = p.bias2_sqrt;
  p.corrections_at = words;
  p.step_size = NAN;
  p.bias2_sqrt = NAN;
}
