// The CPU ops' view of one step: the data check that precedes every write, and row -> slot lookup.
#pragma once

#include <cstdint>
#include <vector>

#include "paddle_gqa/op_args.h"

namespace paddle_gqa {
namespace cpu {

// Runs check_slot (step_rules.h) over every slot and throws InvalidArgument(describe(error)) for
// the first invalid one, before the caller writes anything. checks_reads: the op reads keys
// (attention), so the blocks they live in must be valid too. Positions are checked against the
// RoPE tables when shape.max_position > 0. Returns T = cu_seqlens_q[B].
int64_t check_step(const ProblemShape& shape, const StepInputs& step, bool checks_reads);

// slot[t] = the b with cu_seqlens_q[b] <= t < cu_seqlens_q[b+1], for t in [0, T); the step must
// have passed check_step.
std::vector<int32_t> slot_of_rows(const ProblemShape& shape, const StepInputs& step, int64_t total);

// Zeroes rows [from, rows) of a contiguous [rows, row_elems] tensor of the shape's dtype: the
// padding rows past T that every op outputs as zeros.
void zero_rows_from(const ProblemShape& shape, void* data, int64_t row_elems, int64_t from);

}  // namespace cpu
}  // namespace paddle_gqa
