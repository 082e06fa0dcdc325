// Tests of the S4D pieces: ZOH discretisation, the Vandermonde kernel, FFT convolution, initialisations, and the
// central S4 property (Annotated S4's test_cnn_is_rnn): the layer's convolution mode equals its recurrent mode.
// Oracles are written independently: System.Numerics.Complex scalar loops in float64 and a direct causal sum.
// Also: the blocked Vandermonde kernel against a direct float64 sum for many lengths (l = 1, non-multiples of the
// block size, l = 20000 in float32), its gradients against the direct form's, the cached-discretisation step, the
// in-place state update, and Mamba / Mamba-2 stepping a float64 model in float64.
using System.Numerics;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Scans;
using TorchSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;
using static Ssm.Tests.TestUtil;

public class S4DTests
{
    // ---------------------------------------------------------------- helpers

    private static double[] Doubles(Tensor t)
    {
        using var d = t.detach();
        using var c = d.cpu();
        using var f = c.to_type(ScalarType.Float64);
        using var g = f.contiguous();
        return g.data<double>().ToArray();
    }

    private static Complex[] Complexes(Tensor t)
    {
        using var c = t.to_type(ScalarType.ComplexFloat64);
        using var r = torch.view_as_real(c);                                  // (... 2)
        var v = Doubles(r);
        var z = new Complex[v.Length / 2];
        for (int i = 0; i < z.Length; i++) z[i] = new Complex(v[2 * i], v[2 * i + 1]);
        return z;
    }


    private static Tensor RandomComplex(long h, long m, ScalarType realType)
    {
        using var r = torch.randn(h, m, 2, dtype: realType);                  // (h m 2)
        return torch.view_as_complex(r).clone();                              // (h m) complex
    }

    // ---------------------------------------------------------------- discretisation

    [Fact]
    public void ZohAAndZohBMatchTheClosedFormInFloat64AndEulerDiffers()
    {
        torch.manual_seed(101);
        const int h = 4, m = 6;
        using var r0 = torch.rand(h, 1, dtype: ScalarType.Float64);
        using var delta = r0 * 0.5 + 0.05;                                    // (h 1) in [0.05, 0.55)
        using var ar = torch.rand(h, m, dtype: ScalarType.Float64);
        using var are = ar.neg() - 0.1;                                       // (h m) < 0
        using var ai = torch.randn(h, m, dtype: ScalarType.Float64) * 4.0;    // (h m)
        using var A = torch.complex(are, ai);                                 // (h m)
        using var B = RandomComplex(h, m, ScalarType.Float64);                // (h m)

        using var aBar = Discretization.ZohA(delta, A);                       // (h m)
        using var bBar = Discretization.ZohB(delta, A, B);                    // (h m)
        using var bEuler = Discretization.EulerB(delta, B);                   // (h m)

        var dl = Doubles(delta);
        var a = Complexes(A);
        var b = Complexes(B);
        var gotA = Complexes(aBar);
        var gotB = Complexes(bBar);
        var gotE = Complexes(bEuler);
        double maxEulerGap = 0;
        for (int i = 0; i < h; i++)
        {
            for (int j = 0; j < m; j++)
            {
                int ij = i * m + j;
                Complex dA = dl[i] * a[ij];
                Complex expA = Complex.Exp(dA);
                Complex expB = (expA - Complex.One) / a[ij] * b[ij];
                Assert.True(Complex.Abs(gotA[ij] - expA) <= 1e-12 * Math.Max(1, Complex.Abs(expA)), $"ZohA[{i},{j}] = {gotA[ij]}, closed form {expA}");
                Assert.True(Complex.Abs(gotB[ij] - expB) <= 1e-12 * Math.Max(1, Complex.Abs(expB)), $"ZohB[{i},{j}] = {gotB[ij]}, closed form {expB}");
                Assert.True(Complex.Abs(gotE[ij] - dl[i] * b[ij]) <= 1e-14 * Math.Max(1, Complex.Abs(b[ij])));
                maxEulerGap = Math.Max(maxEulerGap, Complex.Abs(gotE[ij] - gotB[ij]) / Complex.Abs(gotB[ij]));
            }
        }
        // ZOH B and Euler B are different rules: at these step sizes they differ by O(delta |A|) relative.
        Assert.True(maxEulerGap > 1e-2, $"Euler and ZOH B agree to {maxEulerGap}: they could be swapped silently");
    }

