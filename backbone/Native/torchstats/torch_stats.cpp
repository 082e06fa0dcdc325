// Peak-memory statistics of libtorch's CUDA caching allocator for the benchmarks (TorchSharp 0.107 exposes none):
// the same numbers as PyTorch's torch.cuda.max_memory_allocated / reset_peak_memory_stats / empty_cache, so our
// measurements and the Python peers' are comparable. Built by backbone/Native/cuda/build.sh against the headers of an
// installed PyTorch (optional: without it the benchmarks fall back to the device's used memory).
#include <c10/cuda/CUDACachingAllocator.h>

extern "C" {

// Peak bytes allocated through the caching allocator on `device` since the last reset (-1 on error).
long ssm_torch_peak_allocated(int device)
{
    try
    {
        auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
        return (long)stats.allocated_bytes[0].peak;   // index 0 = StatType::AGGREGATE
    }
    catch (...) { return -1; }
}

int ssm_torch_reset_peak(int device)
{
    try { c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); return 0; }
    catch (...) { return -1; }
}

int ssm_torch_empty_cache()
{
    try { c10::cuda::CUDACachingAllocator::emptyCache(); return 0; }
    catch (...) { return -1; }
}

}
