// VMamba: cross-scan / cross-merge against explicit index loops, SS2D against a float64 straight-line reference with
// one scan per direction, sizes against a parameter formula and the paper, state-dict names, and that a tiny model
// can fit a fixed batch.
using System.Text.Json;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Scans;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Vision.Tests;

public class VMambaTests
{
    /// <summary>
    /// Direction k's sequence position p -> the row-major pixel index it reads, written out from the definitions:
    /// 0 row-major, 1 column-major (p = j h + i), 2 and 3 their reverses.
    /// </summary>
    static long[] Order(int k, long h, long w)
    {
        long l = h * w;
        var order = new long[l];
        for (long p = 0; p < l; p++)
        {
            long q = k >= 2 ? l - 1 - p : p;
            if (k % 2 == 0) order[p] = q;                        // row-major: q = i w + j is already the pixel index
            else { long j = q / h, i = q % h; order[p] = i * w + j; }
        }
        return order;
    }

    [Fact]
    public void CrossScanDirectionsAreTheDocumentedPermutations()
    {
        torch.manual_seed(21);
        foreach (var (h, w) in new[] { (4L, 5L), (3L, 3L), (1L, 6L), (7L, 2L) })
        {
            long b = 2, c = 3, l = h * w;
            var x = torch.randn(b, c, h, w);
            var ys = CrossScan.Scan(x);
            Assert.Equal(new[] { b, 4, c, l }, ys.shape);
            var xa = x.contiguous().data<float>().ToArray();
            var ya = ys.contiguous().data<float>().ToArray();
            for (int k = 0; k < 4; k++)
            {
                var order = Order(k, h, w);
                for (long bi = 0; bi < b; bi++)
                    for (long ci = 0; ci < c; ci++)
                        for (long p = 0; p < l; p++)
                        {
                            float expected = xa[(bi * c + ci) * l + order[p]];
                            float actual = ya[((bi * 4 + k) * c + ci) * l + p];
                            Assert.True(expected == actual, $"h {h} w {w}: direction {k}, position {p}: {actual} != {expected}");
                        }
            }
        }
    }

    [Fact]
    public void CrossMergeSumsEachDirectionBackInPlace()
    {
        torch.manual_seed(22);
        foreach (var (h, w) in new[] { (4L, 5L), (2L, 3L), (6L, 1L) })
        {
            long b = 2, c = 3, l = h * w;
            var y = torch.randn(b, 4, c, l);
            var merged = CrossScan.Merge(y, h, w);
            Assert.Equal(new[] { b, c, l }, merged.shape);
            var ya = y.contiguous().data<float>().ToArray();
            var expected = new double[b * c * l];
            for (int k = 0; k < 4; k++)
            {
                var order = Order(k, h, w);
                for (long bi = 0; bi < b; bi++)
                    for (long ci = 0; ci < c; ci++)
                        for (long p = 0; p < l; p++)
                            expected[(bi * c + ci) * l + order[p]] += ya[((bi * 4 + k) * c + ci) * l + p];
            }
            var ma = merged.contiguous().data<float>().ToArray();
            for (int i = 0; i < ma.Length; i++) Assert.True(Math.Abs(ma[i] - expected[i]) < 1e-5, $"h {h} w {w}: element {i}: {ma[i]} != {expected[i]}");

            // With an identity core, merge(scan(x)) = 4 x.
            var x = torch.randn(b, c, h, w);
            var back = CrossScan.Merge(CrossScan.Scan(x), h, w);
            Assert.True(TestUtil.RelErr(back, 4 * x.flatten(2)) < 1e-6);
        }
        Assert.Throws<ArgumentException>(() => CrossScan.Merge(torch.randn(1, 4, 2, 11), 3, 4));
        Assert.Throws<ArgumentException>(() => CrossScan.Scan(torch.randn(2, 3, 4)));
    }

