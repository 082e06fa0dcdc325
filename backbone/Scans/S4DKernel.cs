// S4D: the diagonal structured state space kernel (Gu, Gupta, Goel, Re 2022, "On the Parameterization and
// Initialization of Diagonal State Space Models"; state-spaces/s4 models/s4/s4d.py).
//
// Glossary (code letter -> paper symbol):
//   b      batch size
//   h      number of independent SSMs = model width d_model (H in s4d.py)
//   n      state size N; the diagonal A holds n/2 complex conjugate pairs and only one of each pair is stored,
//          so every A, B, C, state tensor here is (h, n/2) and the real output is 2 * Re(...) (the conjugate half)
//   l      sequence length L
//   dt     step size Delta = exp(log_dt)                                    (h)
//   A      continuous diagonal state matrix  -exp(log_A_real) + i A_imag    (h, n/2), Re A < 0 (stable)
//   B      input matrix; fixed to 1 and folded into C, as s4d.py does
//   C      output matrix, complex                                           (h, n/2)
//   A_bar, B_bar   the ZOH discretisation (Discretization.ZohA / ZohB), used for both A and B in S4D
//   K      the SSM convolution kernel  K[t] = 2 Re( sum_k C_k B_bar_k A_bar_k^t )     (h, l)
//
// Two equivalent modes, sharing the same parameters:
//   convolution  y = K * u (causal), via FFT at length 2l        -> Kernel + FftConv
//                (ReferenceKernel and ReferenceConv are their direct oracles)
//   recurrence   x_t = A_bar x_{t-1} + B_bar u_t, y_t = 2 Re(C x_t), x_{-1} = 0   -> Discretize + Step (functional)
//                                                                                    or StepInPlace (inference)
// Every function takes device and dtype from its inputs (float32 -> complex64, float64 -> complex128).
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Scans;

/// <summary>The initialisation of the diagonal A (S4D paper, section 4).</summary>
public enum S4DInit
{
    /// <summary>S4D-Lin: A_k = -1/2 + i pi k (a Fourier-like, linearly spaced spectrum).</summary>
    Lin,

    /// <summary>S4D-Inv: A_k = -1/2 + i (n/pi) (n/(2k+1) - 1) (the asymptotics of the HiPPO-LegS spectrum).</summary>
    Inv,
}

public static class S4DKernel
{
    // ---------------------------------------------------------------- initialisation

    /// <summary>
    /// S4D-Lin: log_A_real = log(1/2) so Re A = -exp(log_A_real) = -1/2, and A_imag[h, k] = pi k, k = 0..n/2-1.
    /// Returns (logAReal, AImag), each (h, n/2).
    /// </summary>
    public static (Tensor logAReal, Tensor AImag) InitLin(long h, long n, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        CheckSizes(h, n);
        using var k = torch.arange(n / 2, dtype: ScalarType.Float64, device: device);     // (n/2)
        using var imag = k * Math.PI;                                                     // (n/2)
        return (HalfReal(h, n, dtype, device), Broadcast(imag, h, dtype));
    }

    /// <summary>
    /// S4D-Inv: log_A_real = log(1/2) and A_imag[h, k] = (n/pi) (n/(2k+1) - 1), k = 0..n/2-1, with n the full
    /// state size (as in the S4D paper and the s4 repo's dplr.py, init='inv'). Returns (logAReal, AImag), each (h, n/2).
    /// </summary>
    public static (Tensor logAReal, Tensor AImag) InitInv(long h, long n, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        CheckSizes(h, n);
        using var k = torch.arange(n / 2, dtype: ScalarType.Float64, device: device);     // (n/2)
        using var twoK = k * 2.0;                                                         // (n/2)  2k
        using var odd = twoK + 1.0;                                                       // (n/2)  2k+1
        using var ratio = (double)n / odd;                                                // (n/2)  n/(2k+1)
        using var centred = ratio - 1.0;                                                  // (n/2)
        using var imag = centred * (n / Math.PI);                                         // (n/2)
        return (HalfReal(h, n, dtype, device), Broadcast(imag, h, dtype));
    }

