// Tests of SaShiMi (audio/Sashimi.cs): the whole network's convolution mode equals its recurrent mode (the U-Net's
// pooling, shift and skips included, not only one layer), causality, constant-size recurrent state, learning on a
// fixed clip, the reference's module layout, and the configuration errors. Inputs are fresh random ids; the oracles
// are the other mode of the same network, a closed-form parameter count and the mathematical property itself.
using Ssm.Audio;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Audio.Tests;

public class SashimiTests
{
    // ---------------------------------------------------------------- helpers

    private static double MaxAbsDiff(Tensor a, Tensor b)
    {
        using var d = a - b;
        using var m = d.abs().max();
        return m.to_type(ScalarType.Float64).item<double>();
    }

    private static SashimiConfig Tiny(SashimiVariant variant) => SashimiConfig.Tiny with { Variant = variant };

    /// <summary>8-bit mu-law (G.711 continuous form, mu = 255) of x in [-1, 1] -> class ids in [0, 255].</summary>
    private static long[] MuLaw(double[] x)
    {
        const double mu = 255.0;
        var q = new long[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double v = Math.Clamp(x[i], -1.0, 1.0);
            double f = Math.Sign(v) * Math.Log(1 + mu * Math.Abs(v)) / Math.Log(1 + mu);   // [-1, 1]
            q[i] = (long)Math.Floor((f + 1) / 2 * mu + 0.5);                                 // [0, 255]
        }
        return q;
    }

    /// <summary>Runs Step over every position of ids (b, l): logits (b, l, V).</summary>
    private static Tensor StepThrough(Sashimi model, Tensor ids, SashimiState state)
    {
        var ys = new List<Tensor>();
        try
        {
            for (long t = 0; t < ids.size(1); t++)
            {
                using var it = ids.select(1, t);                                   // (b)
                ys.Add(model.Step(it, state));                                     // (b V)
            }
            return torch.stack(ys, 1);                                             // (b l V)
        }
        finally
        {
            foreach (var y in ys) y.Dispose();
        }
    }

    // ---------------------------------------------------------------- the two modes

    [Theory]
    [InlineData(SashimiVariant.S4D, ScalarType.Float64, 1e-9)]
    [InlineData(SashimiVariant.Mamba, ScalarType.Float64, 1e-9)]
    [InlineData(SashimiVariant.S4D, ScalarType.Float32, 1e-4)]
    [InlineData(SashimiVariant.Mamba, ScalarType.Float32, 1e-4)]
    public void ConvolutionModeEqualsRecurrentModeForTheWholeNetwork(SashimiVariant variant, ScalarType dtype, double tol)
    {
        torch.manual_seed(41 + (int)variant);
        using var model = new Sashimi(Tiny(variant));
        if (dtype != ScalarType.Float32) model.to(dtype);
        model.eval();
        // 37 samples: two full coarse groups of 16 and a partial one, so every phase of both pooling levels is stepped,
        // and the convolution mode has to pad 37 -> 48 internally.
        const long b = 2, l = 37;
        using var ids = torch.randint(0, 256, new long[] { b, l });                // (b l)

        using var noGrad = torch.no_grad();
        using var conv = model.call(ids);                                          // (b l V)
        Assert.Equal(new long[] { b, l, 256 }, conv.shape);
        Assert.Equal(dtype, conv.dtype);

        using var state = model.AllocateState(b);
        using var rec = StepThrough(model, ids, state);                            // (b l V)
        Assert.Equal(l, state.Steps);
        double err = TestUtil.RelErr(rec, conv);
        Assert.True(err <= tol, $"{variant} {dtype}: convolution vs recurrent rel. error {err:E3} > {tol:E1}");
    }

