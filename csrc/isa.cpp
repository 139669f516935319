// tna_cpp::build_isa() -> str: the instruction-set level this build of the extension was compiled for,
// read from the compiler's target macros (so it describes the loaded binary, not the machine running it).
//
//   "avx512"    x86-64-v4 (AVX-512 F, CD, BW, DQ, VL) plus VPOPCNTDQ, VNNI and BITALG
//   "avx2"      x86-64-v3 (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE) and the x86-64-v2 extensions
//   "portable"  anything less, and every other architecture: the kernels take their plain C++ paths
//
// The same feature sets decide which levels a machine can execute (tna_kernels/_ext.py, from the
// /proc/cpuinfo flags), so a -march=native build reports the best level its host can execute.

#include <torch/library.h>

#include <string>

namespace {

#if defined(__AVX2__) && defined(__FMA__) && defined(__BMI__) && defined(__BMI2__) && defined(__F16C__) && \
    defined(__LZCNT__) && defined(__MOVBE__) && defined(__POPCNT__) && defined(__SSE4_2__) && defined(__SSSE3__)
#define TNA_ISA_V3 1
#else
#define TNA_ISA_V3 0
#endif

#if TNA_ISA_V3 && defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512BW__) && \
    defined(__AVX512DQ__) && defined(__AVX512VL__) && defined(__AVX512VPOPCNTDQ__) && defined(__AVX512VNNI__) && \
    defined(__AVX512BITALG__)
#define TNA_ISA_NAME "avx512"
#elif TNA_ISA_V3
#define TNA_ISA_NAME "avx2"
#else
#define TNA_ISA_NAME "portable"
#endif

std::string build_isa() { return TNA_ISA_NAME; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(tna_cpp, m) { m.def("build_isa() -> str", &build_isa); }
