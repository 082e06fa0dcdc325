using Ssm.Backbone.Scans;
using TorchSharp;
using static TorchSharp.torch;
using static Ssm.Tests.TestUtil;

namespace Backbone.Tests;

public class SelectiveScanTests
{
    /// <summary>One problem: inputs in the reference's layout, fresh random values at realistic scales.</summary>
    sealed record Case(long b, long d, long l, long n, long g, bool grouped, bool withD, bool withZ, bool withBias, bool softplus)
    {
        public (Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? bias) Make(ScalarType dt, int seed)
        {
            torch.manual_seed(seed);
            var u = torch.randn(b, d, l, dtype: dt);
            // softplus(delta + bias) or a raw positive delta in (0.001, 0.5): decays exp(ΔA) stay in (0, 1).
            var delta = softplus ? torch.randn(b, d, l, dtype: dt) * 0.5 - 1.0 : torch.rand(b, d, l, dtype: dt) * 0.5 + 0.001;
            var A = -torch.rand(d, n, dtype: dt) * 2.0 - 0.1;
            var B = grouped ? torch.randn(b, g, n, l, dtype: dt) : torch.randn(b, n, l, dtype: dt);
            var C = grouped ? torch.randn(b, g, n, l, dtype: dt) : torch.randn(b, n, l, dtype: dt);
            return (u, delta, A, B, C,
                withD ? torch.randn(d, dtype: dt) : null,
                withZ ? torch.randn(b, d, l, dtype: dt) : null,
                withBias ? torch.randn(d, dtype: dt) * 0.1 : null);
        }
    }

    public static TheoryData<int> Cases => new() { 0, 1, 2, 3, 4 };

    static readonly Case[] All =
    {
        new(2, 4, 37, 5, 1, false, false, false, false, false),
        new(1, 6, 50, 8, 3, true, true, true, true, true),
        new(2, 8, 64, 16, 2, true, true, false, true, false),
        new(3, 3, 1, 4, 1, false, true, true, false, true),
        new(1, 16, 129, 16, 1, false, true, true, true, true),
    };

