// SSD, the "state space dual" scan of Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", section 6 and Listing 1),
// with the semantics and argument shapes of mamba_ssm's `mamba_chunk_scan_combined` so that any tensor can be
// compared one-to-one with the Python reference.
//
// Per head, the SSM is a scalar-decay linear recurrence over a (p, n) matrix state:
//     h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        (ZOH for A, Euler for B, as in Mamba: Discretization.cs)
//     y_t = h_t C_t + D x_t,   then   y_t = y_t * silu(z_t)
//
// Glossary (code letter -> paper symbol):
//   b  batch
//   l  sequence length (T in the paper)
//   h  number of heads (H); each head has its own scalar A and its own dt
//   p  head dimension (P); x, y, z carry h * p channels
//   g  number of B/C groups (G); head i reads group i / (h / g)   (r = h / g heads per group)
//   n  state size per channel (N)
//   Q  chunk length (block_len / chunk_size)
//   c  number of chunks, ceil(l / Q); the sequence is zero-padded (dt = 0 there, so nothing decays or enters) to c * Q
//   dt the step size Delta (b, l, h); dtBias (h) is added before the optional softplus, then dt is clamped to
//      [dtMin, dtMax] (mamba_ssm's dt_limit, default (0, inf))
//
// Three entry points:
//   ChunkScan  the four-step chunked algorithm with matrix products (training and prefill)
//   Reference  the plain sequential loop over time (the test oracle)
//   Step       one token, updating a caller-owned float32 state in place (generation)
//
// On CUDA with libssm_cuda.so, ChunkScan's step 1 (the diagonal blocks) runs in fused kernels, forward and backward
// (SsdCudaKernel, Native/cuda/ssd_chunk_scan.cu), which never write the (Q, Q) matrices of every head; the other steps
// are the same tensor ops on every device.
//
// Precision: everything is computed in float32 for float32/bfloat16/float16 inputs and in float64 for float64 x;
// y comes back in x's dtype, the states in the compute dtype. Device follows the inputs. Gradients flow through the
// tensor ops to x, dt, A, B, C, D, z, dtBias and initialStates.
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Ssm.Backbone.Scans;

