// The selective scan of Mamba-1 (S6; Gu & Dao 2023, Algorithm 2), with mamba_ssm's `selective_scan_fn` semantics.
//
// Glossary (letters as in the paper and in mamba_ssm):
//   b  batch            d  channels (d_inner)        l  sequence length
//   n  state size        g  groups of B/C (channel c uses group c / (d / g))
//   u  input x_t         delta  step size Δ          A  (d, n) state matrix (diagonal per channel, negative)
//   B, C  input/output matrices, varying in time: (b, n, l) or grouped (b, g, n, l)
// Recurrence per channel (eq. 2a-2b, with the discretisation of Discretization.cs: ZOH for A, Euler for B):
//   h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t          h: (b, d, n)
//   y_t = C_t · h_t  (+ D u_t)  (* silu(z_t))
//
// Three implementations, all device- and dtype-generic and tested against each other:
//   Reference  the sequential loop (selective_scan_ref), kept as the oracle.
//   Fused      CUDA tensors with libssm_cuda.so loaded: the CUDA kernels (SelectiveScanCudaKernel), same contract;
//              bfloat16 activations are read as they are (n <= 32), states and arithmetic stay float32.
//              CPU tensors: one pass of a C# kernel (SelectiveScanCpuKernel) over raw memory: Δ's bias and
//              softplus, the scan, C·h, D skip and z gate; the (b, d, l, n) state is never materialised and
//              the hand-written backward recomputes it per channel.
//   Chunked    any device: chunks of length K in tensor ops; inside a chunk h = W β with the stable decay
//              matrix W[t, s] = exp(S_t - S_s) (s <= t), S the cumulative sum of Δ A; autograd by torch.
// Auto picks Fused on the CPU and on CUDA when the kernel library is loaded, Chunked elsewhere. bench/ measures them.
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Ssm.Backbone.Scans;

/// <summary>Which implementation of the scan core runs.</summary>
public enum ScanImpl { Auto, Fused, Chunked, Reference }

public static class SelectiveScan
{
    /// <summary>
    /// mamba_ssm's selective_scan_fn. u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l);
    /// D, deltaBias: (d). Returns y (b, d, l) in u's dtype and, when asked, the last state (b, d, n) in the
    /// compute dtype (float32, or float64 for float64 inputs).
    /// </summary>
    public static (Tensor y, Tensor? lastState) Forward(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C,
        Tensor? D = null, Tensor? z = null, Tensor? deltaBias = null, bool deltaSoftplus = false,
        bool returnLastState = false, ScanImpl impl = ScanImpl.Auto)
    {
        Validate(u, delta, A, B, C, D, z, deltaBias);
        using var scope = torch.NewDisposeScope();
        var ct = ComputeType(u);
        var Ac = A.to_type(ct);
        if (impl == ScanImpl.Auto)
            impl = u.device_type == DeviceType.CPU || (u.device_type == DeviceType.CUDA && ct == ScalarType.Float32 && SelectiveScanCudaKernel.Available)
                ? ScanImpl.Fused : ScanImpl.Chunked;

        Tensor outp, last;
        if (u.shape[2] == 0)
        {
            // An empty sequence: no output, and the state stays at its zero start.
            outp = torch.empty_like(u);
            last = torch.zeros(new[] { u.shape[0], u.shape[1], A.shape[1] }, ct, u.device);
            return (outp.MoveToOuterDisposeScope(), returnLastState ? last.MoveToOuterDisposeScope() : null);
        }
        if (impl == ScanImpl.Fused)
        {
            // One pass: Δ's bias and softplus, the scan, D skip and z gate all inside the kernel.
            if (u.device_type == DeviceType.CUDA)
            {
                // bfloat16 activations reach the tiled kernel as they are (it reads them and computes in float32);
                // anything else runs in float32. A, D and the Δ bias are float32 parameters either way.
                var act = u.dtype == ScalarType.BFloat16 && SelectiveScanCudaKernel.TiledFits(u.shape[1], A.shape[1], Grouped(B).shape[1])
                    ? ScalarType.BFloat16 : ct;
                (outp, last) = SelectiveScanCudaKernel.Apply(u.to_type(act), delta.to_type(act), Ac, Grouped(B).to_type(act),
                    Grouped(C).to_type(act), D?.to_type(ct), z?.to_type(act), deltaBias?.to_type(ct), deltaSoftplus);
            }
            else
                (outp, last) = SelectiveScanCpuKernel.Apply(u.to_type(ct), delta.to_type(ct), Ac, Grouped(B).to_type(ct), Grouped(C).to_type(ct), D?.to_type(ct), z?.to_type(ct), deltaBias?.to_type(ct), deltaSoftplus);
            outp = outp.to_type(u.dtype);
        }
        else
        {
            var uc = u.to_type(ct);
            var Bg = Grouped(B).to_type(ct);                                    // (b g n l)
            var Cg = Grouped(C).to_type(ct);
            var dc = Discretization.StepSize(delta.to_type(ct), deltaBias?.to_type(ct).unsqueeze(-1), deltaSoftplus); // (b d l)
            Tensor y;
            (y, last) = impl == ScanImpl.Chunked ? Chunked(uc, dc, Ac, Bg, Cg) : Sequential(uc, dc, Ac, Bg, Cg);
            outp = Epilogue(y, uc, D, z, u.dtype);
        }
        return (outp.MoveToOuterDisposeScope(), returnLastState ? last.MoveToOuterDisposeScope() : null);
    }

