// The chunk step's instantiations for the dot and cos comparators (chunk_kernel.h): every operator
// x loss, fp32 (one copy per ISA) and fp64. A file of its own so that the build spreads the
// instantiations over the cores.
#include "chunk_kernel.h"

namespace pbg {
namespace cpu {

PBG_INSTANTIATE_CHUNK_STEP(Comparator::Dot, float)
PBG_INSTANTIATE_CHUNK_STEP(Comparator::Dot, double)
PBG_INSTANTIATE_CHUNK_STEP(Comparator::Cos, float)
PBG_INSTANTIATE_CHUNK_STEP(Comparator::Cos, double)

}  // namespace cpu
}  // namespace pbg