public static class Ssd
{
    /// <summary>
    /// Chunked SSD scan (Mamba-2, the four steps of the paper's Listing 1), equal to mamba_ssm's
    /// <c>mamba_chunk_scan_combined</c>.
    /// </summary>
    /// <param name="x">(b, l, h, p) input.</param>
    /// <param name="dt">(b, l, h) step sizes (before dtBias / softplus).</param>
    /// <param name="A">(h) negative decay rates.</param>
    /// <param name="B">(b, l, g, n) input projection, g divides h.</param>
    /// <param name="C">(b, l, g, n) output projection.</param>
    /// <param name="chunkSize">Q, any positive length; l need not be a multiple of it.</param>
    /// <param name="D">(h) or (h, p) skip connection, added before the gate.</param>
    /// <param name="z">(b, l, h, p) gate: y = (y + D x) * silu(z).</param>
    /// <param name="dtBias">(h) added to dt before the optional softplus.</param>
    /// <param name="initialStates">(b, h, p, n) state before the first token.</param>
    /// <param name="dtSoftplus">Apply softplus to dt + dtBias.</param>
    /// <param name="returnFinalStates">Also return the (b, h, p, n) state after the last token.</param>
    /// <param name="dtMin">Lower clamp of the processed dt (mamba_ssm dt_limit[0]).</param>
    /// <param name="dtMax">Upper clamp of the processed dt (mamba_ssm dt_limit[1]).</param>
    /// <param name="fusedKernels">Allow the fused CUDA kernels of step 1 (used on CUDA in float32 compute, with autograd);
    /// false keeps every step in tensor ops (benchmarks, comparisons).</param>
    /// <returns>y (b, l, h, p) in x's dtype; finalStates (b, h, p, n) in the compute dtype, or null.</returns>
    public static (Tensor y, Tensor? finalStates) ChunkScan(
        Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, int chunkSize,
        Tensor? D = null, Tensor? z = null, Tensor? dtBias = null, Tensor? initialStates = null,
        bool dtSoftplus = false, bool returnFinalStates = false,
        double dtMin = 0.0, double dtMax = double.PositiveInfinity, bool fusedKernels = true)
    {
        var (b, l, h, p, g, n) = CheckSequenceShapes(x, dt, A, B, C, D, z, dtBias, initialStates);
        if (chunkSize < 1) throw new ArgumentOutOfRangeException(nameof(chunkSize), chunkSize, "chunkSize must be >= 1.");
        long r = h / g;                                   // heads per group
        long Q = Math.Min(chunkSize, Math.Max(l, 1));     // a chunk longer than the sequence only adds padding
        long c = (l + Q - 1) / Q;                         // number of chunks
        long pad = c * Q - l;                             // zero tokens appended to fill the last chunk
        var cd = ComputeType(x);

        using var scope = torch.NewDisposeScope();

        var xc = x.to(cd);                                                    // (b, l, h, p)
        var dtc = ProcessDt(dt, dtBias, dtSoftplus, dtMin, dtMax, cd);        // (b, l, h)
        var Bc = B.to(cd);                                                    // (b, l, g, n)
        var Cc = C.to(cd);                                                    // (b, l, g, n)
        var xp = xc;
        if (pad > 0)
        {
            // Padding after dt processing: dt = 0 on the padded tokens, so they neither decay the state nor add to it.
            dtc = F.pad(dtc, new long[] { 0, 0, 0, pad });                    // (b, cQ, h)
            xp = F.pad(xc, new long[] { 0, 0, 0, 0, 0, pad });                // (b, cQ, h, p)
            Bc = F.pad(Bc, new long[] { 0, 0, 0, 0, 0, pad });                // (b, cQ, g, n)
            Cc = F.pad(Cc, new long[] { 0, 0, 0, 0, 0, pad });                // (b, cQ, g, n)
        }

        // Chunked views; heads split as (g, r) so that B and C are shared by the r heads of a group without copies.
        var xk = xp.reshape(b, c, Q, g, r, p);                                // (b, c, Q, g, r, p)
        var dtk = dtc.reshape(b, c, Q, g, r);                                 // (b, c, Q, g, r)
        var Bk = Bc.reshape(b, c, Q, g, n);                                   // (b, c, Q, g, n)
        var Ck = Cc.reshape(b, c, Q, g, n);                                   // (b, c, Q, g, n)
        var dA = (dtk * A.to(cd).reshape(g, r)).permute(0, 3, 4, 1, 2);       // (b, g, r, c, Q)  log-decay per token
        var Acs = dA.cumsum(-1);                                              // (b, g, r, c, Q)  within-chunk cumulative
        var AcsT = Acs.permute(0, 3, 4, 1, 2).unsqueeze(-1);                  // (b, c, Q, g, r, 1)
        var xdt = xk * dtk.unsqueeze(-1);                                     // (b, c, Q, g, r, p)  dt_s x_s

        // Steps 2-4, the off-diagonal blocks, as a function of the state entering the sequence: the fused kernels of
        // step 1 add step 4's output in their epilogue, so they need it first; the tensor-op path needs it after its
        // (Q, Q) blocks are freed.
        var running = initialStates is null
            ? torch.zeros(new long[] { b, g, r, p, n }, dtype: cd, device: x.device)
            : initialStates.to(cd).reshape(b, g, r, p, n);                    // (b, g, r, p, n)
        Tensor OffDiagonal()
        {
            // Step 2 - chunk states (right factor of the low-rank off-diagonal blocks, the B terms):
            //   S_c = sum_s exp(Acs_last - Acs_s) dt_s x_s B_s^T   (state at the end of chunk c from its own tokens)
            var decayStates = (AcsT.narrow(2, Q - 1, 1) - AcsT).exp();            // (b, c, Q, g, r, 1)
            var states = torch.einsum("bclgrp,bclgn->bcgrpn", xdt * decayStates, Bk); // (b, c, g, r, p, n)

            // Step 3 - inter-chunk recurrence (middle factor, the A terms): pass the states across chunk boundaries,
            // starting from initialStates: entering[k + 1] = exp(total decay of chunk k) entering[k] + S_k.
            // A plain loop over the c chunks: O(c h p n), where the paper's (c+1) x (c+1) segsum matrix costs
            // O(c^2 h p n) and dominates at long l or short chunks on the CPU.
            // unbind (not select in the loop), so the backward is one stack instead of c full-size scatters.
            var chunkDecay = Acs.select(-1, Q - 1).exp().reshape(b, g, r, c, 1, 1).unbind(3); // c x (b, g, r, 1, 1)
            var chunkStates = states.unbind(1);                                   // c x (b, g, r, p, n)
            var entering = new Tensor[c];
            for (long k = 0; k < c; k++)
            {
                entering[k] = running;                                            // state entering chunk k
                running = running * chunkDecay[k] + chunkStates[k];               // (b, g, r, p, n)
            }
            var prevStates = c > 0 ? torch.stack(entering, 1)                     // (b, c, g, r, p, n)
                : torch.zeros(new long[] { b, 0, g, r, p, n }, dtype: cd, device: x.device);

            // Step 4 - state to output (left factor, the C terms):
            //   Y_off[l] = exp(Acs_l) C_l . newStates[chunk]; the row factor exp(Acs_l) is applied with step 1 below.
            return torch.einsum("bclgn,bcgrpn->bclgrp", Ck, prevStates);      // (b, c, Q, g, r, p)
        }

        // Step 1 - diagonal blocks (intra-chunk outputs), the quadratic "attention" form, and the chunk's output:
        //   Y_diag[l] = sum_{s <= l} (C_l . B_s) exp(Acs_l - Acs_s) dt_s x_s,   Y = Y_diag + Y_off
        Tensor? yChunk = null, yFinal = null;                                 // (b, c, Q, g, r, p); (b, l, h, p)
        if (fusedKernels && SsdCudaKernel.Takes(xdt, b, c, h, g, p))
        {
            // The fused kernels (Native/cuda/ssd_chunk_scan.cu, forward and backward) form the weights
            // CB exp(Acs_l - Acs_s) tile by tile on chip (only CB, one (Q, Q) block per group and chunk, is a tensor)
            // and add exp(Acs_l) offRaw in the same pass; without a gradient to record the same kernel also applies
            // the skip and the gate and writes y in x's dtype.
            var offRaw = OffDiagonal();
            using var CBg = torch.einsum("bclgn,bcsgn->bgcls", Ck, Bk);      // (b, g, c, Q, Q)
            if (!RecordsGradient(x, dt, A, B, C, D, z, dtBias, initialStates) && SsdCudaKernel.TakesFinal(x, z))
                yFinal = SsdCudaKernel.FinalForward(CBg, Acs, xdt, offRaw, x, z, D);
            else
                yChunk = SsdCudaKernel.Diag(CBg, Acs, xdt, offRaw);
        }
        else
        {
            // The (Q, Q) blocks are the bulk of the memory traffic: mask and exp in place (autograd-safe: exp saves its
            // result), the product in place as well when no gradient is recorded; handles are dropped as soon as used.
            // exp(Acs_l - Acs_s) from differences of the within-chunk cumsum (as mamba_ssm's chunk_scan kernel does):
            // fewer passes over the (Q, Q) blocks than the masked segsum, forward and backward; masked before exp.
            var upper = torch.ones(new long[] { Q, Q }, dtype: ScalarType.Bool, device: x.device).triu(1);
            var L = (Acs.unsqueeze(-1) - Acs.unsqueeze(-2)).masked_fill_(upper, double.NegativeInfinity).exp_(); // (b, g, r, c, Q, Q)
            var CB = torch.einsum("bclgn,bcsgn->bgcls", Ck, Bk).unsqueeze(2); // (b, g, 1, c, Q, Q)
            var M = RecordsGradient(x, dt, A, B, C, dtBias) ? L * CB : L.mul_(CB); // (b, g, r, c, Q, Q)
            CB.Dispose();
            // A batched matmul over (b, g, r, c) on permuted views: ~30% cheaper forward+backward than the einsum here.
            var yDiag = torch.matmul(M, xdt.permute(0, 3, 4, 1, 2, 5))       // (b, g, r, c, Q, p)
                .permute(0, 3, 4, 1, 2, 5);                                   // (b, c, Q, g, r, p)
            L.Dispose(); M.Dispose();
            yChunk = yDiag + OffDiagonal() * AcsT.exp();
        }

        Tensor yOut;
        if (yFinal is not null) yOut = yFinal.MoveToOuterDisposeScope();
        else
        {
            var y = yChunk!.reshape(b, c * Q, h, p);                           // (b, cQ, h, p)
            if (pad > 0) y = y.narrow(1, 0, l);                               // (b, l, h, p)
            y = SkipAndGate(y, xc, D, z, h);
            yOut = y.to(x.dtype).MoveToOuterDisposeScope();
        }

        Tensor? finalStates = null;
        if (returnFinalStates)
            finalStates = running.reshape(b, h, p, n).clone().MoveToOuterDisposeScope(); // (b, h, p, n), own storage
        return (yOut, finalStates);
    }