    /// <summary>
    /// The recurrence written straight from the paper in plain C# float64 loops (no tensor ops), independent of
    /// every implementation under test.
    /// </summary>
    static (double[,,] y, double[,,] last) Loop(Case c, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? bias)
    {
        double[] U = u.to_type(ScalarType.Float64).data<double>().ToArray(), Dl = delta.to_type(ScalarType.Float64).data<double>().ToArray();
        double[] Av = A.to_type(ScalarType.Float64).data<double>().ToArray();
        double[] Bv = B.to_type(ScalarType.Float64).data<double>().ToArray(), Cv = C.to_type(ScalarType.Float64).data<double>().ToArray();
        double[]? Dv = D?.to_type(ScalarType.Float64).data<double>().ToArray(), Zv = z?.to_type(ScalarType.Float64).data<double>().ToArray();
        double[]? bv = bias?.to_type(ScalarType.Float64).data<double>().ToArray();
        long g = c.grouped ? c.g : 1;
        var y = new double[c.b, c.d, c.l];
        var last = new double[c.b, c.d, c.n];
        for (long bi = 0; bi < c.b; bi++)
            for (long di = 0; di < c.d; di++)
            {
                long gi = di / (c.d / g);
                var h = new double[c.n];
                for (long t = 0; t < c.l; t++)
                {
                    long ix = (bi * c.d + di) * c.l + t;
                    double dt = Dl[ix] + (bv?[di] ?? 0);
                    if (c.softplus) dt = Math.Log(1 + Math.Exp(dt));
                    double acc = 0;
                    for (long k = 0; k < c.n; k++)
                    {
                        long bx = ((bi * g + gi) * c.n + k) * c.l + t;
                        h[k] = Math.Exp(dt * Av[di * c.n + k]) * h[k] + dt * Bv[bx] * U[ix];
                        acc += Cv[bx] * h[k];
                    }
                    if (Dv != null) acc += Dv[di] * U[ix];
                    if (Zv != null) acc *= Zv[ix] / (1 + Math.Exp(-Zv[ix]));
                    y[bi, di, t] = acc;
                }
                for (long k = 0; k < c.n; k++) last[bi, di, k] = h[k];
            }
        return (y, last);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EveryImplementationMatchesThePlainLoop(int which)
    {
        var c = All[which];
        foreach (var dt in new[] { ScalarType.Float64, ScalarType.Float32 })
        {
            var (u, delta, A, B, C, D, z, bias) = c.Make(dt, 100 + which);
            var (yRef, lastRef) = Loop(c, u, delta, A, B, C, D, z, bias);
            double tol = dt == ScalarType.Float64 ? 1e-9 : 1e-4;
            foreach (var impl in new[] { ScanImpl.Fused, ScanImpl.Chunked, ScanImpl.Reference })
            {
                var (y, last) = SelectiveScan.Forward(u, delta, A, B, C, D, z, bias, c.softplus, returnLastState: true, impl: impl);
                Assert.Equal(dt, y.dtype);
                Close(y, torch.tensor(yRef), tol, $"{impl} {dt} y");
                Close(last!, torch.tensor(lastRef), tol, $"{impl} {dt} last state");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GradientsMatchTheReference(int which)
    {
        var c = All[which];
        var (u0, delta0, A0, B0, C0, D0, z0, bias0) = c.Make(ScalarType.Float64, 200 + which);
        var inputs = new List<Tensor> { u0, delta0, A0, B0, C0 };
        foreach (var t in new[] { D0, z0, bias0 }) if (t is not null) inputs.Add(t);
        torch.manual_seed(300 + which);
        var wy = torch.randn(c.b, c.d, c.l, dtype: ScalarType.Float64);
        var wl = torch.randn(c.b, c.d, c.n, dtype: ScalarType.Float64);

        List<Tensor> Grads(ScanImpl impl)
        {
            var leaves = inputs.Select(t => t.detach().clone().requires_grad_()).ToList();
            int i = 5;
            Tensor? D = D0 is null ? null : leaves[i++], z = z0 is null ? null : leaves[i++], bias = bias0 is null ? null : leaves[i++];
            var (y, last) = SelectiveScan.Forward(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], D, z, bias, c.softplus, true, impl);
            var loss = (y * wy).sum() + (last! * wl).sum();
            return torch.autograd.grad(new[] { loss }, leaves).ToList();
        }

        var reference = Grads(ScanImpl.Reference);
        foreach (var impl in new[] { ScanImpl.Fused, ScanImpl.Chunked })
        {
            var g = Grads(impl);
            for (int k = 0; k < g.Count; k++)
            {
                // With l = 1 the gradient of A is exactly zero (h_{-1} = 0): then both must be exactly zero.
                if (reference[k].abs().max().item<double>() == 0) Assert.Equal(0.0, g[k].abs().max().item<double>());
                else Close(g[k], reference[k], 1e-9, $"{impl} grad #{k}");
            }
        }
    }

    [Fact]
    public void ReferenceGradientMatchesFiniteDifferences()
    {
        // The oracle's own gradient (through torch autograd) checked by central differences in float64.
        var c = All[1];
        var (u, delta, A, B, C, D, z, bias) = c.Make(ScalarType.Float64, 7);
        torch.manual_seed(8);
        var w = torch.randn(c.b, c.d, c.l, dtype: ScalarType.Float64);
        var Al = A.clone().requires_grad_();
        var (y, _) = SelectiveScan.Forward(u, delta, Al, B, C, D, z, bias, c.softplus, impl: ScanImpl.Fused);
        var g = torch.autograd.grad(new[] { (y * w).sum() }, new[] { Al })[0];
        const double eps = 1e-6;
        for (int k = 0; k < 6; k++)
        {
            long i = k % c.d, j = (k * 3) % c.n;
            double F(double shift)
            {
                var Ap = A.clone();
                Ap[i, j] = Ap[i, j] + shift;
                var (yy, _) = SelectiveScan.Forward(u, delta, Ap, B, C, D, z, bias, c.softplus, impl: ScanImpl.Reference);
                return (yy * w).sum().item<double>();
            }
            double fd = (F(eps) - F(-eps)) / (2 * eps);
            double an = g[i, j].item<double>();
            Assert.True(Math.Abs(fd - an) <= 1e-5 * Math.Max(1, Math.Abs(fd)), $"dA[{i},{j}] fd {fd} vs autograd {an}");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void StepByStepEqualsForward(int which)
    {
        var c = All[which];
        var (u, delta, A, B, C, D, z, bias) = c.Make(ScalarType.Float32, 400 + which);
        var (y, last) = SelectiveScan.Forward(u, delta, A, B, C, D, z, bias, c.softplus, returnLastState: true);
        var state = torch.zeros(c.b, c.d, c.n);
        var ys = new List<Tensor>();
        for (long t = 0; t < c.l; t++)
        {
            Tensor Bt = c.grouped ? B[.., .., .., t] : B[.., .., t];
            Tensor Ct = c.grouped ? C[.., .., .., t] : C[.., .., t];
            ys.Add(SelectiveScan.Step(u[.., .., t], delta[.., .., t], A, Bt, Ct, state, D, z?[.., .., t], bias, c.softplus));
        }
        Close(torch.stack(ys, 2), y, 1e-5, "stepped y");
        Close(state, last!, 1e-5, "stepped state");
    }

    [Fact]
    public void Bf16InputsComputeInFloat32AndReturnBf16()
    {
        var c = All[2];
        var (u, delta, A, B, C, D, z, bias) = c.Make(ScalarType.Float32, 11);
        var ub = u.to_type(ScalarType.BFloat16);
        var (y, last) = SelectiveScan.Forward(ub, delta.to_type(ScalarType.BFloat16), A, B.to_type(ScalarType.BFloat16),
            C.to_type(ScalarType.BFloat16), D, z, bias, c.softplus, returnLastState: true);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        Assert.Equal(ScalarType.Float32, last!.dtype);
        var (yf, _) = SelectiveScan.Forward(ub.to_type(ScalarType.Float32), delta.to_type(ScalarType.BFloat16).to_type(ScalarType.Float32), A,
            B.to_type(ScalarType.BFloat16).to_type(ScalarType.Float32), C.to_type(ScalarType.BFloat16).to_type(ScalarType.Float32), D, z, bias, c.softplus);
        Close(y, yf, 1e-2, "bf16 vs float32");
    }

    [Fact]
    public void EmptySequenceGivesEmptyOutputAndZeroState()
    {
        foreach (var impl in new[] { ScanImpl.Fused, ScanImpl.Chunked, ScanImpl.Reference })
        {
            var u = torch.randn(2, 3, 0);
            var (y, last) = SelectiveScan.Forward(u, u, -torch.rand(3, 4), torch.randn(2, 4, 0), torch.randn(2, 4, 0),
                returnLastState: true, impl: impl);
            Assert.Equal(new long[] { 2, 3, 0 }, y.shape);
            Assert.Equal(new long[] { 2, 3, 4 }, last!.shape);
            Assert.Equal(0.0, last.abs().sum().item<float>());
        }
    }

    [Fact]
    public void BadShapesAreClearErrors()
    {
        var u = torch.randn(1, 4, 8);
        var ex = Assert.Throws<ArgumentException>(() => SelectiveScan.Forward(u, u, torch.randn(3, 2), torch.randn(1, 2, 8), torch.randn(1, 2, 8)));
        Assert.Contains("A must be", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => SelectiveScan.Forward(u, u, torch.randn(4, 2), torch.randn(1, 3, 2, 8), torch.randn(1, 2, 8)));
        Assert.Contains("B must be", ex.Message);
    }
}
