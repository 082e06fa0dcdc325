// The device-support pieces that a CPU-only machine can check: the doctor's self-test harness (float32 on the device
// against float64 on the CPU, here with the CPU as the device: every op must pass, and a broken op must fail), and the
// CUDA decode engine's refusal of models it cannot run (the engine itself is checked by the self-test on a GPU).
using Ssm.Backbone.Diagnostics;
using Ssm.Backbone.Generation;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Backbone.Tests;

public class DeviceSupportTests
{
    [Fact]
    public void SelfTestPassesOnTheCpuAndCoversTheTiledKernelShapes()
    {
        var results = SelfTest.Run(torch.CPU, seed: 3);
        foreach (var r in results) Assert.True(r.Passed, $"{r.Op}: rel. error {r.RelErr} > {r.Tolerance} {r.Error}");
        // The shapes that reach the tiled CUDA kernel (group width a multiple of 32, n = 16 and n = 24) are in the list,
        // so `doctor --device cuda` exercises both of its instantiations.
        Assert.Contains(results, r => r.Op.Contains("d=64 n=16", StringComparison.Ordinal));
        Assert.Contains(results, r => r.Op.Contains("d=32 n=24", StringComparison.Ordinal));
        // float32 against float64 leaves a small but non-zero error: the comparison is real.
        Assert.All(results, r => Assert.True(r.RelErr > 0 && r.RelErr < r.Tolerance, $"{r.Op}: {r.RelErr}"));
    }

    [Fact]
    public void CudaDecodeEngineRefusesModelsItCannotRun()
    {
        torch.manual_seed(0);
        using var cpuModel = new MambaLM(new MambaLMConfig(40, 32, 1, Mamba: new MambaConfig(32, DState: 8)));
        Assert.Contains("not on CUDA", CudaDecodeEngine.Unsupported(cpuModel));
        Assert.Throws<NotSupportedException>(() => new CudaDecodeEngine(cpuModel));
        using var mamba2 = new MambaLM(new MambaLMConfig(40, 64, 1, Mixer: MixerKind.Mamba2, Mamba2: new Mamba2Config(64, HeadDim: 16)));
        Assert.Contains("Mamba-1", CudaDecodeEngine.Unsupported(mamba2));
        // On the CPU the generator keeps its CPU engine.
        using var tg = new TokenGenerator(cpuModel);
        Assert.Equal(DecodeBackend.Engine, tg.Backend);
        Assert.NotNull(tg.Engine);
        Assert.Null(tg.CudaEngine);
    }
}