    /// <summary>
    /// The sequential oracle: a loop over time of h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t (+ D x_t)
    /// (* silu(z_t)). Same arguments, shapes and dtypes as <see cref="ChunkScan"/>, without the chunk size.
    /// </summary>
    public static (Tensor y, Tensor? finalStates) Reference(
        Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C,
        Tensor? D = null, Tensor? z = null, Tensor? dtBias = null, Tensor? initialStates = null,
        bool dtSoftplus = false, bool returnFinalStates = false,
        double dtMin = 0.0, double dtMax = double.PositiveInfinity)
    {
        var (b, l, h, p, g, n) = CheckSequenceShapes(x, dt, A, B, C, D, z, dtBias, initialStates);
        long r = h / g;
        var cd = ComputeType(x);

        using var scope = torch.NewDisposeScope();
        var xc = x.to(cd);                                                    // (b, l, h, p)
        var dtc = ProcessDt(dt, dtBias, dtSoftplus, dtMin, dtMax, cd);        // (b, l, h)
        var Ac = A.to(cd);                                                    // (h)
        // unbind once along time: its backward is one stack, where per-step select would give every step a
        // full-size gradient (quadratic in l).
        var dts = dtc.unbind(1);                                              // l x (b, h)
        var xs = xc.unbind(1);                                                // l x (b, h, p)
        var Bs = B.to(cd).unbind(1);                                          // l x (b, g, n)
        var Cs = C.to(cd).unbind(1);

        // The running state lives outside every dispose scope and is freed as soon as it is replaced.
        Tensor state = initialStates is null
            ? torch.zeros(new long[] { b, h, p, n }, dtype: cd, device: x.device)
            : initialStates.to(cd).clone();                                   // (b, h, p, n)
        state.DetachFromDisposeScope();
        var ys = new List<Tensor>((int)l);
        try
        {
            for (long t = 0; t < l; t++)
            {
                Tensor next;
                using (var stepScope = torch.NewDisposeScope())
                {
                    var dtT = dts[t];                                         // (b, h)
                    var xT = xs[t];                                           // (b, h, p)
                    var decay = Discretization.ZohA(dtT, Ac).reshape(b, h, 1, 1); // (b, h, 1, 1)  exp(dt_t A)
                    var dB = Discretization.EulerB(dtT.unsqueeze(-1), Bs[t].repeat_interleave(r, 1)); // (b, h, n)  dt_t B_t, head i <- group i / r
                    var input = xT.unsqueeze(-1) * dB.unsqueeze(2);           // (b, h, p, n)  dt_t x_t B_t^T
                    next = state * decay + input;                             // (b, h, p, n)
                    var yT = (next * Cs[t].repeat_interleave(r, 1).unsqueeze(2)).sum(-1); // (b, h, p)  C_t . h_t
                    next.DetachFromDisposeScope();
                    ys.Add(yT.MoveToOuterDisposeScope());
                }
                state.Dispose();
                state = next;
            }

            var y = l > 0 ? torch.stack(ys, 1) : torch.zeros(new long[] { b, 0, h, p }, dtype: cd, device: x.device); // (b, l, h, p)
            y = SkipAndGate(y, xc, D, z, h);
            var yOut = y.to(x.dtype).MoveToOuterDisposeScope();
            if (!returnFinalStates) return (yOut, null);
            var final = state;
            state = null!;
            return (yOut, final);
        }
        finally
        {
            state?.Dispose();
        }
    }

