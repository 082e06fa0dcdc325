// The device self-test behind every CLI's `doctor`: each backbone op runs on the device under test (float32) and on
// the CPU in float64 from the same random inputs; outputs and input gradients must agree to a relative error that
// float32 arithmetic explains. Struct layouts of TorchSharp's native shim are not proven identical across libtorch
// versions (a CUDA machine often brings its own PyTorch), so this is the first thing to run on a new machine.
using System.Diagnostics;
using TorchSharp;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using Ssm.Backbone.Scans;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Backbone.Diagnostics;

public sealed record SelfTestResult(string Op, bool Passed, double RelErr, double Tolerance, double Milliseconds, string? Error);

public static class SelfTest
{
    /// <summary>What the environment has: backend, libtorch location, CUDA devices, fused kernels.</summary>
    public static IReadOnlyList<(string Key, string Value)> Environment()
    {
        bool cuda = torch.cuda.is_available();                 // also loads libtorch, so the maps file shows it
        var rows = new List<(string, string)>
        {
            ("TorchSharp", typeof(torch).Assembly.GetName().Version?.ToString() ?? "?"),
            ("libtorch", LibTorchPath() ?? "not found in /proc/self/maps"),
            ("CUDA available", cuda ? $"yes, {torch.cuda.device_count()} device(s)" : "no"),
            ("fused CUDA scan", SelectiveScanCudaKernel.Status),
            ("fused CUDA SSD", SsdCudaKernel.Available ? "available" : Native.CudaLib.Available ? "libssm_cuda.so lacks the SSD exports (rebuild it)" : Native.CudaLib.Status),
            ("CPU threads", torch.get_num_threads().ToString(System.Globalization.CultureInfo.InvariantCulture)),
        };
        return rows;
    }

    /// <summary>The libtorch actually loaded (torch.__version__ is a constant in TorchSharp; the maps file is not).</summary>
    public static string? LibTorchPath()
    {
        try
        {
            return File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                .Where(f => f.Length >= 6 && f[5].EndsWith("/libtorch_cpu.so", StringComparison.Ordinal)).Select(f => f[5]).FirstOrDefault();
        }
        catch (IOException) { return null; }
    }