    [Theory]
    [InlineData(SashimiVariant.S4D)]
    [InlineData(SashimiVariant.Mamba)]
    public void ChangingASampleNeverChangesEarlierOutputs(SashimiVariant variant)
    {
        torch.manual_seed(57 + (int)variant);
        using var model = new Sashimi(Tiny(variant));
        model.to(ScalarType.Float64);
        model.eval();
        using var noGrad = torch.no_grad();
        const long l = 48;
        using var ids = torch.randint(0, 256, new long[] { 1, l });                // (1 l)
        using var baseLogits = model.call(ids);                                    // (1 l V)
        double scale = baseLogits.abs().max().item<double>();

        // t + 1 just inside a group of 4 (5, 17), at a group start (4, 16), the last sample of a group of 16 (15, 31):
        // a missing or wrong UpPool shift leaks within a group and is caught at these positions.
        foreach (long t in new long[] { 0, 2, 3, 4, 14, 15, 16, 30, 46 })
        {
            using var perturbed = ids.clone();
            long old = ids[0, t + 1].item<long>();
            perturbed[0, t + 1] = (old + 101) % 256;
            using var y = model.call(perturbed);                                   // (1 l V)
            using var before = y.narrow(1, 0, t + 1);
            using var baseBefore = baseLogits.narrow(1, 0, t + 1);
            double leak = MaxAbsDiff(before, baseBefore);
            // float64 FFT convolutions mix positions at rounding level only (~1e-16 relative)
            Assert.True(leak <= 1e-10 * scale, $"{variant}: changing sample {t + 1} changed an output at or before {t} by {leak:E3}");
            using var at = y.select(1, t + 1);
            using var baseAt = baseLogits.select(1, t + 1);
            Assert.True(MaxAbsDiff(at, baseAt) > 1e-6 * scale, $"{variant}: changing sample {t + 1} did not change its own output");
        }
    }

    [Theory]
    [InlineData(SashimiVariant.S4D)]
    [InlineData(SashimiVariant.Mamba)]
    public void RecurrentStateKeepsItsSizeWhileStepping(SashimiVariant variant)
    {
        torch.manual_seed(71);
        var cfg = Tiny(variant);
        using var model = new Sashimi(cfg);
        model.eval();
        const long b = 2;
        using var state = model.AllocateState(b);
        long[][] Shapes() => state.Tensors.Select(t => t.shape).ToArray();
        var shapes0 = Shapes();
        long elements0 = state.NumElements;

        // the pooling stages hold preallocated buffers: DownPool (b, p, h_k), UpPool (b, p, h_k), one per level
        var buffers = state.Layers.Where(s => s.Buffer is not null).Select(s => s.Buffer!.shape).ToArray();
        long h = cfg.DModel;
        Assert.Equal(new[] { new[] { b, 4, h }, new[] { b, 4, 2 * h }, new[] { b, 4, 2 * h }, new[] { b, 4, h } }, buffers);

        using var ids = torch.randint(0, 256, new long[] { b, 53 });
        using var noGrad = torch.no_grad();
        for (long t = 0; t < 53; t++)
        {
            using var it = ids.select(1, t);
            using var y = model.Step(it, state);
            Assert.Equal(new long[] { b, 256 }, y.shape);
            if (t == 7 || t == 31 || t == 52)
            {
                Assert.Equal(elements0, state.NumElements);
                Assert.Equal(shapes0, Shapes());
            }
        }
        Assert.Equal(53, state.Steps);
        Assert.Throws<ArgumentException>(() => model.Step(torch.zeros(new long[] { b + 1 }, ScalarType.Int64), state));
    }

    // ---------------------------------------------------------------- learning