    /// <summary>
    /// One token of the recurrence, for generation. The state is updated IN PLACE, so an inference cache that holds it
    /// stays current: state = exp(dt A) state + dt x B^T; y = state C (+ D x) (* silu(z)).
    /// </summary>
    /// <param name="x">(b, h, p) the token's input.</param>
    /// <param name="dt">(b, h) step size (before dtBias / softplus).</param>
    /// <param name="A">(h) negative decay rates.</param>
    /// <param name="B">(b, g, n).</param>
    /// <param name="C">(b, g, n).</param>
    /// <param name="state">(b, h, p, n) float32 (or float64) state, modified in place; it must not require grad.</param>
    /// <param name="D">(h) or (h, p).</param>
    /// <param name="z">(b, h, p) gate.</param>
    /// <param name="dtBias">(h).</param>
    /// <param name="dtSoftplus">Apply softplus to dt + dtBias.</param>
    /// <param name="dtMin">Lower clamp of the processed dt.</param>
    /// <param name="dtMax">Upper clamp of the processed dt.</param>
    /// <returns>y (b, h, p) in x's dtype.</returns>
    public static Tensor Step(
        Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor state,
        Tensor? D = null, Tensor? z = null, Tensor? dtBias = null, bool dtSoftplus = false,
        double dtMin = 0.0, double dtMax = double.PositiveInfinity)
    {
        if (x.dim() != 3) throw new ArgumentException($"x must be (b, h, p), got {Shape(x)}.", nameof(x));
        long b = x.shape[0], h = x.shape[1], p = x.shape[2];
        if (B.dim() != 3 || B.shape[0] != b) throw new ArgumentException($"B must be (b, g, n) with b = {b}, got {Shape(B)}.", nameof(B));
        long g = B.shape[1], n = B.shape[2];
        Expect(dt, nameof(dt), b, h);
        Expect(A, nameof(A), h);
        Expect(C, nameof(C), b, g, n);
        Expect(state, nameof(state), b, h, p, n);
        if (g < 1 || h % g != 0) throw new ArgumentException($"the number of heads ({h}) must be a multiple of the number of groups ({g}).", nameof(B));
        CheckOptional(D, z, dtBias, b, h, p, zShape: new[] { b, h, p });
        if (!state.is_floating_point()) throw new ArgumentException("state must be a floating-point tensor.", nameof(state));
        long r = h / g;
        var sd = state.dtype;

        using var scope = torch.NewDisposeScope();
        var dtc = ProcessDt(dt, dtBias, dtSoftplus, dtMin, dtMax, sd);        // (b, h)
        var decay = Discretization.ZohA(dtc, A.to(sd)).reshape(b, h, 1, 1);   // (b, h, 1, 1)  exp(dt A)
        var Bh = B.to(sd).repeat_interleave(r, 1);                            // (b, h, n)     head i <- group i / r
        var Ch = C.to(sd).repeat_interleave(r, 1);                            // (b, h, n)
        var xc = x.to(sd);                                                    // (b, h, p)
        var dB = Discretization.EulerB(dtc.unsqueeze(-1), Bh);                // (b, h, n)     dt B
        var input = xc.unsqueeze(-1) * dB.unsqueeze(2);                       // (b, h, p, n)  dt x B^T
        state.mul_(decay).add_(input);                                        // in place: the caller's cache advances
        var y = state.matmul(Ch.unsqueeze(-1)).squeeze(-1);                   // (b, h, p)
        y = SkipAndGate(y, xc, D, z, h);
        return y.to(x.dtype).MoveToOuterDisposeScope();
    }