    // ---------------------------------------------------------------- kernel

    [Theory]
    [InlineData(ScalarType.Float64, 1e-10)]
    [InlineData(ScalarType.Float32, 1e-4)]
    public void KernelEqualsDirectComplexSum(ScalarType dtype, double tol)
    {
        torch.manual_seed(202);
        const int h = 3, half = 5, l = 23;
        using var u0 = torch.rand(h, dtype: ScalarType.Float64);
        using var dt0 = u0 * (Math.Log(0.5) - Math.Log(0.01)) + Math.Log(0.01);   // (h) log dt in [log 0.01, log 0.5)
        using var lar0 = torch.randn(h, half, dtype: ScalarType.Float64) * 0.7;   // (h n/2)
        using var ai0 = torch.randn(h, half, dtype: ScalarType.Float64) * 6.0;    // (h n/2)
        using var c0 = RandomComplex(h, half, ScalarType.Float64);                // (h n/2)

        using var logDt = dt0.to_type(dtype);
        using var logAReal = lar0.to_type(dtype);
        using var aImag = ai0.to_type(dtype);
        using var c = c0.to_type(dtype == ScalarType.Float64 ? ScalarType.ComplexFloat64 : ScalarType.ComplexFloat32);

        using var k = S4DKernel.Kernel(logDt, logAReal, aImag, c, l);              // (h l)
        Assert.Equal(new long[] { h, l }, k.shape);
        Assert.Equal(dtype, k.dtype);

        // Oracle from the (float64 copies of the) same parameters: powers by repeated multiplication, not exp(t dt A).
        var ld = Doubles(logDt);
        var lr = Doubles(logAReal);
        var im = Doubles(aImag);
        var cc = Complexes(c);
        var expected = new double[h * l];
        for (int i = 0; i < h; i++)
        {
            double dt = Math.Exp(ld[i]);
            var aBar = new Complex[half];
            var cb = new Complex[half];
            var power = new Complex[half];
            for (int j = 0; j < half; j++)
            {
                var A = new Complex(-Math.Exp(lr[i * half + j]), im[i * half + j]);
                aBar[j] = Complex.Exp(dt * A);
                cb[j] = cc[i * half + j] * (aBar[j] - Complex.One) / A;
                power[j] = Complex.One;
            }
            for (int t = 0; t < l; t++)
            {
                Complex s = Complex.Zero;
                for (int j = 0; j < half; j++) { s += cb[j] * power[j]; power[j] *= aBar[j]; }
                expected[i * l + t] = 2 * s.Real;
            }
        }
        double err = RelErr(Doubles(k), expected);
        Assert.True(err <= tol, $"kernel rel. error {err:E3} > {tol:E1} ({dtype})");
    }

    [Fact]
    public void RecurrentImpulseResponseIsTheKernel()
    {
        torch.manual_seed(303);
        const int h = 4, half = 6, l = 19;
        var (lar, ai) = S4DKernel.InitInv(h, 2 * half, ScalarType.Float64);
        using var logAReal = lar;
        using var aImag = ai;
        using var r = torch.rand(h, dtype: ScalarType.Float64);
        using var logDt = r * (Math.Log(0.3) - Math.Log(0.01)) + Math.Log(0.01);   // (h)
        using var c = RandomComplex(h, half, ScalarType.Float64);                  // (h n/2)
        using var k = S4DKernel.Kernel(logDt, logAReal, aImag, c, l);              // (h l)

        var (aBar, bBar) = S4DKernel.Discretize(logDt, logAReal, aImag);
        using var ab = aBar;
        using var bb = bBar;
        var state = torch.zeros(1, h, half, dtype: ScalarType.ComplexFloat64);     // (1 h n/2)
        var ys = new List<Tensor>();
        for (int t = 0; t < l; t++)
        {
            using var u = t == 0 ? torch.ones(1, h, dtype: ScalarType.Float64) : torch.zeros(1, h, dtype: ScalarType.Float64); // (1 h)
            var (y, next) = S4DKernel.Step(state, u, ab, bb, c);
            state.Dispose();
            state = next;
            ys.Add(y);
        }
        using var yAll = torch.stack(ys, -1);                                      // (1 h l)
        using var y0 = yAll.squeeze(0);                                            // (h l)
        double err = RelErr(y0, k);
        foreach (var y in ys) y.Dispose();
        state.Dispose();
        Assert.True(err <= 1e-10, $"impulse response vs kernel rel. error {err:E3}");
    }

