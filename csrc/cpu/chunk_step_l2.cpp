// The chunk step's instantiations for the l2 and squared_l2 comparators (chunk_kernel.h): every operator
// x loss, fp32 (one copy per ISA) and fp64. A file of its own so that the build spreads the
// instantiations over the cores.
#include "chunk_kernel.h"

namespace pbg {
namespace cpu {

PBG_INSTANTIATE_CHUNK_STEP(Comparator::L2, float)
PBG_INSTANTIATE_CHUNK_STEP(Comparator::L2, double)
PBG_INSTANTIATE_CHUNK_STEP(Comparator::SquaredL2, float)
PBG_INSTANTIATE_CHUNK_STEP(Comparator::SquaredL2, double)

}  // namespace cpu
}  // namespace pbg