    // ---------------------------------------------------------------- helpers

    /// <summary>Whether autograd records the scan (then no in-place op may touch a tensor that backward needs).</summary>
    private static bool RecordsGradient(params Tensor?[] inputs) =>
        torch.is_grad_enabled() && inputs.Any(t => t is not null && t.requires_grad);

    /// <summary>float64 when x is float64, float32 otherwise (bfloat16 / float16 / float32).</summary>
    private static ScalarType ComputeType(Tensor x) => x.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;

    /// <summary>dt -> clamp(softplus?(dt + dtBias), dtMin, dtMax) in the compute dtype; dt (..., h), dtBias (h).</summary>
    private static Tensor ProcessDt(Tensor dt, Tensor? dtBias, bool softplus, double dtMin, double dtMax, ScalarType cd)
        => Discretization.StepSize(dt.to(cd), dtBias?.to(cd), softplus, dtMin, dtMax);

    /// <summary>y + D x, then * silu(z); y, x (..., h, p) in the compute dtype, D (h) or (h, p), z (..., h, p).</summary>
    private static Tensor SkipAndGate(Tensor y, Tensor xc, Tensor? D, Tensor? z, long h)
    {
        var cd = y.dtype;
        if (D is not null)
        {
            var Dc = D.to(cd);
            y = y + xc * (D.dim() == 1 ? Dc.reshape(h, 1) : Dc);
        }
        if (z is not null) y = y * F.silu(z.to(cd));
        return y;
    }

