// What the current CUDA device can run, read once per device: a driver attribute query is not
// free, and the decode path asks on every call.
#pragma once

namespace lt8 {
namespace gpu {

// Compute capability major of the current device (0 when it cannot be read).
int current_device_cc_major();

// Compute capability as major * 10 + minor (90 on H100/H200; 0 when it cannot be read).
int current_device_cc();

// Number of SMs of the current device (0 when it cannot be read).
int current_device_sm_count();

}  // namespace gpu
}  // namespace lt8
