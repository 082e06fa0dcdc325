// Vision Mamba: the bimamba v2 mixer against a float64 straight-line reference and the direction-swap property,
// the model's sizes against a parameter formula and the paper, state-dict names, stochastic depth, and that a tiny
// model can fit a fixed batch.
using System.Text.Json;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Scans;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Vision.Tests;

/// <summary>Helpers shared by the vision model tests.</summary>
static class VisionCheck
{
    public static long CountParameters(nn.Module m) => m.parameters().Sum(p => p.numel());

    public static Tensor F64(Tensor t) => t.detach().to_type(ScalarType.Float64);

    /// <summary>Moves every parameter away from its structured initialisation (D = 1, zero biases) so tests see all terms.</summary>
    public static void Perturb(nn.Module m, double scale = 0.2)
    {
        using var noGrad = torch.no_grad();
        foreach (var p in m.parameters()) p.add_(torch.randn_like(p) * scale * (p.abs().mean().item<float>() + 0.05));
    }

    /// <summary>
    /// Fits a fixed batch of 32 random images with random labels (10 classes) with AdamW; returns the final loss and
    /// training accuracy. A model that cannot pass information from pixels to logits cannot get there.
    /// </summary>
    public static (double loss, double accuracy) Overfit(nn.Module<Tensor, Tensor> model, long inChans, long size,
        Func<string, Tensor, bool> decay, int maxSteps, double lr)
    {
        var images = torch.randn(32, inChans, size, size);
        var labels = torch.randint(0, 10, new long[] { 32 }, dtype: ScalarType.Int64);
        var opt = new Ssm.Backbone.Training.AdamW(model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), weightDecay: 0.0,
            beta1: 0.9, beta2: 0.99, decay: decay);
        model.train();
        double loss = double.NaN;
        for (int step = 0; step < maxSteps; step++)
        {
            opt.ZeroGrad();
            using (var scope = torch.NewDisposeScope())
            {
                var l = nn.functional.cross_entropy(model.forward(images), labels);
                l.backward();
                loss = l.item<float>();
            }
            if (loss < 0.02) break;
            // outside the step's dispose scope: the optimiser's moments live across steps
            opt.Step(lr);
        }
        model.eval();
        using var noGrad = torch.no_grad();
        var pred = model.forward(images).argmax(-1);
        double acc = pred.eq(labels).to_type(ScalarType.Float64).mean().item<double>();
        return (loss, acc);
    }
}

public class VimTests
{
    static Tensor Flip(Tensor t) => t.flip(1);

    /// <summary>
    /// The bimamba v2 mixer in float64, straight from mamba_simple.py's v2 fast path: shared in_proj, each direction's
    /// causal conv written as a sum of shifted copies, x_proj, dt_proj, SelectiveScan.Reference (the sequential oracle)
    /// gated by silu(z), backward direction on the flipped sequence and flipped back, (y_f + y_b) / 2, out_proj.
    /// </summary>
    static Tensor ReferenceBiMamba(BiMambaV2 m, Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var c = m.Config;
        long di = c.DInner, n = c.DState, r = c.Rank;
        var x64 = VisionCheck.F64(x);
        var xz = torch.matmul(x64, VisionCheck.F64(m.in_proj.weight!).t()).transpose(1, 2);    // (b 2di l)
        var xs = xz.narrow(1, 0, di);
        var z = xz.narrow(1, di, di);

        Tensor Direction(Tensor u0, Tensor zz, Conv1d conv, Linear xProj, Linear dtProj, Tensor aLog, Tensor d)
        {
            long l = u0.shape[2], k = c.DConv;
            var w = VisionCheck.F64(conv.weight!);                                             // (di 1 k)
            var acc = VisionCheck.F64(conv.bias!).reshape(1, di, 1).expand(u0.shape[0], di, l).clone();
            for (long j = 0; j < k; j++)
            {
                // tap j sees x_{t - (k - 1 - j)}: shift right by k - 1 - j, zeros in front (causal padding)
                long s = k - 1 - j;
                var shifted = nn.functional.pad(u0, new long[] { s, 0 }).narrow(2, 0, l);
                acc = acc + w.narrow(2, j, 1).reshape(1, di, 1) * shifted;
            }
            var u = nn.functional.silu(acc);                                                   // (b di l)
            var dbc = torch.matmul(u.transpose(1, 2), VisionCheck.F64(xProj.weight!).t());     // (b l r+2n)
            var delta = torch.matmul(dbc.narrow(2, 0, r), VisionCheck.F64(dtProj.weight!).t()).transpose(1, 2);
            var B = dbc.narrow(2, r, n).transpose(1, 2).contiguous();
            var C = dbc.narrow(2, r + n, n).transpose(1, 2).contiguous();
            var (y, _) = SelectiveScan.Reference(u, delta.contiguous(), -torch.exp(VisionCheck.F64(aLog)), B, C,
                VisionCheck.F64(d), zz, VisionCheck.F64(dtProj.bias!), deltaSoftplus: true);
            return y;
        }

        var yf = Direction(xs, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D);
        var yb = Direction(xs.flip(-1), z.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b).flip(-1);
        var outp = torch.matmul(((yf + yb) / 2).transpose(1, 2), VisionCheck.F64(m.out_proj.weight!).t());
        return outp.MoveToOuterDisposeScope();
    }