    private static (long b, long l, long h, long p, long g, long n) CheckSequenceShapes(
        Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? dtBias, Tensor? initialStates)
    {
        if (x.dim() != 4) throw new ArgumentException($"x must be (b, l, h, p), got {Shape(x)}.", nameof(x));
        long b = x.shape[0], l = x.shape[1], h = x.shape[2], p = x.shape[3];
        if (B.dim() != 4 || B.shape[0] != b || B.shape[1] != l)
            throw new ArgumentException($"B must be (b, l, g, n) with b = {b}, l = {l}, got {Shape(B)}.", nameof(B));
        long g = B.shape[2], n = B.shape[3];
        if (g < 1 || h % g != 0) throw new ArgumentException($"the number of heads ({h}) must be a multiple of the number of groups ({g}).", nameof(B));
        Expect(dt, nameof(dt), b, l, h);
        Expect(A, nameof(A), h);
        Expect(C, nameof(C), b, l, g, n);
        CheckOptional(D, z, dtBias, b, h, p, zShape: new[] { b, l, h, p });
        if (initialStates is not null) Expect(initialStates, nameof(initialStates), b, h, p, n);
        return (b, l, h, p, g, n);
    }

    private static void CheckOptional(Tensor? D, Tensor? z, Tensor? dtBias, long b, long h, long p, long[] zShape)
    {
        if (D is not null && !(D.dim() == 1 && D.shape[0] == h) && !(D.dim() == 2 && D.shape[0] == h && D.shape[1] == p))
            throw new ArgumentException($"D must be (h) or (h, p) with h = {h}, p = {p}, got {Shape(D)}.", nameof(D));
        if (z is not null) Expect(z, nameof(z), zShape);
        if (dtBias is not null) Expect(dtBias, nameof(dtBias), h);
    }

    private static void Expect(Tensor t, string name, params long[] shape)
    {
        if (!t.shape.SequenceEqual(shape))
            throw new ArgumentException($"{name} must have shape ({string.Join(", ", shape)}), got {Shape(t)}.", name);
    }

    private static string Shape(Tensor t) => "(" + string.Join(", ", t.shape) + ")";
}