    [Theory]
    [InlineData(SashimiVariant.S4D)]
    [InlineData(SashimiVariant.Mamba)]
    public void NllFallsOnAFixedMuLawSineClip(SashimiVariant variant)
    {
        torch.manual_seed(83);
        using var model = new Sashimi(Tiny(variant));
        model.train();
        // 257 samples of a 16 kHz signal: a 500 Hz tone with a third harmonic and a slow amplitude swell.
        var wave = Enumerable.Range(0, 257).Select(i =>
        {
            double t = i / 16000.0;
            double env = 0.4 + 0.3 * Math.Sin(2 * Math.PI * 31 * t);
            return env * (Math.Sin(2 * Math.PI * 500 * t) + 0.3 * Math.Sin(2 * Math.PI * 1500 * t));
        }).ToArray();
        using var clip = torch.tensor(MuLaw(wave)).unsqueeze(0);                    // (1 257)
        using var inputs = clip.narrow(1, 0, 256);                                 // samples <= t
        using var targets = clip.narrow(1, 1, 256);                                // sample t + 1
        using var flatTargets = targets.reshape(-1);

        var opt = new AdamW(model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)),
            weightDecay: 0.01, beta1: 0.9, beta2: 0.999, decay: Sashimi.Decay);
        var losses = new List<double>();
        for (int i = 0; i < 30; i++)
        {
            using var scope = torch.NewDisposeScope();
            var logits = model.call(inputs);                                       // (1 256 V)
            var loss = nn.functional.cross_entropy(logits.reshape(-1, 256), flatTargets);
            opt.ZeroGrad();
            loss.backward();
            opt.Step(1e-2);
            losses.Add(loss.item<float>());
        }
        Assert.True(double.IsFinite(losses[^1]));
        Assert.InRange(losses[0], Math.Log(256) - 1.5, Math.Log(256) + 1.5);     // starts near uniform over 256 classes
        // measured: about 5.7 -> 2.0 nats for both variants and several seeds; a model that cannot learn stays near ln 256
        Assert.True(losses[^1] < losses[0] - 2.0, $"{variant}: NLL {losses[0]:F3} -> {losses[^1]:F3} after 30 AdamW steps");
    }

    // ---------------------------------------------------------------- layout

    [Fact]
    public void StateDictFollowsSashimiPy()
    {
        torch.manual_seed(97);
        var cfg = SashimiConfig.Tiny with { NLayers = 2 };
        using var model = new Sashimi(cfg);
        var sd = model.state_dict();
        long h = cfg.DModel, n = cfg.DState;
        var expected = new Dictionary<string, long[]>
        {
            ["encoder.weight"] = [256, h],
            ["d_layers.0.linear.weight"] = [2 * h, 4 * h],                        // DownPool(H, 2, 4): (h expand, h pool)
            ["d_layers.1.linear.bias"] = [4 * h],
            ["c_layers.0.norm.weight"] = [4 * h],
            ["c_layers.0.layer.D"] = [4 * h],
            ["c_layers.0.layer.kernel.C"] = [4 * h, n / 2, 2],
            ["c_layers.0.layer.kernel.log_dt"] = [4 * h],
            ["c_layers.0.layer.output_linear.0.weight"] = [8 * h, 4 * h, 1],
            ["c_layers.1.layer.ff.0.0.weight"] = [8 * h, 4 * h],                  // FFBlock: input_linear (h ff, h)
            ["c_layers.1.layer.ff.2.weight"] = [4 * h, 8 * h],                    //          output_linear (h, h ff)
            ["c_layers.3.norm.bias"] = [4 * h],
            ["u_layers.0.0.linear.weight"] = [2 * h * 4, 4 * h],                  // UpPool(4H, 2, 4): (h/expand pool, h)
            ["u_layers.0.4.layer.ff.2.bias"] = [2 * h],
            ["u_layers.1.0.linear.weight"] = [h * 4, 2 * h],
            ["u_layers.1.1.layer.kernel.A_imag"] = [h, n / 2],
            ["norm.weight"] = [h],
            ["norm.bias"] = [h],
            ["decoder.weight"] = [256, h],
            ["decoder.bias"] = [256],
        };
        foreach (var (name, shape) in expected)
        {
            Assert.True(sd.ContainsKey(name), $"missing {name}");
            Assert.Equal(shape, sd[name].shape);
        }
        Assert.Equal(2, model.d_layers.Count);
        Assert.Equal(4, model.c_layers.Count);                                    // (S4D, FF) x n_layers
        Assert.All(model.u_layers, blk => Assert.Equal(5, blk.Count));            // UpPool + (S4D, FF) x n_layers
        Assert.DoesNotContain(sd.Keys, k => k.Contains("u_layers.2", StringComparison.Ordinal));

        using var mamba = new Sashimi(cfg with { Variant = SashimiVariant.Mamba });
        var msd = mamba.state_dict();
        Assert.Equal(2, mamba.c_layers.Count);                                    // one Mamba block per layer
        Assert.Equal(new[] { 2 * cfg.MambaExpand * 4 * h, 4 * h }, msd["c_layers.0.layer.in_proj.weight"].shape); // (2 d_inner, h)
        Assert.True(msd.ContainsKey("u_layers.1.2.layer.A_log"));
        Assert.DoesNotContain(msd.Keys, k => k.Contains(".ff.", StringComparison.Ordinal));
    }

    [Fact]
    public void DefaultParameterCountMatchesTheArchitecture()
    {
        var cfg = SashimiConfig.Default;
        using var model = new Sashimi(cfg);
        long n = cfg.DState, V = cfg.Classes, H = cfg.DModel;
        static long Ln(long h) => 2 * h;
        // s4d.py S4D: D, C (h n/2 2), log_dt, log_A_real (h n/2), A_imag (h n/2), Conv1d(h, 2h, 1)
        long S4(long h) => h + h * n + h + h * n / 2 + h * n / 2 + 2 * h * h + 2 * h + Ln(h);
        static long FF(long h) => h * 2 * h + 2 * h + 2 * h * h + h + Ln(h);
        long Stage(long h) => cfg.NLayers * (S4(h) + FF(h));
        long expected = V * H                                                      // encoder
            + (4 * H * 2 * H + 2 * H) + (4 * 2 * H * 4 * H + 4 * H)              // DownPool x 2
            + Stage(4 * H)                                                         // center
            + (4 * H * 2 * H * 4 + 2 * H * 4) + Stage(2 * H)                     // UpPool(4H) + stage at 2H
            + (2 * H * H * 4 + H * 4) + Stage(H)                                 // UpPool(2H) + stage at H
            + Ln(H) + H * V + V;                                                   // norm, decoder
        long got = model.parameters().Sum(p => p.numel());
        Assert.Equal(expected, got);
    }

    // ---------------------------------------------------------------- errors

    public static TheoryData<string, string> BadConfigs => new()
    {
        { "DModel", "DModel" }, { "NLayers", "NLayers" }, { "Pool", "Pool" }, { "Expand", "Expand" }, { "FF", "FF" },
        { "Dropout", "Dropout" }, { "DState", "DState" }, { "DtMin", "DtMin" }, { "Classes", "Classes" },
        { "MambaDState", "MambaDState" }, { "Variant", "Variant" },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void InvalidConfigurationsAreNamed(string option, string named)
    {
        var t = SashimiConfig.Tiny;
        var bad = option switch
        {
            "DModel" => t with { DModel = 0 },
            "NLayers" => t with { NLayers = 0 },
            "Pool" => t with { Pool = [4, 0] },
            "Expand" => t with { Expand = 0 },
            "FF" => t with { FF = -1 },
            "Dropout" => t with { Dropout = 1.0 },
            "DState" => t with { DState = 7 },
            "DtMin" => t with { DtMin = 0.2, DtMax = 0.1 },
            "Classes" => t with { Classes = 1 },
            "MambaDState" => t with { MambaDState = 0 },
            "Variant" => t with { Variant = (SashimiVariant)7 },
            _ => throw new ArgumentOutOfRangeException(nameof(option)),
        };
        var e1 = Assert.Throws<ArgumentException>(() => bad.Validate());
        Assert.Equal(named, e1.ParamName);
        Assert.Contains("SashimiConfig." + named, e1.Message, StringComparison.Ordinal);
        var e2 = Assert.Throws<ArgumentException>(() => new Sashimi(bad));
        Assert.Equal(named, e2.ParamName);
        SashimiConfig.Tiny.Validate();                                             // and the presets are valid
        SashimiConfig.Default.Validate();
        SashimiConfig.DefaultMamba.Validate();
    }

    [Fact]
    public void BadInputsGiveClearErrors()
    {
        torch.manual_seed(5);
        using var model = new Sashimi(SashimiConfig.Tiny);
        using var floats = torch.zeros(1, 8);
        Assert.Contains("int64", Assert.Throws<ArgumentException>(() => model.call(floats)).Message, StringComparison.Ordinal);
        using var outOfRange = torch.full(new long[] { 1, 8 }, 256L, ScalarType.Int64);
        Assert.Contains("[0, 256)", Assert.Throws<ArgumentException>(() => model.call(outOfRange)).Message, StringComparison.Ordinal);
        using var flat = torch.zeros(new long[] { 8 }, ScalarType.Int64);
        Assert.Throws<ArgumentException>(() => model.call(flat));
        Assert.Throws<ArgumentOutOfRangeException>(() => model.AllocateState(0));
        // lengths that are not a multiple of prod(pool) are padded internally (any l >= 1 works)
        using var one = torch.zeros(new long[] { 1, 1 }, ScalarType.Int64);
        using var y = model.call(one);
        Assert.Equal(new long[] { 1, 1, 256 }, y.shape);
    }
}