    [Fact]
    public void BiMambaV2MatchesFloat64Reference()
    {
        torch.manual_seed(11);
        foreach (var (dModel, dState, l) in new[] { (16L, 4L, 13L), (24L, 8L, 1L), (32L, 16L, 37L) })
        {
            var m = new BiMambaV2(new MambaConfig(dModel, DState: dState, ConvBias: true));
            VisionCheck.Perturb(m);
            var x = torch.randn(3, l, dModel);
            using var noGrad = torch.no_grad();
            var expected = ReferenceBiMamba(m, x);
            foreach (var impl in new[] { ScanImpl.Fused, ScanImpl.Chunked, ScanImpl.Reference })
            {
                m.Scan = impl;
                double err = TestUtil.RelErr(m.forward(x), expected);
                Assert.True(err < 2e-5, $"d_model {dModel}, l {l}, {impl}: relative error {err:E2}");
            }
        }
    }

    [Fact]
    public void BiMambaV2FlippedInputEqualsFlippedOutputWithDirectionsSwapped()
    {
        // M(flip x) = flip(M'(x)) where M' has the forward and backward parameter sets exchanged. If the backward
        // branch were skipped, or ran on the unflipped sequence, or were not flipped back, this would not hold.
        torch.manual_seed(12);
        var cfg = new MambaConfig(24, DState: 8);
        var m = new BiMambaV2(cfg);
        VisionCheck.Perturb(m);
        var swapped = new BiMambaV2(cfg);
        using (torch.no_grad())
        {
            var src = m.state_dict();
            var dst = swapped.state_dict();
            foreach (var (name, t) in src)
            {
                string other = name switch
                {
                    _ when name.StartsWith("conv1d_b.") => "conv1d." + name["conv1d_b.".Length..],
                    _ when name.StartsWith("conv1d.") => "conv1d_b." + name["conv1d.".Length..],
                    _ when name.StartsWith("x_proj_b.") => "x_proj." + name["x_proj_b.".Length..],
                    _ when name.StartsWith("x_proj.") => "x_proj_b." + name["x_proj.".Length..],
                    _ when name.StartsWith("dt_proj_b.") => "dt_proj." + name["dt_proj_b.".Length..],
                    _ when name.StartsWith("dt_proj.") => "dt_proj_b." + name["dt_proj.".Length..],
                    "A_log" => "A_b_log", "A_b_log" => "A_log", "D" => "D_b", "D_b" => "D",
                    _ => name,                                                                  // in_proj, out_proj: shared
                };
                dst[other].copy_(t);
            }
        }
        using var noGrad = torch.no_grad();
        var x = torch.randn(2, 19, 24);
        var lhs = m.forward(Flip(x));
        var rhs = Flip(swapped.forward(x));
        double err = TestUtil.RelErr(lhs, rhs);
        Assert.True(err < 1e-5, $"M(flip x) vs flip(M_swapped(x)): relative error {err:E2}");
        // And the property is not trivial: the mixer is not flip-equivariant with its own parameters.
        Assert.True(TestUtil.RelErr(m.forward(Flip(x)), Flip(m.forward(x))) > 1e-2, "the two directions have identical parameters");
    }

    [Fact]
    public void BiMambaV2OutputDependsOnLaterAndEarlierTokens()
    {
        // Each position sees the whole sequence: changing the last token changes the first output and vice versa.
        torch.manual_seed(13);
        var m = new BiMambaV2(new MambaConfig(16, DState: 4));
        using var noGrad = torch.no_grad();
        // Δ ~ 0.1 in every channel (softplus(-2.25)); at initialisation most channels have Δ ~ 0.001-0.01, whose
        // contribution over 11 steps is near float32 resolution.
        m.dt_proj.bias!.fill_(-2.25);
        m.dt_proj_b.bias!.fill_(-2.25);
        var x = torch.randn(1, 12, 16);
        var y = m.forward(x);
        var xLast = x.clone(); xLast[0, -1] = torch.randn(16);
        var xFirst = x.clone(); xFirst[0, 0] = torch.randn(16);
        Assert.True(TestUtil.RelErr(m.forward(xLast)[0, 0], y[0, 0]) > 1e-5, "no information flows backward");
        Assert.True(TestUtil.RelErr(m.forward(xFirst)[0, -1], y[0, -1]) > 1e-5, "no information flows forward");
    }