    /// <summary>The sequential oracle (mamba_ssm's selective_scan_ref): a loop over time in tensor ops.</summary>
    public static (Tensor y, Tensor? lastState) Reference(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C,
        Tensor? D = null, Tensor? z = null, Tensor? deltaBias = null, bool deltaSoftplus = false,
        bool returnLastState = false)
        => Forward(u, delta, A, B, C, D, z, deltaBias, deltaSoftplus, returnLastState, ScanImpl.Reference);

    /// <summary>
    /// One recurrent step (mamba_ssm's selective_state_update): u, delta, z: (b, d); B, C: (b, n) or (b, g, n);
    /// state (b, d, n) is updated in place. Returns y (b, d) in u's dtype.
    /// </summary>
    public static Tensor Step(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor state,
        Tensor? D = null, Tensor? z = null, Tensor? deltaBias = null, bool deltaSoftplus = false)
    {
        using var scope = torch.NewDisposeScope();
        var ct = state.dtype;
        long d = u.shape[1];
        var dt = Discretization.StepSize(delta.to_type(ct), deltaBias?.to_type(ct), deltaSoftplus); // (b d)
        var Bd = PerChannel(B.to_type(ct), d);                                   // (b d n)
        var Cd = PerChannel(C.to_type(ct), d);
        var dtn = dt.unsqueeze(-1);                                              // (b d 1)
        var dA = Discretization.ZohA(dtn, A.to_type(ct));                        // (b d n)
        var dBu = Discretization.EulerB(dtn, Bd) * u.to_type(ct).unsqueeze(-1);  // (b d n)
        state.mul_(dA).add_(dBu);
        var y = (state * Cd).sum(-1);                                            // (b d)
        var outp = Epilogue(y.unsqueeze(-1), u.to_type(ct).unsqueeze(-1), D, z?.unsqueeze(-1), u.dtype).squeeze(-1);
        return outp.MoveToOuterDisposeScope();
    }

    // ---------------------------------------------------------------- shared pieces

    internal static ScalarType ComputeType(Tensor t) => t.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;

    /// <summary>(b n l) -> (b 1 n l); (b g n l) unchanged.</summary>
    static Tensor Grouped(Tensor BC) => BC.dim() == 3 ? BC.unsqueeze(1) : BC;

    /// <summary>Grouped B/C (b, g, ...) -> per channel (b, d, ...): channel c reads group c / (d / g).</summary>
    static Tensor ToChannels(Tensor grouped, long d) => grouped.repeat_interleave(d / grouped.shape[1], dim: 1);

    /// <summary>Step-mode B/C: (b n) or (b g n) -> (b d n).</summary>
    static Tensor PerChannel(Tensor BC, long d) => ToChannels(BC.dim() == 2 ? BC.unsqueeze(1) : BC, d);

    /// <summary>y + D u, times silu(z), cast to the output dtype.</summary>
    static Tensor Epilogue(Tensor y, Tensor u, Tensor? D, Tensor? z, ScalarType outType)
    {
        if (D is not null) y = y + u * D.to_type(y.dtype).unsqueeze(-1);
        if (z is not null) y = y * F.silu(z.to_type(y.dtype));
        return y.to_type(outType);
    }

