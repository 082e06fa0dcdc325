using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using Ssm.Backbone.Scans;
using TorchSharp;
using static TorchSharp.torch;
using static Ssm.Tests.TestUtil;

namespace Backbone.Tests;

public class BlockTests
{
    /// <summary>Moves every parameter away from its structured initialisation (D = 1, A_log = log n, ...).</summary>
    static void Perturb(nn.Module m, double scale = 0.3)
    {
        using var noGrad = torch.no_grad();
        foreach (var (_, p) in m.named_parameters()) p.add_(torch.randn_like(p) * scale * (p.abs().mean().item<float>() + 0.05));
    }

    static Tensor StepThrough(IRecurrentLayer layer, Tensor x, LayerState state)
    {
        var ys = new List<Tensor>();
        for (long t = 0; t < x.shape[1]; t++) ys.Add(layer.Step(x[.., t], state));
        return torch.stack(ys, 1);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 13)]
    [InlineData(3, 40)]
    public void MambaStepEqualsForward(long b, long l)
    {
        torch.manual_seed(1000 + l);
        var m = new Mamba(new MambaConfig(DModel: 16, DState: 8, DConv: 4, Expand: 2, Bias: true));
        Perturb(m);
        var x = torch.randn(b, l, 16);
        var y = m.forward(x);
        using var state = m.AllocateState(b);
        Close(StepThrough(m, x, state), y, 1e-4, "stepped Mamba");
    }

    [Fact]
    public void MambaPrefillThenStepEqualsForward()
    {
        torch.manual_seed(11);
        var m = new Mamba(new MambaConfig(DModel: 12, DState: 6, DConv: 3));
        Perturb(m);
        var x = torch.randn(2, 20, 12);
        var y = m.forward(x);
        // Prefill with a prefix of 2 (shorter than d_conv) and of 9, then step through the rest.
        foreach (long split in new long[] { 2, 9 })
        {
            using var state = m.AllocateState(2);
            var head = m.Forward(x[.., ..(int)split], state);
            var tail = StepThrough(m, x[.., (int)split..], state);
            Close(torch.cat(new[] { head, tail }, 1), y, 1e-4, $"prefill {split} + steps");
        }
    }

    [Fact]
    public void MambaScanImplementationsAgree()
    {
        torch.manual_seed(12);
        var m = new Mamba(new MambaConfig(DModel: 8, DState: 4));
        Perturb(m);
        var x = torch.randn(2, 33, 8);
        m.Scan = ScanImpl.Reference;
        var yRef = m.forward(x);
        foreach (var impl in new[] { ScanImpl.Fused, ScanImpl.Chunked })
        {
            m.Scan = impl;
            Close(m.forward(x), yRef, 1e-5, impl.ToString());
        }
    }

    [Theory]
    [InlineData(1, 5)]
    [InlineData(2, 8)]
    public void Mamba2StepEqualsForward(long groups, int chunk)
    {
        torch.manual_seed(2000 + groups);
        var cfg = new Mamba2Config(DModel: 16, DState: 8, DConv: 4, Expand: 2, HeadDim: 8, NGroups: groups, ChunkSize: chunk);
        var m = new Mamba2(cfg);
        Perturb(m);
        var x = torch.randn(2, 19, 16);      // 19: not a multiple of the chunk size
        var y = m.forward(x);
        using var state = m.AllocateState(2);
        Close(StepThrough(m, x, state), y, 1e-4, "stepped Mamba2");
        using var state2 = m.AllocateState(2);
        var head = m.Forward(x[.., ..7], state2);
        Close(torch.cat(new[] { head, StepThrough(m, x[.., 7..], state2) }, 1), y, 1e-4, "Mamba2 prefill + steps");
    }

    [Fact]
    public void DtBiasIsTheInverseSoftplusOfALogUniformStep()
    {
        torch.manual_seed(9);
        var bias = SsmInit.DtBias(4096, 0.001, 0.1, 1e-4).to_type(ScalarType.Float64);
        // softplus(bias) = log(1 + e^bias), computed independently in plain C#.
        var dt = bias.data<double>().ToArray().Select(x => Math.Log(1 + Math.Exp(x))).ToArray();
        Assert.All(dt, v => Assert.InRange(v, 0.001 * (1 - 1e-4), 0.1 * (1 + 1e-4)));
        // log-uniform: the mean of log(dt) sits half-way between log(0.001) and log(0.1).
        Assert.InRange(dt.Select(v => Math.Log(v)).Average(), Math.Log(0.01) - 0.1, Math.Log(0.01) + 0.1);
    }

    [Fact]
    public void RmsNormsMatchTheirClosedForms()
    {
        torch.manual_seed(3);
        var x = torch.randn(2, 5, 12, dtype: ScalarType.Float64);
        var gate = torch.randn(2, 5, 12, dtype: ScalarType.Float64);
        var norm = new RMSNorm(12, 1e-5);
        var gnorm = new GatedRMSNorm(12, 4, 1e-5);
        using (torch.no_grad()) { norm.weight.copy_(torch.randn(12)); gnorm.weight.copy_(torch.randn(12)); }
        norm.to(ScalarType.Float64);
        gnorm.to(ScalarType.Float64);
        // Plain loops over the last dimension.
        var xa = x.data<double>().ToArray();
        var ga = gate.data<double>().ToArray();
        var w = norm.weight.data<double>().ToArray();
        var gw = gnorm.weight.data<double>().ToArray();
        var expect = new double[xa.Length];
        var expectG = new double[xa.Length];
        for (int row = 0; row < 10; row++)
        {
            double ms = 0;
            for (int k = 0; k < 12; k++) ms += xa[row * 12 + k] * xa[row * 12 + k] / 12;
            for (int k = 0; k < 12; k++) expect[row * 12 + k] = w[k] * xa[row * 12 + k] / Math.Sqrt(ms + 1e-5);
            for (int grp = 0; grp < 3; grp++)
            {
                var v = Enumerable.Range(grp * 4, 4).Select(k => xa[row * 12 + k] * ga[row * 12 + k] / (1 + Math.Exp(-ga[row * 12 + k]))).ToArray();
                double gms = v.Select(a => a * a).Average();
                for (int k = 0; k < 4; k++) expectG[row * 12 + grp * 4 + k] = gw[grp * 4 + k] * v[k] / Math.Sqrt(gms + 1e-5);
            }
        }
        Close(norm.forward(x), torch.tensor(expect).reshape(2, 5, 12), 1e-6, "RMSNorm");   // computed in float32 inside
        Close(gnorm.forward(x, gate), torch.tensor(expectG).reshape(2, 5, 12), 1e-6, "GatedRMSNorm");
    }

    [Fact]
    public void ResidualBlockIsResidualPlusMixerOfNorm()
    {
        torch.manual_seed(4);
        var mixer = new Mamba(new MambaConfig(DModel: 8, DState: 4));
        var block = new ResidualBlock(mixer, 8, residualInFp32: true);
        Perturb(block);
        var x = torch.randn(2, 6, 8).to_type(ScalarType.BFloat16);
        var y = block.forward(x);
        Assert.Equal(ScalarType.Float32, y.dtype);               // the residual stream stays float32
        var expect = x.to_type(ScalarType.Float32) + mixer.forward(block.norm.forward(x.to_type(ScalarType.Float32)));
        Close(y, expect, 1e-5, "residual block");
    }

    [Fact]
    public void FlippingTheInputSwapsTheDirections()
    {
        torch.manual_seed(5);
        var cfg = new MambaConfig(DModel: 8, DState: 4);
        var a = new Mamba(cfg);
        var b = new Mamba(cfg);
        Perturb(a);
        Perturb(b);
        var ab = new Bidirectional(a, b);
        var ba = new Bidirectional(b, a);
        var x = torch.randn(2, 11, 8);
        Close(ab.forward(x.flip(1)), ba.forward(x).flip(1), 1e-5, "bidir(flip x) vs flip(bidir swapped)");
        // Both directions contribute: the output is neither direction alone.
        var y = ab.forward(x);
        Assert.True(RelErr(y, a.forward(x)) > 1e-2, "the reverse direction was silently dropped");
        Assert.True(RelErr(y, b.forward(x.flip(1)).flip(1)) > 1e-2, "the forward direction was silently dropped");
        // Position 0 of the output depends on the last input (through the reverse scan).
        var x2 = x.clone();
        x2[.., -1] = torch.randn(2, 8);
        Assert.True(RelErr(ab.forward(x2)[.., 0], y[.., 0]) > 1e-6, "no information flows backward");
    }

    [Fact]
    public void TiedBidirectionalSharesProjections()
    {
        torch.manual_seed(6);
        var bi = Bidirectional.OfMamba(new MambaConfig(DModel: 8, DState: 4), tieProjections: true);
        var fwd = (Mamba)bi.mamba_fwd;
        var rev = (Mamba)bi.mamba_rev;
        Assert.Same(fwd.in_proj, rev.in_proj);
        Assert.Same(fwd.out_proj, rev.out_proj);
        Assert.NotSame(fwd.x_proj, rev.x_proj);
        var names = bi.state_dict().Keys.ToHashSet();
        Assert.Contains("mamba_fwd.in_proj.weight", names);
        Assert.Contains("mamba_rev.A_log", names);
    }

    [Theory]
    [InlineData(MixerKind.Mamba1)]
    [InlineData(MixerKind.Mamba2)]
    public void LmStepEqualsForwardAndPrefill(MixerKind kind)
    {
        torch.manual_seed(7);
        var cfg = new MambaLMConfig(VocabSize: 50, DModel: 16, NLayer: 2, Mixer: kind,
            Mamba: new MambaConfig(16, DState: 4), Mamba2: new Mamba2Config(16, DState: 8, HeadDim: 8, ChunkSize: 4));
        var lm = new MambaLM(cfg);
        Perturb(lm, 0.1);
        var ids = torch.randint(0, 50, new long[] { 2, 10 });
        var logits = lm.forward(ids);
        Assert.Equal(new long[] { 2, 10, 56 }, logits.shape);    // vocab padded to a multiple of 8
        using var state = lm.AllocateState(2);
        var stepped = torch.stack(Enumerable.Range(0, 10).Select(t => lm.Step(ids[.., t], state)).ToArray(), 1);
        Close(stepped, logits, 1e-4, "stepped LM");
        using var state2 = lm.AllocateState(2);
        var head = lm.Forward(ids[.., ..6], state2);
        var tail = torch.stack(Enumerable.Range(6, 4).Select(t => lm.Step(ids[.., t], state2)).ToArray(), 1);
        Close(torch.cat(new[] { head, tail }, 1), logits, 1e-4, "prefilled LM");
    }

    [Fact]
    public void LmStateDictNamesMatchTransformers()
    {
        var lm = new MambaLM(new MambaLMConfig(VocabSize: 32, DModel: 8, NLayer: 2, Mamba: new MambaConfig(8, DState: 4)));
        var expected = new List<string> { "backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight" };
        foreach (var i in new[] { 0, 1 })
            foreach (var p in new[] { "norm.weight", "mixer.A_log", "mixer.D", "mixer.conv1d.weight", "mixer.conv1d.bias",
                                      "mixer.in_proj.weight", "mixer.x_proj.weight", "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.out_proj.weight" })
                expected.Add($"backbone.layers.{i}.{p}");
        Assert.Equal(expected.OrderBy(s => s), lm.state_dict().Keys.OrderBy(s => s));
        // Tied head: one storage.
        Assert.True(SharesStorage(lm.backbone.embeddings.weight!, lm.lm_head.weight!));

        var lm2 = new MambaLM(new MambaLMConfig(VocabSize: 32, DModel: 8, NLayer: 1, Mixer: MixerKind.Mamba2,
            Mamba2: new Mamba2Config(8, DState: 4, HeadDim: 4), TieEmbeddings: false));
        var names2 = lm2.state_dict().Keys.ToHashSet();
        foreach (var p in new[] { "mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.out_proj.weight" })
            Assert.Contains($"backbone.layers.0.{p}", names2);
        Assert.False(SharesStorage(lm2.backbone.embeddings.weight!, lm2.lm_head.weight!));
    }

    /// <summary>Writing into one is seen through the other.</summary>
    static bool SharesStorage(Tensor a, Tensor b)
    {
        using var noGrad = torch.no_grad();
        float before = b[0, 0].item<float>();
        a[0, 0] = a[0, 0] + 1.0f;
        bool shared = Math.Abs(b[0, 0].item<float>() - before - 1.0f) < 1e-6;
        a[0, 0] = a[0, 0] - 1.0f;
        return shared;
    }

    [Fact]
    public void FewAdamStepsReduceTheLossOnAFixedBatch()
    {
        torch.manual_seed(8);
        var lm = new MambaLM(new MambaLMConfig(VocabSize: 16, DModel: 16, NLayer: 2, Mamba: new MambaConfig(16, DState: 4)));
        var ids = torch.randint(0, 16, new long[] { 4, 24 });
        var opt = torch.optim.Adam(lm.parameters(), 3e-3);
        double Loss()
        {
            var logits = lm.forward(ids[.., ..^1]);
            var loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[2]), ids[.., 1..].reshape(-1));
            opt.zero_grad();
            loss.backward();
            opt.step();
            return loss.item<float>();
        }
        double first = Loss();
        double last = first;
        for (int i = 0; i < 30; i++) last = Loss();
        Assert.True(last < first * 0.8, $"loss {first:F3} -> {last:F3}");
    }
}