    /// <summary>Vim's parameter count from its architecture (models_mamba.py, mamba_simple.py v2).</summary>
    static long VimFormula(VimConfig c)
    {
        long d = c.EmbedDim, di = c.Expand * d, n = c.DState, r = (d + 15) / 16, k = c.DConv;
        long direction = di * k + di          // conv1d (depthwise weight + bias)
            + di * (r + 2 * n)                 // x_proj
            + r * di + di                      // dt_proj
            + di * n + di;                     // A_log, D
        long layer = d                         // norm
            + d * 2 * di + di * d              // in_proj, out_proj (shared, no bias)
            + 2 * direction;
        long m = (c.ImgSize / c.PatchSize) * (c.ImgSize / c.PatchSize);
        return c.InChans * c.PatchSize * c.PatchSize * d + d   // patch_embed.proj
            + d + (m + 1) * d                                   // cls_token, pos_embed
            + c.Depth * layer + d                               // layers, norm_f
            + d * c.NumClasses + c.NumClasses;                  // head
    }

    [Fact]
    public void VimTinyParameterCountMatchesFormulaAndPaper()
    {
        var model = new Vim(VimConfig.Tiny);
        long count = VisionCheck.CountParameters(model);
        Assert.Equal(VimFormula(VimConfig.Tiny), count);
        // Zhu et al. 2024, Table 1 and the hustvl/Vim README: Vim-Ti has 7M parameters.
        Assert.InRange(count, 6_500_000, 7_500_000);
        using var noGrad = torch.no_grad();
        model.eval();
        Assert.Equal(new long[] { 1, 1000 }, model.forward(torch.randn(1, 3, 224, 224)).shape);
    }

    [Fact]
    public void VimSmall28IsSmallAndMapsImagesToLogits()
    {
        var c = VimConfig.Small28;
        var model = new Vim(c);
        long count = VisionCheck.CountParameters(model);
        Assert.Equal(VimFormula(c), count);
        Assert.True(count * 4 < 10_000_000, $"Small28 has {count} parameters: {count * 4 / 1e6:F1} MB in float32");
        Assert.Equal(28, c.ImgSize);
        Assert.Equal(1, c.InChans);
        Assert.Equal(10, c.NumClasses);
        using var noGrad = torch.no_grad();
        model.eval();
        var logits = model.forward(torch.randn(5, 1, 28, 28));
        Assert.Equal(new long[] { 5, 10 }, logits.shape);
        Assert.Equal(ScalarType.Float32, logits.dtype);
        Assert.Throws<ArgumentException>(() => model.forward(torch.randn(5, 1, 32, 32)));
        Assert.Throws<ArgumentException>(() => model.forward(torch.randn(5, 3, 28, 28)));
        Assert.Throws<ArgumentException>(() => new Vim(c with { PatchSize = 5 }));
    }

    [Fact]
    public void VimStateDictNamesFollowVisionMamba()
    {
        var model = new Vim(VimConfig.Small28 with { Depth = 2 });
        var names = model.state_dict().Keys.ToHashSet();
        var expected = new List<string> { "patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed",
            "norm_f.weight", "head.weight", "head.bias" };
        foreach (var i in new[] { 0, 1 })
        {
            expected.Add($"layers.{i}.norm.weight");
            foreach (var p in new[] { "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                "dt_proj.bias", "A_log", "D", "out_proj.weight", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight",
                "dt_proj_b.weight", "dt_proj_b.bias", "A_b_log", "D_b" })
                expected.Add($"layers.{i}.mixer.{p}");
        }
        Assert.Equal(expected.Order(StringComparer.Ordinal), names.Order(StringComparer.Ordinal));
        Assert.Equal(new long[] { 1, 50, 128 }, model.pos_embed.shape);   // 7 x 7 patches + class token
        Assert.Equal(new long[] { 1, 1, 128 }, model.cls_token.shape);
        Assert.Equal(24, model.TokenPosition);
        // no weight decay on A, D (both directions), class token and position embedding
        Assert.False(Vim.Decay("layers.0.mixer.A_b_log", model.layers[0].mixer.A_b_log));
        Assert.False(Vim.Decay("pos_embed", model.pos_embed));
        Assert.True(Vim.Decay("layers.0.mixer.x_proj_b.weight", model.layers[0].mixer.x_proj_b.weight!));
    }

