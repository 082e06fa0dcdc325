using TorchSharp;

namespace Ssm.Backbone.Native;

/// <summary>
/// Runs a stretch of small tensor ops on one libtorch intra-op thread. Ops on tensors of a few hundred elements take
/// microseconds; splitting them over OpenMP threads only adds hand-offs, and each multi-threaded op leaves its workers
/// waiting on the cores the next op needs. Measured on 2 cores: a batch-1 SaShiMi generation step 0.47 ms on one
/// thread vs 2.8-3.3 ms on two (bench/AudioBench, another job running); Generator's decode loop 11 vs 74 ms per token;
/// a small k-mer regression 0.5 s vs 20 s under load.
/// </summary>
public sealed class TorchThreads : IDisposable
{
    readonly int _restore;

    TorchThreads(int restore) => _restore = restore;

    /// <summary>
    /// One intra-op thread until disposed when <paramref name="when"/> holds (the caller decides what is small);
    /// otherwise nothing changes. Use with <c>using</c>; the previous count comes back on dispose.
    /// </summary>
    public static TorchThreads Single(bool when = true)
    {
        if (!when) return new TorchThreads(0);
        int n = torch.get_num_threads();
        if (n > 1) torch.set_num_threads(1);
        return new TorchThreads(n > 1 ? n : 0);
    }

    public void Dispose()
    {
        if (_restore > 0) torch.set_num_threads(_restore);
    }
}