    static void Validate(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? bias)
    {
        if (u.dim() != 3) throw new ArgumentException($"u must be (b, d, l), got {Shape(u)}");
        long b = u.shape[0], d = u.shape[1], l = u.shape[2];
        if (!delta.shape.SequenceEqual(u.shape)) throw new ArgumentException($"delta must match u {Shape(u)}, got {Shape(delta)}");
        if (A.dim() != 2 || A.shape[0] != d) throw new ArgumentException($"A must be (d={d}, n), got {Shape(A)}");
        long n = A.shape[1];
        foreach (var (name, m) in new[] { ("B", B), ("C", C) })
        {
            bool ok = (m.dim() == 3 && m.shape[0] == b && m.shape[1] == n && m.shape[2] == l)
                   || (m.dim() == 4 && m.shape[0] == b && m.shape[2] == n && m.shape[3] == l && m.shape[1] > 0 && d % m.shape[1] == 0);
            if (!ok) throw new ArgumentException($"{name} must be (b, n, l) or (b, g, n, l) with g dividing d={d}, got {Shape(m)}");
        }
        if (D is not null && (D.dim() != 1 || D.shape[0] != d)) throw new ArgumentException($"D must be (d={d}), got {Shape(D)}");
        if (bias is not null && (bias.dim() != 1 || bias.shape[0] != d)) throw new ArgumentException($"deltaBias must be (d={d}), got {Shape(bias)}");
        if (z is not null && !z.shape.SequenceEqual(u.shape)) throw new ArgumentException($"z must match u {Shape(u)}, got {Shape(z)}");
    }

    static string Shape(Tensor t) => "(" + string.Join(", ", t.shape) + ")";

    // ---------------------------------------------------------------- the oracle

    /// <summary>Core recurrence, one time step at a time. Inputs in compute dtype; B, C (b g n l).</summary>
    static (Tensor y, Tensor last) Sequential(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C)
    {
        long b = u.shape[0], d = u.shape[1], n = A.shape[1];
        // unbind once along time: its backward is one stack, where per-step slicing would give every step a
        // full-size gradient (quadratic in l).
        var us = u.unbind(2);                                                    // l x (b d)
        var ds = delta.unbind(2);
        var Bs = B.unbind(3);                                                    // l x (b g n)
        var Cs = C.unbind(3);
        var h = torch.zeros(new[] { b, d, n }, u.dtype, u.device);
        var ys = new Tensor[us.Length];
        for (int t = 0; t < us.Length; t++)
        {
            using var step = torch.NewDisposeScope();
            var dt = ds[t].unsqueeze(-1);                                        // (b d 1)
            var dA = Discretization.ZohA(dt, A);                                 // (b d n)
            var Bt = ToChannels(Bs[t], d);                                       // (b d n)
            var dBu = Discretization.EulerB(dt, Bt) * us[t].unsqueeze(-1);       // (b d n)
            var next = (dA * h + dBu).MoveToOuterDisposeScope();                 // (b d n)
            h.Dispose();                                                          // autograd keeps its own reference
            h = next;
            ys[t] = (h * ToChannels(Cs[t], d)).sum(-1).MoveToOuterDisposeScope();   // (b d)
        }
        return (torch.stack(ys, 2), h);                                          // (b d l), (b d n)
    }

    // ---------------------------------------------------------------- the tensor-op path for any device

    /// <summary>Chunk length of the tensor-op path: W is (b, d, n, K, K) per chunk.</summary>
    public const int ChunkLength = 16;

    static (Tensor y, Tensor last) Chunked(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C)
    {
        long b = u.shape[0], d = u.shape[1], l = u.shape[2], n = A.shape[1];
        var h = torch.zeros(new[] { b, d, n }, u.dtype, u.device);              // state entering the chunk
        var ys = new List<Tensor>();
        for (long t0 = 0; t0 < l; t0 += ChunkLength)
        {
            using var step = torch.NewDisposeScope();
            long k = Math.Min(ChunkLength, l - t0);
            var sl = TensorIndex.Slice(t0, t0 + k);
            var dt = delta[.., .., sl];                                          // (b d k)
            var Bk = ToChannels(B[.., .., .., sl], d);                           // (b d n k)
            var Ck = ToChannels(C[.., .., .., sl], d);
            var S = torch.cumsum(dt.unsqueeze(2) * A.unsqueeze(0).unsqueeze(-1), 3); // (b d n k): sum_{r<=t} Δ_r A
            var beta = Discretization.EulerB(dt.unsqueeze(2), Bk) * u[.., .., sl].unsqueeze(2); // (b d n k)
            // W[t, s] = exp(S_t - S_s) for s <= t, else 0; masking before exp keeps it finite and stable.
            var diff = S.unsqueeze(-1) - S.unsqueeze(-2);                        // (b d n k k) [t, s]
            var upper = torch.ones(k, k, dtype: ScalarType.Bool, device: u.device).triu(1);
            var W = torch.exp(diff.masked_fill(upper, double.NegativeInfinity));
            var hs = torch.matmul(W, beta.unsqueeze(-1)).squeeze(-1)             // (b d n k)
                   + torch.exp(S) * h.unsqueeze(-1);
            ys.Add((hs * Ck).sum(2).MoveToOuterDisposeScope());                  // (b d k)
            var next = hs[.., .., .., -1].MoveToOuterDisposeScope();
            h.Dispose();
            h = next;
        }
        return (torch.cat(ys, 2), h);
    }
}