    [Fact]
    public void VimClassTokenSitsInTheMiddle()
    {
        // The logits come from the token at m / 2. Replacing the class token's embedding must change them; and with
        // the class-token position in the middle, both the first and the last patch reach it.
        torch.manual_seed(14);
        var c = new VimConfig { ImgSize = 16, PatchSize = 4, InChans = 1, NumClasses = 3, EmbedDim = 16, Depth = 1, DState = 4, DropPathRate = 0 };
        var model = new Vim(c);
        model.eval();
        using var noGrad = torch.no_grad();
        // Δ ~ 0.1 in every channel (softplus(-2.25)), so that the scans carry information 8 patches far above float32
        // resolution (at initialisation most channels have Δ ~ 0.001-0.01).
        foreach (var layer in model.layers) { layer.mixer.dt_proj.bias!.fill_(-2.25); layer.mixer.dt_proj_b.bias!.fill_(-2.25); }
        var x = torch.randn(1, 1, 16, 16);
        var y = model.forward(x);
        var first = x.clone(); first[0, 0, ..4, ..4] = torch.randn(4, 4);
        var last = x.clone(); last[0, 0, 12.., 12..] = torch.randn(4, 4);
        Assert.True(TestUtil.RelErr(model.forward(first), y) > 1e-4, "the first patch does not reach the class token");
        Assert.True(TestUtil.RelErr(model.forward(last), y) > 1e-4, "the last patch does not reach the class token");
        // pos_embed row m/2 belongs to the class token: perturbing only that row changes the output.
        var saved = model.pos_embed.clone();
        model.pos_embed[0, model.TokenPosition] += 1.0;
        Assert.True(TestUtil.RelErr(model.forward(x), y) > 1e-4);
        model.pos_embed.copy_(saved);
    }

    [Fact]
    public void TruncNormalHasTheTruncatedMoments()
    {
        // N(0, 1) truncated to [-1, 1]: variance 1 - 2 phi(1) / (2 Phi(1) - 1) = 0.29112 (closed form); the wide bounds
        // used for std 0.02 leave the normal unchanged.
        torch.manual_seed(17);
        var t = torch.empty(200_000);
        VisionInit.TruncNormal(t, 0, 1, -1, 1);
        Assert.InRange(t.min().item<float>(), -1f, -0.99f);
        Assert.InRange(t.max().item<float>(), 0.99f, 1f);
        Assert.InRange(t.mean().item<float>(), -0.005, 0.005);
        Assert.InRange(t.var().item<float>(), 0.29112 - 0.004, 0.29112 + 0.004);
        var w = torch.empty(400, 500);
        VisionInit.TruncNormal(w, 0.5, 0.02);
        Assert.InRange(w.mean().item<float>(), 0.4999, 0.5001);
        Assert.InRange(w.std().item<float>(), 0.0199, 0.0201);
    }

    [Fact]
    public void VimStochasticDepthOnlyInTraining()
    {
        torch.manual_seed(15);
        var c = new VimConfig { ImgSize = 8, PatchSize = 2, InChans = 1, NumClasses = 4, EmbedDim = 16, Depth = 4, DState = 4, DropPathRate = 0.5 };
        var model = new Vim(c);
        using var noGrad = torch.no_grad();
        var x = torch.randn(8, 1, 8, 8);
        model.eval();
        Assert.Equal(0.0, TestUtil.RelErr(model.forward(x), model.forward(x)));
        model.train();
        Assert.True(TestUtil.RelErr(model.forward(x), model.forward(x)) > 1e-6, "training-mode forward is deterministic: no drop path");
        var rates = model.layers.Select(l => l.DropPath).ToArray();
        Assert.Equal(new[] { 0.0, 0.5 / 3, 1.0 / 3, 0.5 }, rates, (a, b) => Math.Abs(a - b) < 1e-12);
    }

    [Fact]
    public void VimConfigRoundTripsThroughJson()
    {
        foreach (var c in new[] { VimConfig.Tiny, VimConfig.Small28 })
        {
            var back = JsonSerializer.Deserialize<VimConfig>(JsonSerializer.Serialize(c));
            Assert.Equal(c, back);
        }
        var partial = JsonSerializer.Deserialize<VimConfig>("{\"ImgSize\": 32, \"PatchSize\": 4}")!;
        Assert.Equal(192, partial.EmbedDim);                             // missing options keep Vim-Ti's defaults
    }

    [Fact]
    public void TinyVimFitsAFixedBatch()
    {
        torch.manual_seed(16);
        var c = new VimConfig { ImgSize = 16, PatchSize = 4, InChans = 3, NumClasses = 10, EmbedDim = 32, Depth = 2, DState = 8, DropPathRate = 0 };
        var (loss, acc) = VisionCheck.Overfit(new Vim(c), 3, 16, Vim.Decay, maxSteps: 300, lr: 1e-2);
        Assert.True(acc == 1.0 && loss < 0.1, $"after training: loss {loss:F3}, accuracy {acc:P0}");
    }
}