    /// <summary>Runs every op check on <paramref name="device"/> against float64 on the CPU.</summary>
    public static IReadOnlyList<SelfTestResult> Run(Device device, long seed = 0)
    {
        var results = new List<SelfTestResult>();
        void Check(string op, double tol, Func<Generator, (Tensor[] Inputs, Func<Tensor[], Tensor[]> F)> make)
        {
            var gen = new Generator((ulong)(seed + results.Count + 1));
            Record(results, op, tol, () =>
            {
                var (inputs, f) = make(gen);
                return Compare(inputs, f, device);
            });
        }
        Tensor R(Generator g, params long[] shape) => torch.randn(shape, ScalarType.Float64, generator: g);

        foreach (var impl in new[] { ScanImpl.Auto, ScanImpl.Chunked })
        {
            Check($"selective scan ({impl}, fwd+bwd)", 1e-4, g =>
            {
                long b = 2, d = 8, l = 70, n = 16;
                var inputs = new[] { R(g, b, d, l), R(g, b, d, l) * 0.5, -torch.rand(d, n, ScalarType.Float64, generator: g) - 0.1,
                    R(g, b, 2, n, l), R(g, b, 2, n, l), R(g, d), R(g, b, d, l), R(g, d) * 0.5 };
                return (inputs, x => new[] { SelectiveScan.Forward(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], deltaSoftplus: true,
                    impl: x[0].device_type == DeviceType.CPU ? ScanImpl.Reference : impl).y });
            });
        }
        // The tiled CUDA kernel takes channel groups of a multiple of 32 and n <= 32 (n <= 16 and n <= 32 are two
        // instantiations); the shapes above go to the general kernel. Both lengths end in partial tiles of 32 and 16:
        // l = 72 is staged by 16-byte asynchronous copies (l % 8 == 0), l = 70 by plain loads.
        foreach (var (d, n, groups, l) in new[] { (64L, 16L, 2L, 70L), (32L, 24L, 1L, 70L), (64L, 16L, 2L, 72L), (32L, 24L, 1L, 72L) })
        {
            Check($"selective scan (tiled shapes d={d} n={n} l={l}, fwd+bwd)", 1e-4, g =>
            {
                long b = 2;
                var inputs = new[] { R(g, b, d, l), R(g, b, d, l) * 0.5, -torch.rand(d, n, ScalarType.Float64, generator: g) - 0.1,
                    R(g, b, groups, n, l), R(g, b, groups, n, l), R(g, d), R(g, b, d, l), R(g, d) * 0.5 };
                return (inputs, x => new[] { SelectiveScan.Forward(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], deltaSoftplus: true,
                    impl: x[0].device_type == DeviceType.CPU ? ScanImpl.Reference : ScanImpl.Auto).y });
            });
        }
        if (device.type == DeviceType.CUDA) CudaOnlyChecks(device, seed, results);
        Check("SSD chunk scan (fwd+bwd)", 1e-4, g =>
        {
            long b = 2, l = 50, h = 4, p = 8, n = 16;
            var inputs = new[] { R(g, b, l, h, p), R(g, b, l, h) * 0.5, -torch.rand(h, ScalarType.Float64, generator: g) - 0.5,
                R(g, b, l, 2, n), R(g, b, l, 2, n), R(g, h) };
            return (inputs, x => new[] { Ssd.ChunkScan(x[0], x[1], x[2], x[3], x[4], 16, x[5], dtSoftplus: true).y });
        });
        // On CUDA with libssm_cuda.so step 1 runs in the fused kernels (Native/cuda/ssd_chunk_scan.cu): chunks of 100 end
        // in a partial 64-row tile and pad the sequence; head dim 40 is a partial 64-channel tile.
        Check("SSD chunk scan (Q = 100, head dim 40, fwd+bwd)", 1e-4, g =>
        {
            long b = 2, l = 250, h = 4, p = 40, n = 16;
            var inputs = new[] { R(g, b, l, h, p), R(g, b, l, h) * 0.5, -torch.rand(h, ScalarType.Float64, generator: g) - 0.5,
                R(g, b, l, 2, n), R(g, b, l, 2, n), R(g, h), R(g, b, l, h, p), R(g, h) * 0.5 };
            return (inputs, x => new[] { Ssd.ChunkScan(x[0], x[1], x[2], x[3], x[4], 100, x[5], x[6], x[7], dtSoftplus: true).y });
        });
        Check("S4D kernel + FFT conv (fwd+bwd)", 1e-4, g =>
        {
            var (logA, imA) = S4DKernel.InitLin(4, 8, ScalarType.Float64);
            var inputs = new[] { R(g, 2, 4, 64), logA, imA, R(g, logA.shape), R(g, logA.shape), torch.log(torch.full(4, 0.01, ScalarType.Float64)) };
            return (inputs, x =>
            {
                var C = torch.complex(x[3], x[4]);
                return new[] { S4DKernel.FftConv(x[0], S4DKernel.Kernel(x[5], x[1], x[2], C, 64)) };
            });
        });
        // On CUDA with libssm_cuda.so this is the fused kernel; l = 2100 crosses its 2048-step tiles.
        Check("causal depthwise conv1d + SiLU (fwd+bwd)", 1e-5, g =>
        {
            var inputs = new[] { R(g, 2, 6, 2100), R(g, 6, 1, 4), R(g, 6) };
            return (inputs, x => new[] { CausalConv.ForwardSilu(x[0], x[1], x[2]) });
        });
        Check("causal depthwise conv1d + SiLU (k = 3, no bias, fwd+bwd)", 1e-5, g =>
        {
            var inputs = new[] { R(g, 3, 5, 70), R(g, 5, 1, 3) };
            return (inputs, x => new[] { CausalConv.ForwardSilu(x[0], x[1], null) });
        });
        Check("RMSNorm (fwd+bwd)", 1e-5, g =>
        {
            var inputs = new[] { R(g, 3, 5, 32), R(g, 32) };
            return (inputs, x => new[] { x[0] * torch.rsqrt(x[0].square().mean(new long[] { -1 }, keepdim: true) + 1e-5) * x[1] });
        });
        Check("Mamba block (fwd+bwd, all parameters)", 2e-4, g => BlockCheck(g, () => new Mamba(new MambaConfig(16, DState: 8))));
        Check("Mamba-2 block (fwd+bwd, all parameters)", 2e-4, g => BlockCheck(g, () => new Mamba2(new Mamba2Config(16, DState: 8, HeadDim: 8, ChunkSize: 8))));
        Check("training step (AdamW, MambaLM)", 2e-4, g => TrainStepCheck(g));
        return results;
    }

    /// <summary>
    /// Checks with no float64 CPU twin: the bfloat16 scan against the float32 scan on the same (bf16-rounded) inputs,
    /// and the fused CUDA decode step (graph and direct launches) against MambaLM.Step, float32 and bfloat16 weights.
    /// </summary>
    static void CudaOnlyChecks(Device device, long seed, List<SelfTestResult> results)
    {
        void Add(string op, double tol, Func<double> run) => Record(results, op, tol, run);
        Add("selective scan bf16 vs fp32 (fwd+bwd)", 3e-2, () =>
        {
            var g = new Generator((ulong)(seed + 101));
            long b = 2, d = 64, l = 70, n = 16;
            Tensor R(params long[] shape) => torch.randn(shape, ScalarType.Float32, generator: g).to(ScalarType.BFloat16).to(device);
            var u = R(b, d, l); var dl = R(b, d, l) * 0.5; var B = R(b, 1, n, l); var C = R(b, 1, n, l); var z = R(b, d, l);
            var A = (-torch.rand(d, n, generator: g) - 0.1).to(device);
            var D = torch.randn(d, generator: g).to(device);
            var bias = (torch.randn(d, generator: g) * 0.5).to(device);
            double err = 0;
            var outs = new List<Tensor[]>();
            foreach (var dt in new[] { ScalarType.BFloat16, ScalarType.Float32 })
            {
                var leaves = new[] { u, dl, B, C, z }.Select(t => t.to(dt).detach().requires_grad_(true)).ToArray();
                var (y, _) = SelectiveScan.Forward(leaves[0], leaves[1], A, leaves[2], leaves[3], D, leaves[4], bias, deltaSoftplus: true);
                var grads = torch.autograd.grad(new[] { y.to(ScalarType.Float32).sum() }, leaves);
                outs.Add(new[] { y }.Concat(grads).ToArray());
            }
            for (int i = 0; i < outs[0].Length; i++) err = Math.Max(err, Rel(outs[0][i], outs[1][i]));
            return err;
        });
        Add("causal conv1d + SiLU bf16 vs fp32 (fwd+bwd)", 3e-2, () =>
        {
            var g = new Generator((ulong)(seed + 103));
            var x = torch.randn(new long[] { 2, 64, 2100 }, generator: g).to(device);
            var w = (torch.randn(new long[] { 64, 1, 4 }, generator: g) * 0.5).to(device);
            var bias = torch.randn(64, generator: g).to(device);
            var outs = new List<Tensor[]>();
            foreach (var dt in new[] { ScalarType.BFloat16, ScalarType.Float32 })
            {
                var xl = x.to(ScalarType.BFloat16).to(dt).detach().requires_grad_(true);
                var wl = w.detach().requires_grad_(true);
                var bl = bias.detach().requires_grad_(true);
                var y = CausalConv.ForwardSilu(xl, wl, bl);
                var grads = torch.autograd.grad(new[] { y.to(ScalarType.Float32).sum() }, new[] { xl, wl, bl });
                outs.Add(new[] { y }.Concat(grads).ToArray());
            }
            double err = 0;
            for (int i = 0; i < outs[0].Length; i++) err = Math.Max(err, Rel(outs[0][i], outs[1][i]));
            return err;
        });
        // Without grad the fused scan launches its kernel directly, with grad through the autograd function (which also
        // saves the states for the backward): the outputs must agree, in both activation dtypes.
        Add("selective scan without grad (direct launch) vs with grad (fwd, fp32 and bf16)", 1e-6, () =>
        {
            var g = new Generator((ulong)(seed + 102));
            long b = 2, d = 64, l = 72, n = 16;
            double err = 0;
            foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                Tensor R(params long[] shape) => torch.randn(shape, ScalarType.Float32, generator: g).to(dt).to(device);
                var u = R(b, d, l); var dl = R(b, d, l) * 0.5; var B = R(b, 2, n, l); var C = R(b, 2, n, l); var z = R(b, d, l);
                var A = (-torch.rand(d, n, generator: g) - 0.1).to(device);
                var D = torch.randn(d, generator: g).to(device);
                var bias = (torch.randn(d, generator: g) * 0.5).to(device);
                (Tensor y, Tensor? last) plain, tracked;
                using (torch.no_grad())
                    plain = SelectiveScan.Forward(u, dl, A, B, C, D, z, bias, deltaSoftplus: true, returnLastState: true);
                var uu = u.detach().requires_grad_(true);
                tracked = SelectiveScan.Forward(uu, dl, A, B, C, D, z, bias, deltaSoftplus: true, returnLastState: true);
                err = Math.Max(err, Math.Max(Rel(plain.y, tracked.y), Rel(plain.last!, tracked.last!)));
            }
            return err;
        });
        // Without a gradient to record, ChunkScan runs one fused kernel for the chunk outputs, the skip and the gate
        // (Native/cuda/ssd_chunk_scan.cu), writing y in x's dtype. Chunks of 100 end in a partial 64-row tile and pad
        // the sequence; head dims 40 and 80 give a partial and a second 64-channel tile; two groups of two heads; D per
        // head and per channel; bfloat16 in and out (against float64, to bfloat16's precision).
        foreach (var (q, p, dt) in new[] { (100, 40L, ScalarType.Float32), (64, 80L, ScalarType.Float32), (100, 40L, ScalarType.BFloat16) })
            Add($"SSD chunk scan without grad ({(dt == ScalarType.Float32 ? "fp32" : "bf16")}, fused, Q = {q}, p = {p}) vs float64",
                dt == ScalarType.Float32 ? 1e-4 : 1e-2, () =>
            {
                if (!SsdCudaKernel.Available) throw new InvalidOperationException("libssm_cuda.so lacks the SSD kernels (rebuild it)");
                var g = new Generator((ulong)(seed + 104 + p + (int)dt));
                long b = 2, l = 250, h = 4, n = 16;
                Tensor R(params long[] shape) => torch.randn(shape, ScalarType.Float64, generator: g);
                var inputs = new[] { R(b, l, h, p), R(b, l, h) * 0.5, -torch.rand(h, ScalarType.Float64, generator: g) - 0.5,
                    R(b, l, 2, n), R(b, l, 2, n), p == 80 ? R(h, p) : R(h), R(b, l, h, p), R(h) * 0.5 };
                // The activations rounded to dt first, so the reference sees what the kernel sees.
                foreach (int i in new[] { 0, 1, 3, 4, 6 }) inputs[i] = inputs[i].to(dt).to(ScalarType.Float64);
                var (yRef, _) = Ssd.Reference(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], D: inputs[5], z: inputs[6],
                    dtBias: inputs[7], dtSoftplus: true);
                var x = inputs.Select((t, i) => t.to(i is 2 or 5 or 7 ? ScalarType.Float32 : dt).to(device)).ToArray();
                using var noGrad = torch.no_grad();
                var (y, _) = Ssd.ChunkScan(x[0], x[1], x[2], x[3], x[4], q, D: x[5], z: x[6], dtBias: x[7], dtSoftplus: true);
                if (y.dtype != dt) throw new InvalidOperationException($"y came back as {y.dtype}, not {dt}");
                return Rel(y, yRef);
            });
        foreach (var precision in new[] { Precision.Fp32, Precision.Bf16 })
            foreach (bool graph in new[] { true, false })
                Add($"CUDA decode step ({(precision == Precision.Fp32 ? "fp32" : "bf16")} weights, {(graph ? "graph" : "launches")}) vs MambaLM.Step",
                    precision == Precision.Fp32 ? 1e-4 : 5e-2, () => DecodeCheck(device, seed, precision, graph));
    }

    /// <summary>Runs one check (its temporaries in a dispose scope): pass when the error is within the tolerance; an
    /// exception is a failure carrying its first line.</summary>
    static void Record(List<SelfTestResult> results, string op, double tol, Func<double> run)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            using var scope = torch.NewDisposeScope();
            double err = run();
            results.Add(new SelfTestResult(op, err <= tol, err, tol, clock.Elapsed.TotalMilliseconds, null));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            results.Add(new SelfTestResult(op, false, double.NaN, tol, clock.Elapsed.TotalMilliseconds, e.Message.Split('\n')[0]));
        }
    }

    /// <summary>Prefill 5 tokens, then 6 steps of a batch of 3 through MambaLM.Step and through the CUDA engine.</summary>
    static double DecodeCheck(Device device, long seed, Precision precision, bool graph)
    {
        torch.manual_seed(seed + 13);
        var lm = new MambaLM(new MambaLMConfig(100, 64, 2, Mamba: new MambaConfig(64, DState: 16)));
        MixedPrecision.MoveTo(lm, device);
        MixedPrecision.Apply(lm, precision);
        using var noGrad = torch.no_grad();
        using var engine = new Generation.CudaDecodeEngine(lm, graph);
        var ids = torch.randint(0, 100, new long[] { 3, 11 }, generator: new Generator((ulong)seed + 17)).to(device);
        using var s1 = lm.AllocateState(3);
        using var s2 = lm.AllocateState(3);
        lm.Forward(ids[.., ..5], s1);
        lm.Forward(ids[.., ..5], s2);
        double err = 0;
        for (int t = 5; t < 11; t++)
        {
            var a = lm.Step(ids[.., t], s1);
            var e = engine.Step(ids[.., t], s2);
            err = Math.Max(err, Rel(e, a));
        }
        for (int i = 0; i < s1.Layers.Count; i++) err = Math.Max(err, Rel(s2.Layers[i].Ssm, s1.Layers[i].Ssm));
        if (graph && !engine.UseGraph) throw new InvalidOperationException($"CUDA graph capture failed ({engine.GraphError}); the engine falls back to launches");
        return err;
    }

    // A Mamba mixer with the same random weights on both sides: its output, and the gradients of a fixed projection of
    // it with respect to the activation and to every parameter.
    static (Tensor[], Func<Tensor[], Tensor[]>) BlockCheck(Generator g, Func<nn.Module<Tensor, Tensor>> make)
    {
        var x0 = torch.randn(new long[] { 2, 21, 16 }, ScalarType.Float64, generator: g);
        var w = torch.randn(new long[] { 2, 21, 16 }, ScalarType.Float64, generator: g);
        return (new[] { x0 }, x =>
        {
            torch.manual_seed(7);
            var block = make();
            block.to(x[0].dtype).to(x[0].device);
            var y = block.forward(x[0]);
            var wrt = new List<Tensor> { x[0] };
            wrt.AddRange(block.parameters());
            var grads = torch.autograd.grad(new[] { (y * w.to(y.dtype, y.device)).sum() }, wrt, allow_unused: true);
            return new[] { y.detach() }.Concat(grads.Select(t => t ?? torch.zeros(1, x[0].dtype, x[0].device))).ToArray();
        });
    }

    static (Tensor[], Func<Tensor[], Tensor[]>) TrainStepCheck(Generator g)
    {
        var ids = torch.randint(0, 32, new long[] { 2, 17 }, generator: g);
        return (new[] { ids.to_type(ScalarType.Float64) }, x =>
        {
            torch.manual_seed(11);
            var lm = new MambaLM(new MambaLMConfig(32, 16, 2, Mamba: new MambaConfig(16, DState: 8)));
            MixedPrecision.MoveTo(lm, x[0].device, x[0].dtype);
            var opt = new AdamW(lm.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), weightDecay: 0.1);
            var tokens = x[0].detach().to_type(ScalarType.Int64);
            // Compared: the first step's gradient of every parameter, and the loss before and after each of two AdamW
            // steps. Not the parameters themselves: AdamW's first update is lr sign(g) wherever |g| >> eps, so an
            // element whose gradient is a float32 rounding error in size would move by ±lr on either side of the check
            // (the parameters' error then depends on the seed, up to 3.5e-4 seen); its effect on the loss is that tiny g.
            var outs = new List<Tensor>();
            Tensor Loss()
            {
                var logits = lm.forward(tokens[.., ..^1]);
                return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), tokens[.., 1..].reshape(-1));
            }
            for (int i = 0; i < 2; i++)
            {
                opt.ZeroGrad();
                var loss = Loss();
                loss.backward();
                outs.Add(loss.detach().clone());
                if (i == 0) outs.AddRange(lm.parameters().Where(p => p.grad is not null).Select(p => p.grad!.detach().clone()));
                opt.Step(1e-2);
            }
            using (torch.no_grad()) outs.Add(Loss().detach().clone());
            return outs.ToArray();
        });
    }

    /// <summary>max over outputs and input gradients of max|dev - ref| / max|ref|; ref = float64 on the CPU.</summary>
    static double Compare(Tensor[] inputs, Func<Tensor[], Tensor[]> f, Device device)
    {
        var refIn = inputs.Select(t => t.detach().clone().requires_grad_(t.is_floating_point())).ToArray();
        var devIn = inputs.Select(t => t.detach().to(t.is_floating_point() ? ScalarType.Float32 : t.dtype, device).requires_grad_(t.is_floating_point())).ToArray();
        var refOut = f(refIn);
        var devOut = f(devIn);
        double err = 0;
        for (int i = 0; i < refOut.Length; i++) err = Math.Max(err, Rel(devOut[i], refOut[i]));
        // Gradients of a fixed random projection of the first output with respect to every floating input.
        var w = torch.randn(refOut[0].shape, ScalarType.Float64, generator: new Generator(99));
        if (refOut[0].requires_grad && devOut[0].requires_grad)
        {
            var gRef = torch.autograd.grad(new[] { (refOut[0] * w).sum() }, refIn.Where(t => t.requires_grad).ToList(), allow_unused: true);
            var gDev = torch.autograd.grad(new[] { (devOut[0] * w.to(devOut[0].dtype, device)).sum() }, devIn.Where(t => t.requires_grad).ToList(), allow_unused: true);
            for (int i = 0; i < gRef.Count; i++)
                if (gRef[i] is not null && gDev[i] is not null && gRef[i].abs().max().item<double>() > 0) err = Math.Max(err, Rel(gDev[i], gRef[i]));
        }
        return err;
    }

    static double Rel(Tensor a, Tensor b)
    {
        var a64 = a.detach().to(ScalarType.Float64, torch.CPU);
        var b64 = b.detach().to(ScalarType.Float64, torch.CPU);
        if (!a64.shape.SequenceEqual(b64.shape)) return double.PositiveInfinity;
        double den = Math.Max(b64.abs().max().item<double>(), 1e-30);
        return (a64 - b64).abs().max().item<double>() / den;
    }
}