    /// <summary>Dispatch on <paramref name="init"/> to <see cref="InitLin"/> or <see cref="InitInv"/>.</summary>
    public static (Tensor logAReal, Tensor AImag) Init(S4DInit init, long h, long n, ScalarType dtype = ScalarType.Float32, Device? device = null) =>
        init switch
        {
            S4DInit.Lin => InitLin(h, n, dtype, device),
            S4DInit.Inv => InitInv(h, n, dtype, device),
            _ => throw new ArgumentOutOfRangeException(nameof(init), init, "unknown S4D initialisation"),
        };

    /// <summary>The continuous diagonal A = -exp(logAReal) + i AImag (h, n/2), complex; Re A &lt; 0 by construction.</summary>
    public static Tensor ContinuousA(Tensor logAReal, Tensor AImag)
    {
        using var decay = torch.exp(logAReal);                                            // (h n/2)
        using var re = decay.neg();                                                       // (h n/2)
        return torch.complex(re, AImag);                                                  // (h n/2) complex
    }

    // ---------------------------------------------------------------- convolution mode

    /// <summary>
    /// The SSM convolution kernel (s4d.py S4DKernel.forward): K[:, t] = 2 Re( sum_k C_k B_bar_k A_bar_k^t ), t = 0..l-1,
    /// with A_bar = exp(dt A), B_bar = (exp(dt A) - 1) / A (ZOH, B = 1 folded into C).
    /// <para>
    /// Blocked Vandermonde product (exact, no approximation): write t = i s + j with s = ceil(sqrt l), 0 &lt;= j &lt; s,
    /// 0 &lt;= i &lt; m = ceil(l / s). Then A_bar^t = exp(j dt A) exp(i s dt A), so
    ///   K[h, i s + j] = sum_k Re( P[h, k, j] Q[h, k, i] ),  P = 2 C B_bar exp(j dt A)  (h, n/2, s),  Q = exp(i s dt A)  (h, n/2, m)
    /// and with Re(p q) = Re p Re q - Im p Im q this is one real batched matmul over the n real coordinates:
    ///   [Re Q; Im Q]^T (h, m, n) x [Re P; -Im P] (h, n, s) -> (h, m, s) -> reshape (h, m s) -> first l columns.
    /// Only h n/2 (s + m) ~ 2 h (n/2) sqrt(l) complex exponentials are evaluated and nothing of size (h, n/2, l) is
    /// materialised: memory O(h n sqrt l + h l). <see cref="ReferenceKernel"/> is the direct O(h n l) form (the oracle).
    /// </para>
    /// <para>
    /// Precision: the two small tables are computed in float64 (complex128) whatever the parameters' dtype and only then
    /// rounded to it, so for float32 parameters each table entry carries one float32 rounding instead of the error of
    /// a float32 argument t dt A (which grows like |t dt Im A| eps: ~1e-3 rad at t dt Im A ~ 1e4). The float32 error
    /// then stays at the level of the n-term float32 dot product and does not grow with l. Measured against the direct
    /// float64 sum (h 8, n 64, dt in [1e-3, 1e-1], S4D-Lin and S4D-Inv): max error / max |K| ~2e-7 for every l from
    /// 1k to 64k, and &lt;= 5e-7 on the last quarter of K relative to that quarter's own scale; the direct float32 form
    /// (exp of a float32 t dt A, <see cref="ReferenceKernel"/>) gives 2e-6 overall and 8e-5 (Lin) / 3e-4 (Inv) on the
    /// tail at l = 16k, 1e-3 at 64k. The result is differentiable (the casts and the matmul are).
    /// </para>
    /// </summary>
    /// <param name="logDt">(h) log step sizes.</param>
    /// <param name="logAReal">(h, n/2) real; Re A = -exp(logAReal).</param>
    /// <param name="AImag">(h, n/2) real.</param>
    /// <param name="C">(h, n/2) complex.</param>
    /// <param name="l">kernel length, at least 1.</param>
    /// <returns>K (h, l), real, of logDt's dtype.</returns>
    public static Tensor Kernel(Tensor logDt, Tensor logAReal, Tensor AImag, Tensor C, long l)
    {
        CheckKernelArgs(C, l);
        long s = BlockSize(l);                                                           // columns per block
        long m = (l + s - 1) / s;                                                        // blocks, m s >= l
        long h = logDt.size(0);
        var outType = logDt.dtype;

        using var scope = torch.NewDisposeScope();
        // float64 tables (see the remarks): the parameters are upcast, the tables rounded back once at the end.
        var dt = torch.exp(logDt.to_type(ScalarType.Float64));                          // (h)
        var dtCol = dt.unsqueeze(-1);                                                    // (h 1)
        var A = ContinuousA(logAReal.to_type(ScalarType.Float64), AImag.to_type(ScalarType.Float64)); // (h n/2) complex128
        var CB = Discretization.ZohB(dtCol, A, C.to_type(ScalarType.ComplexFloat64));   // (h n/2)    C B_bar
        var A3 = A.unsqueeze(-1);                                                        // (h n/2 1)
        var dtCol3 = dtCol.unsqueeze(-1);                                                // (h 1 1)

        var j = torch.arange(s, dtype: ScalarType.Float64, device: logDt.device);        // (s)
        var jDt = dtCol3 * j;                                                            // (h 1 s)    j dt
        var inner = Discretization.ZohA(jDt, A3);                                        // (h n/2 s)  A_bar^j
        var P = CB.unsqueeze(-1) * inner * 2.0;                                          // (h n/2 s)  2 C B_bar A_bar^j

        var i = torch.arange(m, dtype: ScalarType.Float64, device: logDt.device) * (double)s; // (m)  i s
        var iDt = dtCol3 * i;                                                            // (h 1 m)    i s dt
        var Q = Discretization.ZohA(iDt, A3);                                            // (h n/2 m)  A_bar^(i s)

        var left = torch.cat(new[] { Q.real, Q.imag }, 1).to_type(outType);             // (h n m)    [Re Q; Im Q]
        var right = torch.cat(new[] { P.real, P.imag.neg() }, 1).to_type(outType);      // (h n s)    [Re P; -Im P]
        var blocks = torch.bmm(left.transpose(1, 2), right);                             // (h m s)    K[h, i s + j]
        var flat = blocks.reshape(h, m * s);                                             // (h m s)    t = i s + j
        var K = m * s == l ? flat : flat.narrow(-1, 0, l).contiguous();                  // (h l)
        return K.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The direct Vandermonde form of <see cref="Kernel"/> (the previous implementation, kept as its oracle):
    /// K[:, t] = 2 Re( sum_k C_k B_bar_k exp(t dt A_k) ) with one complex exponential per (h, k, t), computed in the
    /// parameters' dtype. O(h n l) time and memory: for tests and short l only.
    /// </summary>
    public static Tensor ReferenceKernel(Tensor logDt, Tensor logAReal, Tensor AImag, Tensor C, long l)
    {
        CheckKernelArgs(C, l);
        using var dt = torch.exp(logDt);                                                  // (h)
        using var dtCol = dt.unsqueeze(-1);                                               // (h 1)
        using var A = ContinuousA(logAReal, AImag);                                       // (h n/2)
        using var CB = Discretization.ZohB(dtCol, A, C);                                  // (h n/2)    C * B_bar
        using var t = torch.arange(l, dtype: logDt.dtype, device: logDt.device);          // (l)
        using var dtCol3 = dtCol.unsqueeze(-1);                                           // (h 1 1)
        using var tDt = dtCol3 * t;                                                       // (h 1 l)    t dt
        using var A3 = A.unsqueeze(-1);                                                   // (h n/2 1)
        using var V = Discretization.ZohA(tDt, A3);                                       // (h n/2 l)  A_bar^t = exp(t dt A)
        using var S = torch.einsum("hn,hnl->hl", CB, V);                                  // (h l)      complex
        using var re = S.real;                                                            // (h l)
        return re * 2.0;                                                                  // (h l)
    }

    /// <summary>The block size s = ceil(sqrt l) of <see cref="Kernel"/>: t = i s + j, 0 &lt;= j &lt; s (l &gt;= 1).</summary>
    public static long BlockSize(long l)
    {
        long s = (long)Math.Ceiling(Math.Sqrt(l));
        while (s * s < l) s++;                                                            // guard the double rounding
        while (s > 1 && (s - 1) * (s - 1) >= l) s--;
        return Math.Max(s, 1);
    }

    /// <summary>
    /// Causal convolution y[..., t] = sum_{s &lt;= t} k[:, t - s] u[..., s] via rfft / irfft at length 2l
    /// (zero padding, so there is no circular wrap-around), as in s4d.py's S4D.forward.
    /// </summary>
    /// <param name="u">(b, h, l) real.</param>
    /// <param name="k">(h, l) real.</param>
    /// <returns>y (b, h, l), real.</returns>
    public static Tensor FftConv(Tensor u, Tensor k)
    {
        long l = CheckConvShapes(u, k);
        using var kf = torch.fft.rfft(k, n: 2 * l);                                       // (h l+1)    complex
        using var uf = torch.fft.rfft(u, n: 2 * l);                                       // (b h l+1)  complex
        using var yf = uf * kf;                                                           // (b h l+1)
        using var y2 = torch.fft.irfft(yf, n: 2 * l);                                     // (b h 2l)
        using var y = y2.narrow(-1, 0, l);                                                // (b h l)    drop the tail
        return y.contiguous();                                                            // (b h l)
    }

    /// <summary>
    /// The oracle for <see cref="FftConv"/>: the direct causal convolution y[..., t] = sum_{s &lt;= t} k[:, t - s] u[..., s],
    /// one term at a time (O(l^2) small ops; use float64 for a tight comparison).
    /// </summary>
    /// <param name="u">(b, h, l) real.</param>
    /// <param name="k">(h, l) real.</param>
    /// <returns>y (b, h, l).</returns>
    public static Tensor ReferenceConv(Tensor u, Tensor k)
    {
        long l = CheckConvShapes(u, k);
        var columns = new List<Tensor>((int)l);
        try
        {
            for (long t = 0; t < l; t++)
            {
                var acc = torch.zeros(u.size(0), u.size(1), dtype: u.dtype, device: u.device); // (b h)
                for (long s = 0; s <= t; s++)
                {
                    using var kts = k.select(-1, t - s);                                   // (h)
                    using var us = u.select(-1, s);                                        // (b h)
                    using var term = kts * us;                                             // (b h)
                    var next = acc + term;                                                 // (b h)
                    acc.Dispose();
                    acc = next;
                }
                columns.Add(acc);
            }
            return torch.stack(columns, -1);                                               // (b h l)
        }
        finally
        {
            foreach (var c in columns) c.Dispose();
        }
    }

    // ---------------------------------------------------------------- recurrent mode

    /// <summary>
    /// The discretised recurrent matrices, computed once for stepping: A_bar = exp(dt A) (ZohA) and
    /// B_bar = (exp(dt A) - 1) / A (ZohB with B = 1), each (h, n/2) complex. They are the same quantities
    /// <see cref="Kernel"/> uses, so both modes share the parameters.
    /// </summary>
    public static (Tensor ABar, Tensor BBar) Discretize(Tensor logDt, Tensor logAReal, Tensor AImag)
    {
        using var dt = torch.exp(logDt);                                                  // (h)
        using var dtCol = dt.unsqueeze(-1);                                               // (h 1)
        using var A = ContinuousA(logAReal, AImag);                                       // (h n/2)
        using var one = torch.ones(1, dtype: A.dtype, device: A.device);                  // (1)      B = 1
        var aBar = Discretization.ZohA(dtCol, A);                                         // (h n/2)
        var bBar = Discretization.ZohB(dtCol, A, one);                                    // (h n/2)
        return (aBar, bBar);
    }

    /// <summary>
    /// One recurrent step on the complex state: x' = A_bar x + B_bar u_t, y = 2 Re( sum_k C_k x'_k ).
    /// Functional: <paramref name="state"/> is left untouched and the new state is returned (autograd-safe);
    /// the caller owns both returned tensors.
    /// </summary>
    /// <param name="state">x (b, h, n/2) complex.</param>
    /// <param name="u">u_t (b, h) real.</param>
    /// <param name="ABar">(h, n/2) complex, from <see cref="Discretize"/>.</param>
    /// <param name="BBar">(h, n/2) complex, from <see cref="Discretize"/>.</param>
    /// <param name="C">(h, n/2) complex.</param>
    /// <returns>y (b, h) real and the new state x' (b, h, n/2) complex.</returns>
    public static (Tensor y, Tensor state) Step(Tensor state, Tensor u, Tensor ABar, Tensor BBar, Tensor C)
    {
        using var u3 = u.unsqueeze(-1);                                                   // (b h 1)
        using var decayed = ABar * state;                                                 // (b h n/2)
        using var input = BBar * u3;                                                      // (b h n/2)
        var next = decayed + input;                                                       // (b h n/2)
        using var cx = C * next;                                                          // (b h n/2)
        using var sum = cx.sum(-1);                                                       // (b h)   complex
        using var re = sum.real;                                                          // (b h)
        return (re * 2.0, next);                                                          // (b h), (b h n/2)
    }

    /// <summary>
    /// One recurrent step updating <paramref name="state"/> in place (the inference path of S4DBlock.Step):
    /// x &lt;- A_bar x + B_bar u_t, y = Re( sum_k C2_k x_k ) with C2 = 2 C (pass 2 C, e.g. from a cached
    /// discretisation, so the conjugate half costs nothing). Not for autograd (the old state is overwritten).
    /// </summary>
    /// <param name="state">x (b, h, n/2) complex, updated in place.</param>
    /// <param name="u">u_t (b, h) real.</param>
    /// <param name="ABar">(h, n/2) complex.</param>
    /// <param name="BBar">(h, n/2) complex.</param>
    /// <param name="C2">(h, n/2) complex, twice the output matrix C.</param>
    /// <returns>y (b, h) real, of u's dtype.</returns>
    public static Tensor StepInPlace(Tensor state, Tensor u, Tensor ABar, Tensor BBar, Tensor C2)
    {
        using var u3 = u.unsqueeze(-1);                                                   // (b h 1)
        state.mul_(ABar).addcmul_(BBar, u3, 1);                                        // (b h n/2)  x' = A_bar x + B_bar u
        using var cx = state * C2;                                                        // (b h n/2)
        using var sum = cx.sum(-1);                                                       // (b h)      complex
        using var re = sum.real;                                                          // (b h)
        return re.to_type(u.dtype);                                                       // (b h)
    }

    // ---------------------------------------------------------------- helpers

    private static void CheckKernelArgs(Tensor C, long l)
    {
        if (l < 1) throw new ArgumentOutOfRangeException(nameof(l), l, "kernel length must be at least 1");
        if (!C.is_complex()) throw new ArgumentException($"C must be complex (h, n/2), got {C.dtype}", nameof(C));
    }

    private static void CheckSizes(long h, long n)
    {
        if (h < 1) throw new ArgumentOutOfRangeException(nameof(h), h, "h must be at least 1");
        if (n < 2 || n % 2 != 0) throw new ArgumentOutOfRangeException(nameof(n), n, "the state size n must be even and at least 2 (n/2 conjugate pairs)");
    }

    private static Tensor HalfReal(long h, long n, ScalarType dtype, Device? device) =>
        torch.full(new long[] { h, n / 2 }, Math.Log(0.5), dtype: dtype, device: device);  // (h n/2)  log(1/2)

    private static Tensor Broadcast(Tensor row, long h, ScalarType dtype)
    {
        using var r = row.unsqueeze(0);                                                   // (1 n/2)
        using var e = r.expand(h, -1);                                                    // (h n/2)  a view
        using var c = e.to_type(dtype);                                                   // (h n/2)
        return c.contiguous();                                                            // (h n/2)  own storage
    }

    private static long CheckConvShapes(Tensor u, Tensor k)
    {
        if (u.dim() != 3) throw new ArgumentException($"u must be (b, h, l), got [{string.Join(", ", u.shape)}]", nameof(u));
        if (k.dim() != 2 || k.size(0) != u.size(1) || k.size(1) != u.size(2))
            throw new ArgumentException($"k must be (h, l) = ({u.size(1)}, {u.size(2)}), got [{string.Join(", ", k.shape)}]", nameof(k));
        return u.size(-1);
    }
}
