// The project's own CUDA kernels (backbone/Native/cuda/*.cu), built with nvcc by backbone/Native/cuda/build.sh into
// libssm_cuda.so and loaded once at run time from $SSM_CUDA_LIB or the app's folder. Without it every caller falls back
// to its tensor-op path, so nothing here is required for correctness.
using System.Runtime.InteropServices;

namespace Ssm.Backbone.Native;

public static class CudaLib
{
    static readonly Lazy<(IntPtr handle, string? path, string? error)> Loaded = new(Load);

    /// <summary>Whether libssm_cuda.so was found and loaded.</summary>
    public static bool Available => Loaded.Value.handle != IntPtr.Zero;

    /// <summary>Where it was loaded from, or why not.</summary>
    public static string Status => Available ? $"loaded from {Loaded.Value.path}" : Loaded.Value.error ?? "not loaded";

    /// <summary>An exported function, or null when the library (or this export of a newer build) is missing.</summary>
    public static IntPtr? Export(string name)
        => Available && NativeLibrary.TryGetExport(Loaded.Value.handle, name, out var f) ? f : null;

    /// <summary>The text of an error code returned by the kernels (negative: invalid arguments).</summary>
    public static unsafe string Error(int code)
    {
        if (code < 0) return "invalid arguments for the kernel";
        if (Export("ssm_cuda_error") is not IntPtr f) return $"CUDA error {code}";
        return Marshal.PtrToStringAnsi(((delegate* unmanaged<int, IntPtr>)f)(code)) ?? $"CUDA error {code}";
    }

    static (IntPtr, string?, string?) Load()
    {
        var candidates = new List<string>();
        if (Environment.GetEnvironmentVariable("SSM_CUDA_LIB") is { Length: > 0 } env) candidates.Add(env);
        candidates.Add(Path.Combine(AppContext.BaseDirectory, "libssm_cuda.so"));
        string? error = null;
        foreach (var path in candidates)
        {
            if (!File.Exists(path)) continue;
            if (NativeLibrary.TryLoad(path, out var h)) return (h, path, null);
            error = $"{path} could not be loaded";
        }
        return (IntPtr.Zero, null, error ?? "libssm_cuda.so not found (set SSM_CUDA_LIB or build it with backbone/Native/cuda/build.sh)");
    }
}

/// <summary>
/// Device memory for the benchmarks: libtorch's caching-allocator peak (as PyTorch's torch.cuda.max_memory_allocated)
/// through libssm_torchstats.so when it was built next to libssm_cuda.so, else the device's used memory (cudaMemGetInfo,
/// which includes memory the allocator merely caches).
/// </summary>
public static unsafe class CudaMemory
{
    static readonly Lazy<IntPtr> Stats = new(() =>
    {
        var dir = Environment.GetEnvironmentVariable("SSM_CUDA_LIB") is { Length: > 0 } env ? Path.GetDirectoryName(env)! : AppContext.BaseDirectory;
        var path = Path.Combine(dir, "libssm_torchstats.so");
        return File.Exists(path) && NativeLibrary.TryLoad(path, out var h) ? h : IntPtr.Zero;
    });

    static IntPtr? StatsExport(string name) => Stats.Value != IntPtr.Zero && NativeLibrary.TryGetExport(Stats.Value, name, out var f) ? f : null;

    /// <summary>Whether the allocator's own statistics are available (else <see cref="Peak"/> is the device's used memory).</summary>
    public static bool HasAllocatorStats => Stats.Value != IntPtr.Zero;

    /// <summary>Frees the allocator's cached blocks and restarts the peak (call before a measured run).</summary>
    public static void Reset(int device = 0)
    {
        if (StatsExport("ssm_torch_empty_cache") is IntPtr e) ((delegate* unmanaged<int>)e)();
        if (StatsExport("ssm_torch_reset_peak") is IntPtr r) ((delegate* unmanaged<int, int>)r)(device);
    }

    /// <summary>Peak bytes since <see cref="Reset"/> (allocator statistics), or the device's used bytes now; -1 if unknown.</summary>
    public static long Peak(int device = 0)
    {
        if (StatsExport("ssm_torch_peak_allocated") is IntPtr p) return ((delegate* unmanaged<int, long>)p)(device);
        if (CudaLib.Export("ssm_cuda_mem_used") is IntPtr u) return ((delegate* unmanaged<long>)u)();
        return -1;
    }
}

/// <summary>
/// GPU time by CUDA events on the legacy default stream (libssm_cuda.so's ssm_timer_begin / ssm_timer_end), for the
/// benchmarks: the time the device spent on the enqueued work, without the host's launch overhead.
/// </summary>
public static unsafe class CudaTimer
{
    /// <summary>Whether the loaded libssm_cuda.so has the timer exports.</summary>
    public static bool Available => CudaLib.Export("ssm_timer_begin") is not null && CudaLib.Export("ssm_timer_end") is not null;

    /// <summary>Runs <paramref name="body"/> between two events and returns the GPU milliseconds (waits for the work).</summary>
    public static double Measure(Action body)
    {
        if (CudaLib.Export("ssm_timer_begin") is not IntPtr begin || CudaLib.Export("ssm_timer_end") is not IntPtr end)
            throw new InvalidOperationException($"CUDA event timing needs libssm_cuda.so with ssm_timer_begin/end: {CudaLib.Status}");
        IntPtr start, stop;
        int code = ((delegate* unmanaged<IntPtr*, IntPtr*, int>)begin)(&start, &stop);
        if (code != 0) throw new InvalidOperationException($"CUDA event timing failed: {CudaLib.Error(code)}");
        float ms = 0;
        try { body(); }
        finally { code = ((delegate* unmanaged<IntPtr, IntPtr, float*, int>)end)(start, stop, &ms); }
        if (code != 0) throw new InvalidOperationException($"CUDA event timing failed: {CudaLib.Error(code)}");
        return ms;
    }
}