    /// <summary>
    /// SS2D in float64, one direction at a time (forward_corev0 written out): gather the direction's sequence with the
    /// explicit index order, that direction's x_proj / dt_proj / A / D slice, SelectiveScan.Reference, scatter-add back
    /// to the pixels, LayerNorm, silu(z) gate, out_proj.
    /// </summary>
    static Tensor ReferenceSS2D(SS2D m, Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], h = x.shape[1], w = x.shape[2], l = h * w, d = m.DInner, n = m.DState, r = m.DtRank;
        var F64 = VisionCheck.F64;
        var xz = torch.matmul(F64(x), F64(m.in_proj.weight!).t());                      // (b h w 2d)
        var xs = xz.narrow(-1, 0, d).permute(0, 3, 1, 2);                               // (b d h w)
        var z = xz.narrow(-1, d, d);
        var conv = nn.functional.conv2d(xs, F64(m.conv2d.weight!), F64(m.conv2d.bias!),
            padding: new long[] { (m.conv2d.weight!.shape[2] - 1) / 2, (m.conv2d.weight!.shape[3] - 1) / 2 }, groups: d);
        var flat = nn.functional.silu(conv).reshape(b, d, l);                             // (b d l) row-major
        var merged = torch.zeros(b, d, l, dtype: ScalarType.Float64);
        for (int k = 0; k < 4; k++)
        {
            var idx = torch.tensor(Order(k, h, w), dtype: ScalarType.Int64);
            var u = flat.index_select(2, idx);                                           // (b d l) in direction k's order
            var dbc = torch.matmul(F64(m.x_proj_weight[k]), u);                         // (b r+2n l)
            var delta = torch.matmul(F64(m.dt_projs_weight[k]), dbc.narrow(1, 0, r));    // (b d l)
            var B = dbc.narrow(1, r, n).contiguous();
            var C = dbc.narrow(1, r + n, n).contiguous();
            var A = -torch.exp(F64(m.A_logs.narrow(0, k * d, d)));
            var (y, _) = SelectiveScan.Reference(u, delta, A, B, C, F64(m.Ds.narrow(0, k * d, d)), null,
                F64(m.dt_projs_bias[k]), deltaSoftplus: true);
            merged.index_add_(2, idx, y, 1.0);
        }
        var ym = merged.transpose(1, 2).reshape(b, h, w, d);
        ym = nn.functional.layer_norm(ym, new long[] { d }, F64(m.out_norm.weight!), F64(m.out_norm.bias!), 1e-5);
        ym = ym * nn.functional.silu(z);
        return torch.matmul(ym, F64(m.out_proj.weight!).t()).MoveToOuterDisposeScope();
    }

    [Fact]
    public void SS2DMatchesFloat64ReferenceWithOneScanPerDirection()
    {
        torch.manual_seed(23);
        foreach (var (dim, dState, h, w) in new[] { (8L, 4L, 3L, 5L), (16L, 16L, 6L, 6L), (12L, 2L, 1L, 7L) })
        {
            var m = new SS2D(dim, dState, 2.0, 3, 1e-5);
            VisionCheck.Perturb(m);
            var x = torch.randn(2, h, w, dim);
            using var noGrad = torch.no_grad();
            var expected = ReferenceSS2D(m, x);
            foreach (var impl in new[] { ScanImpl.Fused, ScanImpl.Chunked })
            {
                m.Scan = impl;
                double err = TestUtil.RelErr(m.forward(x), expected);
                Assert.True(err < 2e-5, $"dim {dim}, {h}x{w}, {impl}: relative error {err:E2}");
            }
        }
    }

    [Fact]
    public void SS2DDirectionsHaveTheirOwnParameters()
    {
        // Each direction's slice of the stacked parameters drives only that direction: changing direction 3's dt
        // bias changes the output, and does so differently from changing direction 0's.
        torch.manual_seed(24);
        var m = new SS2D(8, 4, 2.0, 3, 1e-5);
        VisionCheck.Perturb(m);
        using var noGrad = torch.no_grad();
        var x = torch.randn(1, 4, 4, 8);
        var y = m.forward(x);
        var saved = m.dt_projs_bias.clone();
        m.dt_projs_bias[3] += 1.0;
        var y3 = m.forward(x);
        m.dt_projs_bias.copy_(saved);
        m.dt_projs_bias[0] += 1.0;
        var y0 = m.forward(x);
        m.dt_projs_bias.copy_(saved);
        Assert.True(TestUtil.RelErr(y3, y) > 1e-4);
        Assert.True(TestUtil.RelErr(y0, y) > 1e-4);
        Assert.True(TestUtil.RelErr(y3, y0) > 1e-4);
    }

    /// <summary>VSSM's parameter count from its architecture (vmamba.py v1: PatchEmbed2D, VSSBlock, PatchMerging2D).</summary>
    static long VMambaFormula(VMambaConfig c)
    {
        long n = c.DState, total = 0;
        long c0 = c.Dims[0];
        total += c.InChans * c.PatchSize * c.PatchSize * c0 + c0 + 2 * c0;          // patch_embed.proj, .norm
        for (int i = 0; i < c.Dims.Length; i++)
        {
            long C = c.Dims[i], d = (long)(c.SsmRatio * C), r = (C + 15) / 16;
            long block = 2 * C                                   // ln_1
                + C * 2 * d                                      // in_proj
                + d * c.DConv * c.DConv + d                      // conv2d (depthwise)
                + 4 * (r + 2 * n) * d                            // x_proj_weight
                + 4 * d * r + 4 * d                              // dt_projs_weight, dt_projs_bias
                + 4 * d * n + 4 * d                              // A_logs, Ds
                + 2 * d                                          // out_norm
                + d * C;                                         // out_proj
            total += c.Depths[i] * block;
            if (i + 1 < c.Dims.Length) total += 2 * 4 * C + 4 * C * c.Dims[i + 1];   // downsample.norm, .reduction
        }
        long last = c.Dims[^1];
        return total + 2 * last + last * c.NumClasses + c.NumClasses;              // norm, head
    }

    [Fact]
    public void VMambaTinyParameterCountMatchesFormulaAndPaper()
    {
        var model = new VMamba(VMambaConfig.Tiny);
        long count = VisionCheck.CountParameters(model);
        Assert.Equal(VMambaFormula(VMambaConfig.Tiny), count);
        // Liu et al. 2024 (arXiv 2401.10166 v1), Table 1: VMamba-T has 22M parameters.
        Assert.InRange(count, 21_500_000, 23_500_000);
    }

    [Fact]
    public void VMambaSmall28IsSmallAndMapsImagesToLogits()
    {
        var c = VMambaConfig.Small28;
        var model = new VMamba(c);
        long count = VisionCheck.CountParameters(model);
        Assert.Equal(VMambaFormula(c), count);
        Assert.True(count * 4 < 10_000_000, $"Small28 has {count} parameters: {count * 4 / 1e6:F1} MB in float32");
        Assert.Equal(28, c.ImgSize);
        Assert.Equal(1, c.InChans);
        Assert.Equal(10, c.NumClasses);
        model.eval();
        using var noGrad = torch.no_grad();
        Assert.Equal(new long[] { 3, 10 }, model.forward(torch.randn(3, 1, 28, 28)).shape);
        // Any multiple of the patch size runs; an odd map loses its last row/column at merging, as the reference.
        Assert.Equal(new long[] { 2, 10 }, model.forward(torch.randn(2, 1, 30, 26)).shape);
        Assert.Throws<ArgumentException>(() => model.forward(torch.randn(2, 1, 27, 28)));
        Assert.Throws<ArgumentException>(() => model.forward(torch.randn(2, 3, 28, 28)));
        Assert.Throws<ArgumentException>(() => new VMamba(c with { Depths = [2] }));
    }

    [Fact]
    public void VMambaStateDictNamesFollowVSSM()
    {
        var c = VMambaConfig.Small28 with { Depths = [1, 1] };
        var names = new VMamba(c).state_dict().Keys.ToHashSet();
        var expected = new List<string> { "patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
            "patch_embed.norm.bias", "layers.0.downsample.reduction.weight", "layers.0.downsample.norm.weight",
            "layers.0.downsample.norm.bias", "norm.weight", "norm.bias", "head.weight", "head.bias" };
        foreach (var i in new[] { 0, 1 })
        {
            expected.Add($"layers.{i}.blocks.0.ln_1.weight");
            expected.Add($"layers.{i}.blocks.0.ln_1.bias");
            foreach (var p in new[] { "in_proj.weight", "conv2d.weight", "conv2d.bias", "x_proj_weight", "dt_projs_weight",
                "dt_projs_bias", "A_logs", "Ds", "out_norm.weight", "out_norm.bias", "out_proj.weight" })
                expected.Add($"layers.{i}.blocks.0.self_attention.{p}");
        }
        Assert.Equal(expected.Order(StringComparer.Ordinal), names.Order(StringComparer.Ordinal));
        var ss = new VMamba(c).layers[0].blocks[0].self_attention;
        long d = 96, r = 3, n = 16;
        Assert.Equal(new[] { 4, r + 2 * n, d }, ss.x_proj_weight.shape);
        Assert.Equal(new[] { 4, d, r }, ss.dt_projs_weight.shape);
        Assert.Equal(new[] { 4, d }, ss.dt_projs_bias.shape);
        Assert.Equal(new[] { 4 * d, n }, ss.A_logs.shape);
        Assert.Equal(new[] { 4 * d }, ss.Ds.shape);
        Assert.False(VMamba.Decay("layers.0.blocks.0.self_attention.A_logs", ss.A_logs));
        Assert.True(VMamba.Decay("layers.0.blocks.0.self_attention.x_proj_weight", ss.x_proj_weight));
    }

    [Fact]
    public void VMambaConfigRoundTripsThroughJson()
    {
        foreach (var c in new[] { VMambaConfig.Tiny, VMambaConfig.Small28 })
        {
            string json = JsonSerializer.Serialize(c);
            var back = JsonSerializer.Deserialize<VMambaConfig>(json)!;
            Assert.Equal(c, back);
            Assert.Equal(c.Dims, back.Dims);
            Assert.Equal(c.Depths, back.Depths);
        }
        Assert.NotEqual(VMambaConfig.Tiny, VMambaConfig.Tiny with { Dims = [96, 192, 384, 769] });
    }

    [Fact]
    public void VMambaStochasticDepthOnlyInTraining()
    {
        torch.manual_seed(25);
        var c = new VMambaConfig { ImgSize = 8, PatchSize = 2, InChans = 1, NumClasses = 4, Dims = [8, 16], Depths = [2, 2], DState = 4, DropPathRate = 0.6 };
        var model = new VMamba(c);
        using var noGrad = torch.no_grad();
        var x = torch.randn(8, 1, 8, 8);
        model.eval();
        Assert.Equal(0.0, TestUtil.RelErr(model.forward(x), model.forward(x)));
        model.train();
        Assert.True(TestUtil.RelErr(model.forward(x), model.forward(x)) > 1e-6, "training-mode forward is deterministic: no drop path");
        var rates = model.layers.SelectMany(s => s.blocks.Select(blk => blk.DropPath)).ToArray();
        Assert.Equal(new[] { 0.0, 0.2, 0.4, 0.6 }, rates, (a, b) => Math.Abs(a - b) < 1e-12);
    }

    [Fact]
    public void TinyVMambaFitsAFixedBatch()
    {
        torch.manual_seed(26);
        var c = new VMambaConfig { ImgSize = 16, PatchSize = 2, InChans = 3, NumClasses = 10, Dims = [16, 32], Depths = [1, 1], DState = 4, DropPathRate = 0 };
        var (loss, acc) = VisionCheck.Overfit(new VMamba(c), 3, 16, VMamba.Decay, maxSteps: 300, lr: 1e-2);
        Assert.True(acc == 1.0 && loss < 0.1, $"after training: loss {loss:F3}, accuracy {acc:P0}");
    }
}