    // ---------------------------------------------------------------- FFT convolution

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(8)]
    [InlineData(31)]
    [InlineData(64)]
    [InlineData(101)]
    public void FftConvEqualsReferenceConv(int l)
    {
        torch.manual_seed(400 + l);
        const int b = 2, h = 3;
        using var u64 = torch.randn(b, h, l, dtype: ScalarType.Float64);          // (b h l)
        using var k64 = torch.randn(h, l, dtype: ScalarType.Float64);             // (h l)
        using var yFft64 = S4DKernel.FftConv(u64, k64);
        using var yRef64 = S4DKernel.ReferenceConv(u64, k64);
        Assert.Equal(new long[] { b, h, l }, yFft64.shape);
        double e64 = RelErr(yFft64, yRef64);
        Assert.True(e64 <= 1e-9, $"float64 l={l}: rel. error {e64:E3}");

        using var u32 = u64.to_type(ScalarType.Float32);
        using var k32 = k64.to_type(ScalarType.Float32);
        using var yFft32 = S4DKernel.FftConv(u32, k32);
        Assert.Equal(ScalarType.Float32, yFft32.dtype);
        double e32 = RelErr(yFft32, yRef64);
        Assert.True(e32 <= 1e-4, $"float32 l={l}: rel. error {e32:E3}");
    }

    [Fact]
    public void ConvolutionIsCausalWithoutWrapAround()
    {
        // u = [1, 2, 3], k = [1, 10, 100]: causal y = [1, 12, 123]; a circular length-3 convolution would give 231 at t = 0.
        using var u = torch.tensor(new double[] { 1, 2, 3 }).reshape(1, 1, 3);   // (1 1 3)
        using var k = torch.tensor(new double[] { 1, 10, 100 }).reshape(1, 3);    // (1 3)
        var expected = new double[] { 1, 12, 123 };
        using var yRef = S4DKernel.ReferenceConv(u, k);
        using var yFft = S4DKernel.FftConv(u, k);
        Assert.True(RelErr(Doubles(yRef), expected) <= 1e-15);
        Assert.True(RelErr(Doubles(yFft), expected) <= 1e-12);
    }

    // ---------------------------------------------------------------- initialisation

    [Theory]
    [InlineData(1, 2)]
    [InlineData(3, 10)]
    [InlineData(4, 64)]
    public void InitLinAndInvMatchTheClosedForms(int h, int n)
    {
        var (linRe, linIm) = S4DKernel.InitLin(h, n);
        var (invRe, invIm) = S4DKernel.InitInv(h, n);
        using var a = linRe; using var b = linIm; using var c = invRe; using var d = invIm;
        foreach (var t in new[] { a, b, c, d })
        {
            Assert.Equal(new long[] { h, n / 2 }, t.shape);
            Assert.Equal(ScalarType.Float32, t.dtype);
        }
        var lr = Doubles(a); var li = Doubles(b); var ir = Doubles(c); var ii = Doubles(d);
        for (int i = 0; i < h; i++)
        {
            for (int k = 0; k < n / 2; k++)
            {
                int ik = i * (n / 2) + k;
                double lin = Math.PI * k;
                double inv = n / Math.PI * (n / (2.0 * k + 1.0) - 1.0);
                Assert.Equal(-0.5, -Math.Exp(lr[ik]), 6);                          // Re A = -1/2
                Assert.Equal(-0.5, -Math.Exp(ir[ik]), 6);
                Assert.True(-Math.Exp(lr[ik]) < 0 && -Math.Exp(ir[ik]) < 0);
                Assert.True(Math.Abs(li[ik] - lin) <= 1e-6 * Math.Max(1, lin), $"Lin A_imag[{i},{k}] = {li[ik]}, expected {lin}");
                Assert.True(Math.Abs(ii[ik] - inv) <= 1e-6 * Math.Max(1, Math.Abs(inv)), $"Inv A_imag[{i},{k}] = {ii[ik]}, expected {inv}");
            }
        }
        // the continuous A is Hurwitz whatever log_A_real holds
        torch.manual_seed(505);
        using var anyLog = torch.randn(h, n / 2) * 5.0;
        using var A = S4DKernel.ContinuousA(anyLog, b);
        using var re = A.real;
        Assert.True(re.lt(0).all().item<bool>());
    }

    [Fact]
    public void InitRejectsOddStateSize()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => S4DKernel.InitLin(2, 7));
        Assert.Throws<ArgumentOutOfRangeException>(() => new S4DBlock(4, dState: 5));
    }

    // ---------------------------------------------------------------- the block

    [Theory]
    [InlineData(S4DInit.Lin, 1, ScalarType.Float32)]
    [InlineData(S4DInit.Lin, 5, ScalarType.Float32)]
    [InlineData(S4DInit.Lin, 64, ScalarType.Float32)]
    [InlineData(S4DInit.Inv, 17, ScalarType.Float32)]
    [InlineData(S4DInit.Inv, 33, ScalarType.Float64)]
    [InlineData(S4DInit.Lin, 40, ScalarType.Float64)]
    public void CnnIsRnn(S4DInit init, int l, ScalarType dtype)
    {
        torch.manual_seed(600 + l);
        const int b = 2, h = 6, n = 16;
        using var block = new S4DBlock(h, n, dtMin: 0.01, dtMax: 0.3, init: init);
        if (dtype != ScalarType.Float32) block.to(dtype);
        block.eval();
        using var noGrad = torch.no_grad();
        using var x = torch.randn(b, l, h, dtype: dtype);                          // (b l h)

        using var yConv = block.call(x);                                           // (b l h)
        Assert.Equal(new long[] { b, l, h }, yConv.shape);
        Assert.Equal(dtype, yConv.dtype);
        Assert.All(block.parameters(), p => Assert.Equal(dtype, p.dtype));

        using var state = block.AllocateState(b);
        Assert.Equal(dtype == ScalarType.Float64 ? ScalarType.ComplexFloat64 : ScalarType.ComplexFloat32, state.Ssm.dtype);
        var ys = new List<Tensor>();
        for (int t = 0; t < l; t++)
        {
            using var xt = x.select(1, t);                                         // (b h)
            ys.Add(block.Step(xt, state));                                         // (b h)
        }
        using var yRec = torch.stack(ys, 1);                                       // (b l h)
        foreach (var y in ys) y.Dispose();

        double tol = dtype == ScalarType.Float64 ? 1e-9 : 1e-4;
        double err = RelErr(yRec, yConv);
        Assert.True(err <= tol, $"conv vs recurrent ({init}, l={l}, {dtype}): rel. error {err:E3}");
    }

    [Fact]
    public void EveryParameterGetsAFiniteNonZeroGradient()
    {
        torch.manual_seed(650);
        using var block = new S4DBlock(4, 8, dropout: 0.1);
        block.train();
        using var x = torch.randn(2, 12, 4);                                       // (b l h)
        using var y = block.call(x);                                               // (b l h)
        using var sq = y.square();
        using var loss = sq.sum();
        loss.backward();
        foreach (var (name, p) in block.named_parameters())
        {
            var g = p.grad;
            Assert.True(g is not null, $"{name} has no gradient");
            Assert.True(g!.isfinite().all().item<bool>(), $"{name} has a non-finite gradient");
            Assert.True(g.abs().max().item<float>() > 0, $"{name} has an all-zero gradient");
        }
    }

    [Fact]
    public void AllocateStateIsComplexZerosOfTheRightShape()
    {
        using var block = new S4DBlock(5, 12);
        using var state = block.AllocateState(3);
        Assert.Null(state.Conv);
        Assert.Equal(new long[] { 3, 5, 6 }, state.Ssm.shape);
        Assert.Equal(ScalarType.ComplexFloat32, state.Ssm.dtype);
        using var mag = state.Ssm.abs();
        Assert.Equal(0.0, mag.max().item<float>());
    }

    [Fact]
    public void StateDictNamesAreThoseOfS4dPy()
    {
        torch.manual_seed(707);
        const int h = 5, n = 12;
        using var block = new S4DBlock(h, n);
        var sd = block.state_dict();
        var expected = new Dictionary<string, long[]>
        {
            ["D"] = [h],
            ["kernel.C"] = [h, n / 2, 2],
            ["kernel.log_dt"] = [h],
            ["kernel.log_A_real"] = [h, n / 2],
            ["kernel.A_imag"] = [h, n / 2],
            ["output_linear.0.weight"] = [2 * h, h, 1],
            ["output_linear.0.bias"] = [2 * h],
        };
        Assert.Equal(expected.Keys.OrderBy(s => s, StringComparer.Ordinal), sd.Keys.OrderBy(s => s, StringComparer.Ordinal));
        foreach (var (name, shape) in expected)
        {
            Assert.Equal(shape, sd[name].shape);
            Assert.Equal(ScalarType.Float32, sd[name].dtype);
        }
        // every entry is a trainable parameter (s4d.py with lr=None registers no buffers)
        Assert.Equal(expected.Count, block.named_parameters().Count());

        // the initial dt lies in [dt_min, dt_max]
        var dt = Doubles(sd["kernel.log_dt"]).Select(Math.Exp).ToArray();
        Assert.All(dt, v => Assert.InRange(v, 0.001 * (1 - 1e-6), 0.1 * (1 + 1e-6)));
    }

    // ---------------------------------------------------------------- blocked kernel

    /// <summary>
    /// The direct float64 Vandermonde sum K[i, t] = 2 Re( sum_k C_k B_bar_k exp(t dt A_k) ) with one Complex.Exp per
    /// term (no powers, no blocks), from float64 copies of the parameters.
    /// </summary>
    private static double[] DirectKernel(Tensor logDt, Tensor logAReal, Tensor aImag, Tensor c, int l)
    {
        var ld = Doubles(logDt);
        var lr = Doubles(logAReal);
        var im = Doubles(aImag);
        var cc = Complexes(c);
        int h = ld.Length, half = lr.Length / h;
        var k = new double[h * l];
        for (int i = 0; i < h; i++)
        {
            double dt = Math.Exp(ld[i]);
            for (int j = 0; j < half; j++)
            {
                var A = new Complex(-Math.Exp(lr[i * half + j]), im[i * half + j]);
                Complex cb = cc[i * half + j] * (Complex.Exp(dt * A) - Complex.One) / A;
                for (int t = 0; t < l; t++) k[i * l + t] += 2 * (cb * Complex.Exp(t * dt * A)).Real;
            }
        }
        return k;
    }

    /// <summary>Random kernel parameters in float64: log dt in [log dtMin, log dtMax), A from init, C complex normal.</summary>
    private static (Tensor logDt, Tensor logAReal, Tensor aImag, Tensor c) RandomKernelParameters(
        int h, int n, S4DInit init, double dtMin, double dtMax)
    {
        using var r = torch.rand(h, dtype: ScalarType.Float64);
        var logDt = r * (Math.Log(dtMax) - Math.Log(dtMin)) + Math.Log(dtMin);          // (h)
        var (lar, ai) = S4DKernel.Init(init, h, n, ScalarType.Float64);                  // (h n/2)
        using var jitter = torch.randn(h, n / 2, dtype: ScalarType.Float64) * 0.3;       // away from the exact -1/2
        var logAReal = lar + jitter;
        lar.Dispose();
        return (logDt, logAReal, ai, RandomComplex(h, n / 2, ScalarType.Float64));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]       // s = 2, m = 2: one padded column
    [InlineData(9)]       // a perfect square
    [InlineData(10)]      // s = 4, m = 3: two padded columns
    [InlineData(23)]
    [InlineData(100)]
    [InlineData(257)]     // s = 17, m = 16: 15 padded columns
    [InlineData(1000)]
    public void BlockedKernelEqualsDirectVandermondeSum(int l)
    {
        torch.manual_seed(800 + l);
        const int h = 3, n = 12;
        var (logDt, logAReal, aImag, c) = RandomKernelParameters(h, n, S4DInit.Lin, 0.001, 0.3);
        using var ld = logDt; using var lr = logAReal; using var ai = aImag; using var cc = c;
        var expected = DirectKernel(ld, lr, ai, cc, l);

        using var k64 = S4DKernel.Kernel(ld, lr, ai, cc, l);                              // (h l)
        Assert.Equal(new long[] { h, l }, k64.shape);
        Assert.Equal(ScalarType.Float64, k64.dtype);
        double e64 = RelErr(Doubles(k64), expected);
        Assert.True(e64 <= 1e-12, $"float64 blocked kernel l={l} (s={S4DKernel.BlockSize(l)}): rel. error {e64:E3}");

        using var ref64 = S4DKernel.ReferenceKernel(ld, lr, ai, cc, l);                   // the direct tensor form
        Assert.True(RelErr(Doubles(ref64), expected) <= 1e-12);

        using var ld32 = ld.to_type(ScalarType.Float32);
        using var lr32 = lr.to_type(ScalarType.Float32);
        using var ai32 = ai.to_type(ScalarType.Float32);
        using var c32 = cc.to_type(ScalarType.ComplexFloat32);
        using var k32 = S4DKernel.Kernel(ld32, lr32, ai32, c32, l);
        Assert.Equal(ScalarType.Float32, k32.dtype);
        // oracle from the float32-rounded parameters, so only the kernel's own rounding is measured
        double e32 = RelErr(Doubles(k32), DirectKernel(ld32, lr32, ai32, c32, l));
        Assert.True(e32 <= 2e-6, $"float32 blocked kernel l={l}: rel. error {e32:E3}");
    }

    [Fact]
    public void BlockSizeCoversTheLengthWithLessThanOneBlockOfPadding()
    {
        foreach (long l in new long[] { 1, 2, 3, 4, 5, 15, 16, 17, 16000, 16001, 65536, 1L << 40, (1L << 40) + 1 })
        {
            long s = S4DKernel.BlockSize(l), m = (l + s - 1) / s;
            Assert.True(s >= 1 && s * s >= l && (s - 1) * (s - 1) < l, $"l={l}: s={s} is not ceil(sqrt l)");
            Assert.True(m * s >= l && m * s - l < s, $"l={l}: {m} blocks of {s}");
        }
    }

    [Theory]
    [InlineData(S4DInit.Lin, 20000)]
    [InlineData(S4DInit.Inv, 20000)]
    public void LongFloat32KernelStaysCloseToTheFloat64Sum(S4DInit init, int l)
    {
        // Realistic audio setting: dt in [1e-3, 1e-1] (s4d.py's defaults), so the slowest modes keep ~e^-10 of their
        // weight at t = 20000 while their phase t dt Im A reaches ~1e3 (Lin) to ~1e5 (Inv) radians.
        torch.manual_seed(850 + (int)init);
        const int h = 4, n = 16;
        var (logDt, logAReal, aImag, c) = RandomKernelParameters(h, n, init, 0.001, 0.1);
        using var ld = logDt; using var lr = logAReal; using var ai = aImag; using var cc = c;
        using var ld32 = ld.to_type(ScalarType.Float32);
        using var lr32 = lr.to_type(ScalarType.Float32);
        using var ai32 = ai.to_type(ScalarType.Float32);
        using var c32 = cc.to_type(ScalarType.ComplexFloat32);
        var expected = DirectKernel(ld32, lr32, ai32, c32, l);                              // float64 sum, same parameters

        using var k32 = S4DKernel.Kernel(ld32, lr32, ai32, c32, l);                          // (h l) float32
        double err = RelErr(Doubles(k32), expected);
        Assert.True(err <= 2e-6, $"float32 kernel l={l} ({init}): rel. error {err:E3} against the float64 sum");

        // the tail matters too: compare the last quarter relative to its own scale (a float32 argument t dt A, as in
        // the direct form, loses ~1e-4 here)
        using var tail = k32.narrow(-1, 3 * l / 4, l / 4);
        var expectedTail = Enumerable.Range(0, h).SelectMany(i => expected.Skip(i * l + 3 * l / 4).Take(l / 4)).ToArray();
        double tailErr = RelErr(Doubles(tail), expectedTail);
        Assert.True(tailErr <= 1e-5, $"float32 kernel tail l={l} ({init}): rel. error {tailErr:E3}");
    }

    [Fact]
    public void BlockedKernelGradientsEqualTheDirectFormsGradients()
    {
        torch.manual_seed(870);
        const int h = 3, n = 8, l = 29;
        var (logDt, logAReal, aImag, c) = RandomKernelParameters(h, n, S4DInit.Inv, 0.01, 0.3);
        using var cReal0 = torch.view_as_real(c);
        var leaves = new[] { logDt, logAReal, aImag, cReal0.clone() };
        c.Dispose();
        using var weights = torch.randn(h, l, dtype: ScalarType.Float64);                  // a random linear functional of K

        Tensor[] Grads(Func<Tensor, Tensor, Tensor, Tensor, long, Tensor> kernel)
        {
            var ps = leaves.Select(t => t.detach().requires_grad_(true)).ToArray();
            using var cc = torch.view_as_complex(ps[3]);
            using var k = kernel(ps[0], ps[1], ps[2], cc, l);
            using var prod = k * weights;
            using var loss = prod.sum();
            loss.backward();
            return ps.Select(p => p.grad!.clone()).ToArray();
        }

        var fast = Grads(S4DKernel.Kernel);
        var direct = Grads(S4DKernel.ReferenceKernel);
        string[] names = ["log_dt", "log_A_real", "A_imag", "C"];
        for (int i = 0; i < 4; i++) Close(fast[i], direct[i], 1e-10, $"d loss / d {names[i]}");
        foreach (var t in fast.Concat(direct).Concat(leaves)) t.Dispose();
    }

    [Fact]
    public void BlockForwardEqualsAnIndependentFloat64Composition()
    {
        // forward = GLU(Conv1d_1x1(GELU(K * u + D u))) over channels, assembled here from the direct kernel, the
        // direct convolution and conv1d on the state-dict tensors (the block itself applies a linear on (b, l, h)).
        torch.manual_seed(880);
        const int b = 2, h = 4, n = 8, l = 13;
        using var block = new S4DBlock(h, n, dtMin: 0.01, dtMax: 0.3);
        block.to(ScalarType.Float64);
        block.eval();
        using var noGrad = torch.no_grad();
        using var x = torch.randn(b, l, h, dtype: ScalarType.Float64);                    // (b l h)
        using var y = block.call(x);                                                      // (b l h)

        var sd = block.state_dict();
        using var cc = torch.view_as_complex(sd["kernel.C"]);
        using var k = S4DKernel.ReferenceKernel(sd["kernel.log_dt"], sd["kernel.log_A_real"], sd["kernel.A_imag"], cc, l); // (h l)
        using var u = x.transpose(1, 2).contiguous();                                     // (b h l)
        using var conv = S4DKernel.ReferenceConv(u, k);                                   // (b h l)
        using var skip = u * sd["D"].unsqueeze(-1);
        using var pre = conv + skip;
        using var act = nn.functional.gelu(pre);
        using var mixed = nn.functional.conv1d(act, sd["output_linear.0.weight"], sd["output_linear.0.bias"]); // (b 2h l)
        using var glu = nn.functional.glu(mixed, 1);                                      // (b h l)
        using var expected = glu.transpose(1, 2);                                         // (b l h)
        Close(y, expected, 1e-12, "S4DBlock.forward vs direct composition");
    }

    // ---------------------------------------------------------------- recurrent step: cache and in-place state

    private static Tensor StepThrough(IRecurrentLayer layer, Tensor x, LayerState state)
    {
        var ys = new List<Tensor>();
        for (long t = 0; t < x.size(1); t++)
        {
            using var xt = x.select(1, t);                                                // (b d)
            ys.Add(layer.Step(xt, state));
        }
        var y = torch.stack(ys, 1);                                                       // (b l d)
        foreach (var t in ys) t.Dispose();
        return y;
    }

    [Fact]
    public void StepUpdatesTheStateTensorInPlaceAndSurvivesTheCallersDisposeScope()
    {
        torch.manual_seed(900);
        const int b = 2, h = 5, n = 8, l = 11;
        using var block = new S4DBlock(h, n, dtMin: 0.01, dtMax: 0.3);
        block.eval();
        using var noGrad = torch.no_grad();
        using var x = torch.randn(b, l, h);
        using var yConv = block.call(x);

        using var state = block.AllocateState(b);
        var handle = state.Ssm;
        var ys = new List<Tensor>();
        for (long t = 0; t < l; t++)
        {
            using var scope = torch.NewDisposeScope();                                    // as a generation loop would
            using var xt = x.select(1, t);
            ys.Add(block.Step(xt, state).MoveToOuterDisposeScope());
            Assert.Same(handle, state.Ssm);                                               // the same tensor, not a replacement
        }
        Assert.False(state.Ssm.IsInvalid, "the state tensor was disposed by the caller's scope");
        using var mag = state.Ssm.abs();
        Assert.True(mag.max().item<float>() > 0, "the state never changed");
        using var yRec = torch.stack(ys, 1);
        foreach (var y in ys) y.Dispose();
        Close(yRec, yConv, 1e-4, "stepped inside dispose scopes vs forward");
    }

    [Fact]
    public void StepUsesTheParametersOfTheLatestAllocateState()
    {
        // The discretisation is cached at AllocateState: after an in-place parameter change (an optimizer step), a new
        // state must step with the new parameters; and a dtype change (new parameter tensors) must rebuild the cache.
        torch.manual_seed(910);
        const int b = 1, h = 3, n = 6, l = 9;
        using var block = new S4DBlock(h, n, dtMin: 0.01, dtMax: 0.3);
        block.eval();
        using var noGrad = torch.no_grad();
        using var x = torch.randn(b, l, h);
        using (var s0 = block.AllocateState(b)) { using var first = StepThrough(block, x, s0); }

        foreach (var (_, p) in block.KernelParameters.named_parameters())
        {
            using var delta = torch.randn_like(p) * 0.2;
            p.add_(delta);                                                                // in place: same tensors
        }
        using var yConv = block.call(x);
        using (var s1 = block.AllocateState(b))
        {
            using var yRec = StepThrough(block, x, s1);
            Close(yRec, yConv, 1e-4, "steps after an in-place parameter change");
        }

        block.to(ScalarType.Float64);                                                     // replaces every parameter
        using var x64 = x.to_type(ScalarType.Float64);
        using var yConv64 = block.call(x64);
        using var s2 = torch.zeros(b, h, n / 2, dtype: ScalarType.ComplexFloat64);        // a state made elsewhere
        using var ls = new LayerState(null, s2.clone());
        using var yRec64 = StepThrough(block, x64, ls);
        Close(yRec64, yConv64, 1e-10, "steps after to(float64) without a new AllocateState");
    }

    [Fact]
    public void StepRejectsAStateOfTheWrongShape()
    {
        using var block = new S4DBlock(4, 8);
        using var x = torch.randn(2, 4);
        using var wrong = new LayerState(null, torch.zeros(2, 4, 3, dtype: ScalarType.ComplexFloat32));
        Assert.Throws<ArgumentException>(() => block.Step(x, wrong));
    }

    // ---------------------------------------------------------------- Mamba / Mamba-2 state dtype

    [Fact]
    public void MambaFloat64ModelStepsInFloat64AndEqualsForward()
    {
        torch.manual_seed(920);
        const int b = 2, l = 10;
        using var m = new Mamba(new MambaConfig(8, DState: 4, DConv: 3));
        m.to(ScalarType.Float64);
        using var noGrad = torch.no_grad();
        using var x = torch.randn(b, l, 8, dtype: ScalarType.Float64);
        using var y = m.call(x);
        using var state = m.AllocateState(b);
        Assert.Equal(ScalarType.Float64, state.Ssm.dtype);
        Assert.Equal(ScalarType.Float64, state.Conv!.dtype);
        using var yRec = StepThrough(m, x, state);
        Assert.Equal(ScalarType.Float64, yRec.dtype);
        Close(yRec, y, 1e-10, "Mamba float64 steps vs forward");

        using var m32 = new Mamba(new MambaConfig(8, DState: 4));
        using var s32 = m32.AllocateState(1);
        Assert.Equal(ScalarType.Float32, s32.Ssm.dtype);                                  // fp32 models keep an fp32 state
    }

    [Fact]
    public void Mamba2Float64ModelStepsInFloat64AndEqualsForward()
    {
        torch.manual_seed(930);
        const int b = 2, l = 10;
        using var m = new Mamba2(new Mamba2Config(16, DState: 8, DConv: 4, Expand: 2, HeadDim: 8, ChunkSize: 4));
        m.to(ScalarType.Float64);
        using var noGrad = torch.no_grad();
        using var x = torch.randn(b, l, 16, dtype: ScalarType.Float64);
        using var y = m.call(x);
        using var state = m.AllocateState(b);
        Assert.Equal(ScalarType.Float64, state.Ssm.dtype);
        Assert.Equal(ScalarType.Float64, state.Conv!.dtype);
        using var yRec = StepThrough(m, x, state);
        Close(yRec, y, 1e-10, "Mamba2 float64 steps vs forward");
    }
}
