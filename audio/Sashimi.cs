// SaShiMi: a causal multi-scale U-Net of state-space blocks over raw audio samples (Goel, Gu, Donahue, Re 2022,
// "It's Raw! Audio Generation with State-Space Models"; state-spaces/s4 models/sashimi/sashimi.py), with the
// Mamba variant of Gu & Dao 2023 (section 4.4, appendix E.4: the same U-Net with each S4+MLP pair replaced by one
// Mamba block).
//
// Glossary (code letter -> meaning):
//   b        batch size
//   l        number of samples (fine time steps); l_k = l / (p_0 ... p_{k-1}) at pooling level k
//   H, h     model width d_model at the top level; h_k = H * expand^k at level k (the reference's H)
//   p, s     a pooling factor (pool[k]); s also indexes the p samples merged into one coarse step
//   n        S4D state size d_state (n/2 complex conjugate pairs stored), or Mamba's d_state
//   V        number of classes (256 mu-law levels)
//
// The network (pool = [4, 4], expand = 2, unet = False: the reference's defaults):
//   ids (b l) -> encoder: Embedding(V, H) -> x0 (b l H)
//   DownPool(H -> 2H, p 4) -> x1 (b l/4 2H);  DownPool(2H -> 4H, p 4) -> x2 (b l/16 4H)        d_layers
//   n_layers x [Res(S4D), Res(FF)] at 4H, then + x2                                            c_layers
//   UpPool(4H -> 2H, p 4) + x1 -> n_layers x [Res(S4D), Res(FF)] at 2H, + (its input)           u_layers.0
//   UpPool(2H -> H,  p 4) + x0 -> n_layers x [Res(S4D), Res(FF)] at H,  + (its input)           u_layers.1
//   LayerNorm(H) -> decoder: Linear(H, V) -> logits (b l V)
// Res(layer) is the reference's prenorm ResidualBlock: x + dropout(layer(LayerNorm(x))). With Variant = Mamba each
// [Res(S4D), Res(FF)] pair becomes one Res(Mamba).
//
// Causality. DownPool merges the p samples of a group into one coarse step, so a coarse step depends on the *end*
// of its group; UpPool therefore shifts its output right by one coarse step (the reference's
// F.pad(x[..., :-1], (1, 0))): the fine outputs of group g only see coarse steps of groups < g. Every S4D/Mamba/FF
// block is causal, so logits[:, t] depend on ids[:, <= t] only.
//
// Use for next-sample prediction (SC09): the model predicts sample t+1 from samples <= t; the *caller* shifts:
//   logits = model.call(ids[:, :-1]);  loss = cross_entropy(logits, ids[:, 1:]).
// Generation feeds the previous sample (or a start token, e.g. the mu-law code of 0.0 = 128) to Step.
//
// Lengths. The convolution mode needs l to be a multiple of prod(pool) (16 by default); forward pads the embedded
// sequence on the right with zeros up to that multiple and drops the padded outputs. Because the network is causal
// the padding never changes the kept outputs, so any l >= 1 is accepted.
//
// Two modes, one set of parameters (the reference's forward / step / default_state on every module):
//   convolution mode  forward(ids (b l)) -> (b l V): S4D by FFT convolution, Mamba by its scan (training).
//   recurrent mode    AllocateState(b), then Step(ids_t (b), state) -> (b V), one sample at a time with constant
//                     memory and time per sample: S4D/Mamba states, DownPool's buffer of the last < p inputs and
//                     UpPool's buffer of p pending outputs, all preallocated (generation).
//
// State-dict names follow sashimi.py (d_layers.*, c_layers.*, u_layers.*, norm.*; inside a residual block layer.*
// and norm.*; DownPool/UpPool linear.*; FFBlock ff.0.0.* / ff.2.*) so a checkpoint maps one-to-one where the layers
// agree. The reference's LinearActivation(transposed=True) stores weight (d_out, d_in) and bias (d_out) like
// nn.Linear, so those map unchanged. The S4 layer is backbone's S4DBlock, whose names are s4d.py's (D, kernel.C,
// kernel.log_dt, kernel.log_A_real, kernel.A_imag, output_linear.0.*): they map onto a diagonal-S4 sashimi checkpoint
// up to the kernel's naming and output_linear.0.weight's trailing 1 (Conv1d (2h, h, 1) vs TransposedLinear (2h, h)).
// The embedding and the output head are named encoder.* / decoder.* as in the s4 repo's training module (which
// prefixes the backbone with model.).
using Ssm.Backbone.Layers;
using Ssm.Backbone.Scans;
using Ssm.Backbone.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Ssm.Audio;

/// <summary>Which sequence layer fills the stages of the U-Net.</summary>
public enum SashimiVariant
{
    /// <summary>SaShiMi as published: residual S4 (here diagonal S4D, Re A &lt; 0) blocks alternating with residual FF blocks.</summary>
    S4D,

    /// <summary>Gu &amp; Dao 2023 section 4.4: each S4+FF pair replaced by one residual Mamba block.</summary>
    Mamba,
}

/// <summary>
/// The constructor arguments of <see cref="Sashimi"/>, with sashimi.py's defaults (d_model 64, n_layers 8, pool
/// [4, 4], expand 2, ff 2, dropout 0, unet False, S4 d_state 64) and SC09's input/output (256 mu-law classes).
/// </summary>
public sealed record SashimiConfig
{
    /// <summary>S4D or Mamba blocks.</summary>
    public SashimiVariant Variant { get; init; } = SashimiVariant.S4D;

    /// <summary>H, the width at the top (finest) level.</summary>
    public long DModel { get; init; } = 64;

    /// <summary>Residual (S4D, FF) pairs (or Mamba blocks) per stage: center and every up stage.</summary>
    public long NLayers { get; init; } = 8;

    /// <summary>Pooling factors from the top level down; prod(pool) is the coarsest stride. Empty = no pooling.</summary>
    public IReadOnlyList<long> Pool { get; init; } = [4, 4];

    /// <summary>Width multiplier per pooling level.</summary>
    public long Expand { get; init; } = 2;

    /// <summary>FF block inverted-bottleneck expansion; 0 leaves the FF blocks out (S4D variant only).</summary>
    public long FF { get; init; } = 2;

    /// <summary>Dropout in the S4D layers, FF blocks and residual branches (the reference's single dropout).</summary>
    public double Dropout { get; init; }

    /// <summary>S4D state size n (even; sashimi.py's s4_block fixes d_state=64).</summary>
    public long DState { get; init; } = 64;

    /// <summary>S4D smallest initial step size.</summary>
    public double DtMin { get; init; } = 0.001;

    /// <summary>S4D largest initial step size.</summary>
    public double DtMax { get; init; } = 0.1;

    /// <summary>S4D initialisation of A (S4D-Lin as s4d.py, or S4D-Inv).</summary>
    public S4DInit Init { get; init; } = S4DInit.Lin;

    /// <summary>Mamba state size (mamba_simple.py's default 16).</summary>
    public long MambaDState { get; init; } = 16;

    /// <summary>Mamba causal convolution width.</summary>
    public long MambaDConv { get; init; } = 4;

    /// <summary>Mamba inner expansion.</summary>
    public long MambaExpand { get; init; } = 2;

    /// <summary>V, the number of input and output classes (256 for 8-bit mu-law).</summary>
    public long Classes { get; init; } = 256;

    /// <summary>LayerNorm epsilon (nn.LayerNorm's default).</summary>
    public double NormEps { get; init; } = 1e-5;

    /// <summary>SaShiMi's SC09 model: sashimi.py's defaults (d_model 64, 8 layers per stage, pool 4 x 4, expand 2, ff 2).</summary>
    public static SashimiConfig Default { get; } = new();

    /// <summary>
    /// The shipped default's size: the same U-Net with 3 (S4D, FF) pairs per stage instead of 8, 2.10 M parameters
    /// (8.4 MB in float32, under the suite's 10 MB budget for embedded models) and about 2.7x fewer ops per generated sample.
    /// </summary>
    public static SashimiConfig Small { get; } = new() { NLayers = 3 };

    /// <summary>The same U-Net with Mamba blocks (Gu &amp; Dao 2023 section 4.4).</summary>
    public static SashimiConfig DefaultMamba { get; } = new() { Variant = SashimiVariant.Mamba };

    /// <summary>A few thousand parameters for tests: width 8, one layer per stage, still pooling 4 x 4.</summary>
    public static SashimiConfig Tiny { get; } = new() { DModel = 8, NLayers = 1, DState = 8, MambaDState = 4, MambaDConv = 3 };

    /// <summary>prod(pool): the stride of the coarsest level; the convolution mode pads l up to a multiple of it.</summary>
    public long Stride => Pool.Aggregate(1L, (a, p) => a * p);

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first invalid option.</summary>
    public SashimiConfig Validate()
    {
        static void Need(bool ok, string option, object? value, string rule)
        {
            if (!ok) throw new ArgumentException($"SashimiConfig.{option} = {value}: {rule}", option);
        }
        Need(Enum.IsDefined(Variant), nameof(Variant), Variant, "must be S4D or Mamba");
        Need(DModel >= 1, nameof(DModel), DModel, "must be at least 1");
        Need(NLayers >= 1, nameof(NLayers), NLayers, "must be at least 1");
        Need(Pool is not null, nameof(Pool), "null", "must be a list (possibly empty)");
        for (int i = 0; i < Pool!.Count; i++)
            Need(Pool[i] >= 1, nameof(Pool), $"[{string.Join(", ", Pool)}]", $"pool[{i}] must be at least 1");
        Need(Expand >= 1, nameof(Expand), Expand, "must be at least 1");
        Need(FF >= 0, nameof(FF), FF, "must be 0 (no FF blocks) or more");
        Need(Dropout >= 0.0 && Dropout < 1.0, nameof(Dropout), Dropout, "must be in [0, 1)");
        Need(DState >= 2 && DState % 2 == 0, nameof(DState), DState, "must be even and at least 2 (n/2 complex conjugate pairs)");
        Need(DtMin > 0 && DtMax >= DtMin, nameof(DtMin), $"{DtMin} (DtMax {DtMax})", "need 0 < DtMin <= DtMax");
        Need(Enum.IsDefined(Init), nameof(Init), Init, "must be Lin or Inv");
        Need(MambaDState >= 1, nameof(MambaDState), MambaDState, "must be at least 1");
        Need(MambaDConv >= 1, nameof(MambaDConv), MambaDConv, "must be at least 1");
        Need(MambaExpand >= 1, nameof(MambaExpand), MambaExpand, "must be at least 1");
        Need(Classes >= 2, nameof(Classes), Classes, "must be at least 2");
        Need(NormEps > 0, nameof(NormEps), NormEps, "must be positive");
        return this;
    }
}

// ==================================================================================================== state

/// <summary>
/// The recurrent state of one SaShiMi module (the reference's default_state): the inner S4D/Mamba state of a
/// residual block, or the preallocated buffer of a pooling layer with its position; FF blocks hold nothing.
/// </summary>
public sealed class SashimiLayerState : IDisposable
{
    internal SashimiLayerState(LayerState? inner, Tensor? buffer)
    {
        Inner = inner;
        Buffer = buffer;
    }

    /// <summary>S4D: Ssm (b, h, n/2) complex; Mamba: Conv (b, d_inner, d_conv), Ssm (b, d_inner, n); else null.</summary>
    public LayerState? Inner { get; }

    /// <summary>
    /// DownPool: (b, p, h) the inputs of the current group, the first <see cref="Position"/> filled.
    /// UpPool: (b, p, h_out) the fine outputs still to emit, from <see cref="Position"/> on. Null otherwise.
    /// </summary>
    public Tensor? Buffer { get; }

    /// <summary>DownPool: inputs buffered so far; UpPool: outputs already emitted from the buffer.</summary>
    public int Position { get; internal set; }

    /// <summary>Every tensor this state holds (for size accounting).</summary>
    public IEnumerable<Tensor> Tensors
    {
        get
        {
            if (Buffer is not null) yield return Buffer;
            if (Inner?.Conv is not null) yield return Inner.Conv;
            if (Inner is not null) yield return Inner.Ssm;
        }
    }

    public void Dispose()
    {
        Inner?.Dispose();
        Buffer?.Dispose();
    }
}

/// <summary>
/// The whole network's recurrent state: one <see cref="SashimiLayerState"/> per module in the reference's
/// default_state order (d_layers, c_layers, then u_layers block by block). Its size never changes while stepping.
/// </summary>
public sealed class SashimiState : IDisposable
{
    internal SashimiState(IReadOnlyList<SashimiLayerState> layers, long batch)
    {
        Layers = layers;
        Batch = batch;
    }

    /// <summary>Per-module states, in default_state order.</summary>
    public IReadOnlyList<SashimiLayerState> Layers { get; }

    /// <summary>b, the batch this state was allocated for.</summary>
    public long Batch { get; }

    /// <summary>Samples consumed so far.</summary>
    public long Steps { get; internal set; }

    /// <summary>Every tensor held, all layers.</summary>
    public IEnumerable<Tensor> Tensors => Layers.SelectMany(s => s.Tensors);

    /// <summary>Total number of elements held (constant while stepping).</summary>
    public long NumElements => Tensors.Sum(t => t.numel());

    public void Dispose()
    {
        foreach (var s in Layers) s.Dispose();
    }
}

/// <summary>A SaShiMi module with the reference's uniform recurrent interface (default_state / step).</summary>
internal interface ISashimiStep
{
    SashimiLayerState AllocateState(long batch, ScalarType dtype, Device device);
}

// ==================================================================================================== pooling

/// <summary>
/// sashimi.py DownPool: merge p consecutive samples into one coarse step and project h p -> h expand.
/// Convolution mode: (b, l, h) -> (b, l/p, h expand), with the reference's rearrange '... h (l s) -> ... (h s) l'
/// (channel index h * p + s). Recurrent mode: buffer inputs; every p-th step emits one coarse output.
/// </summary>
public sealed class DownPool : Module<Tensor, Tensor>, ISashimiStep
{
#pragma warning disable IDE1006 // naming: state-dict names
    public Linear linear;                                                         // weight (h expand, h p), bias (h expand)
#pragma warning restore IDE1006

    public DownPool(long dInput, long expand, long pool) : base(nameof(DownPool))
    {
        DInput = dInput;
        DOutput = dInput * expand;
        PoolFactor = pool;
        linear = Linear(dInput * pool, DOutput);                                  // LinearActivation(transposed) init = nn.Linear's
        RegisterComponents();
    }

    public long DInput { get; }
    public long DOutput { get; }
    public long PoolFactor { get; }

    /// <summary>x (b, l, h) with l a multiple of p -> (b, l/p, h expand).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.size(0), l = x.size(1), h = x.size(2), p = PoolFactor;
        if (l % p != 0) throw new ArgumentException($"DownPool: length {l} is not a multiple of the pool factor {p}", nameof(x));
        var grouped = x.reshape(b, l / p, p, h);                                  // (b l/p s h)
        var merged = grouped.permute(0, 1, 3, 2).reshape(b, l / p, h * p);        // (b l/p (h s))
        return linear.forward(merged).MoveToOuterDisposeScope();                  // (b l/p h_out)
    }

    public SashimiLayerState AllocateState(long batch, ScalarType dtype, Device device)
    {
        var buffer = torch.zeros(new[] { batch, PoolFactor, DInput }, dtype, device).DetachFromDisposeScope(); // (b s h)
        return new SashimiLayerState(null, buffer);
    }

    /// <summary>
    /// sashimi.py DownPool.step: x (b, h) joins the buffer; when p inputs are there, returns the coarse step
    /// (b, h expand) and empties the buffer, otherwise null. A null x (upstream emitted nothing) passes through.
    /// </summary>
    public Tensor? Step(Tensor? x, SashimiLayerState state)
    {
        if (x is null) return null;
        var buffer = state.Buffer!;
        using (var slot = buffer.select(1, state.Position)) slot.copy_(x);       // (b h)
        state.Position++;
        if (state.Position < PoolFactor) return null;
        state.Position = 0;
        using var scope = torch.NewDisposeScope();
        long b = buffer.size(0);
        var merged = buffer.permute(0, 2, 1).reshape(b, DInput * PoolFactor);     // (b (h s))
        return linear.forward(merged).MoveToOuterDisposeScope();                  // (b h_out)
    }
}

/// <summary>
/// sashimi.py UpPool: project h -> (h / expand) p and spread the p outputs over p fine steps, shifted right by one
/// coarse step for causality. Convolution mode: (b, l', h) -> (b, l' p, h / expand). Recurrent mode: emit one
/// buffered fine output per step; after the p-th, refill the buffer from the coarse input given on that step.
/// </summary>
public sealed class UpPool : Module<Tensor, Tensor>, ISashimiStep
{
#pragma warning disable IDE1006 // naming: state-dict names
    public Linear linear;                                                         // weight (h_out p, h), bias (h_out p)
#pragma warning restore IDE1006

    public UpPool(long dInput, long expand, long pool) : base(nameof(UpPool))
    {
        DInput = dInput;
        DOutput = dInput / expand;
        PoolFactor = pool;
        linear = Linear(dInput, DOutput * pool);
        RegisterComponents();
    }

    public long DInput { get; }
    public long DOutput { get; }
    public long PoolFactor { get; }

    /// <summary>x (b, l', h) -> (b, l' p, h / expand); fine step t = j p + s reads the coarse step j - 1 (zeros for j = 0).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.size(0), lc = x.size(1), p = PoolFactor, ho = DOutput;
        var y = linear.forward(x);                                                // (b l' (h_out s))
        // The shift (sashimi.py: F.pad(x[..., :-1], (1, 0))): coarse step j summarises fine steps up to j p + p - 1,
        // so it may only feed fine steps from (j + 1) p on.
        var shifted = nn.functional.pad(y.narrow(1, 0, lc - 1), new long[] { 0, 0, 1, 0 }); // (b l' (h_out s))
        var spread = shifted.reshape(b, lc, ho, p).permute(0, 1, 3, 2);          // (b l' s h_out)
        return spread.reshape(b, lc * p, ho).MoveToOuterDisposeScope();           // (b l'p h_out)
    }

    public SashimiLayerState AllocateState(long batch, ScalarType dtype, Device device)
    {
        // sashimi.py UpPool.default_state: p zero outputs pending (what the shift feeds the first group).
        var buffer = torch.zeros(new[] { batch, PoolFactor, DOutput }, dtype, device).DetachFromDisposeScope(); // (b s h_out)
        return new SashimiLayerState(null, buffer);
    }

    /// <summary>
    /// sashimi.py UpPool.step: returns the next pending fine output (b, h / expand). The step that emits the last
    /// pending output must bring the coarse input x (b, h), which refills the buffer; every other step must pass null.
    /// </summary>
    public Tensor Step(Tensor? x, SashimiLayerState state)
    {
        var buffer = state.Buffer!;
        Tensor y;
        using (var slot = buffer.select(1, state.Position)) y = slot.clone();    // (b h_out)
        state.Position++;
        if (state.Position < PoolFactor)
        {
            if (x is not null) { y.Dispose(); throw new InvalidOperationException("UpPool.Step: a coarse input arrived before the buffer was used up (state out of step with the network)"); }
            return y;
        }
        if (x is null) { y.Dispose(); throw new InvalidOperationException("UpPool.Step: the buffer is used up but no coarse input arrived (state out of step with the network)"); }
        state.Position = 0;
        using var scope = torch.NewDisposeScope();
        long b = buffer.size(0);
        var z = linear.forward(x).reshape(b, DOutput, PoolFactor);               // (b h_out s)
        buffer.copy_(z.permute(0, 2, 1));                                         // (b s h_out)
        return y;
    }
}

// ==================================================================================================== blocks

/// <summary>
/// sashimi.py FFBlock: position-wise inverted bottleneck h -> h ff (GELU) -> dropout -> h. Names ff.0.0.* (the
/// LinearActivation with its GELU as ff.0.1), ff.1 (dropout), ff.2.*.
/// </summary>
public sealed class FFBlock : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // naming: state-dict names
    public Sequential ff;
#pragma warning restore IDE1006

    public FFBlock(long dModel, long expand = 2, double dropout = 0.0) : base(nameof(FFBlock))
    {
        var input = Sequential(("0", Linear(dModel, dModel * expand)), ("1", GELU()));
        Module<Tensor, Tensor> drop = dropout > 0.0 ? Dropout(dropout) : Identity();
        ff = Sequential(("0", input), ("1", drop), ("2", Linear(dModel * expand, dModel)));
        RegisterComponents();
    }

    /// <summary>x (..., h) -> (..., h): the same position-wise map in both modes (step = forward on one sample).</summary>
    public override Tensor forward(Tensor x) => ff.forward(x);
}

/// <summary>
/// sashimi.py ResidualBlock: prenorm LayerNorm, the layer, dropout, residual: x + dropout(layer(norm(x))).
/// The layer is an <see cref="S4DBlock"/>, a <see cref="FFBlock"/> or a backbone <see cref="Mamba"/>. Names layer.*, norm.*.
/// </summary>
public sealed class SashimiResidualBlock : Module<Tensor, Tensor>, ISashimiStep
{
#pragma warning disable IDE1006 // naming: state-dict names
    public Module<Tensor, Tensor> layer;
    public LayerNorm norm;
    public Module<Tensor, Tensor> dropout;
#pragma warning restore IDE1006

    public SashimiResidualBlock(long dModel, Module<Tensor, Tensor> layer, double dropout = 0.0, double eps = 1e-5)
        : base("ResidualBlock")
    {
        if (layer is not (S4DBlock or FFBlock or Mamba))
            throw new ArgumentException($"SashimiResidualBlock: unsupported layer {layer.GetType().Name} (S4DBlock, FFBlock or Mamba)", nameof(layer));
        this.layer = layer;
        norm = LayerNorm(dModel, eps);
        this.dropout = dropout > 0.0 ? Dropout(dropout) : Identity();
        RegisterComponents();
    }

    /// <summary>x (b, l, h) -> (b, l, h).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var z = norm.forward(x);                                                  // (b l h) prenorm
        z = layer is S4DBlock s4 ? InS4DPrecision(s4, z, s4.forward) : layer.forward(z); // (b l h)
        z = dropout.forward(z);
        return (z + x).MoveToOuterDisposeScope();                                 // (b l h)
    }

    /// <summary>
    /// Runs an S4D layer in its parameters' dtype and hands the result back in z's. Under mixed precision the whole S4D
    /// layer stays float32 (Sashimi.KeepsFp32: its FFT convolution has no bf16 kernels, and it computes in one dtype)
    /// while the residual stream, norms, FF blocks and pooling run in bf16; otherwise both dtypes agree and nothing is cast.
    /// </summary>
    static Tensor InS4DPrecision(S4DBlock s4, Tensor z, Func<Tensor, Tensor> run)
    {
        var t = s4.KernelParameters.LogDt.dtype;
        return t == z.dtype ? run(z) : run(z.to_type(t)).to_type(z.dtype);
    }

    public SashimiLayerState AllocateState(long batch, ScalarType dtype, Device device)
    {
        if (layer is not IRecurrentLayer rec) return new SashimiLayerState(null, null);          // FF: stateless
        // Both S4DBlock and Mamba allocate their state in the precision the model computes in (float64 for a float64
        // model). The state outlives any dispose scope of the caller: the network's state owns it.
        var inner = rec.AllocateState(batch);
        inner.Conv?.DetachFromDisposeScope();
        inner.Ssm.DetachFromDisposeScope();
        return new SashimiLayerState(inner, null);
    }

    /// <summary>sashimi.py ResidualBlock.step: x (b, h) -> x + layer.step(norm(x)) (b, h); no dropout (inference).</summary>
    public Tensor Step(Tensor x, SashimiLayerState state)
    {
        using var scope = torch.NewDisposeScope();
        var z = norm.forward(x);                                                  // (b h)
        if (layer is S4DBlock s4)
        {
            z = InS4DPrecision(s4, z, u => s4.Step(u, state.Inner!));            // (b h), the state advanced in place
        }
        else if (layer is IRecurrentLayer rec)
        {
            z = rec.Step(z, state.Inner!);                                        // (b h), the state advanced in place
        }
        else
        {
            z = layer.forward(z);                                                 // FF: position-wise
        }
        return (z + x).MoveToOuterDisposeScope();                                 // (b h)
    }
}

// ==================================================================================================== model

/// <summary>
/// SaShiMi over mu-law class ids: (b, l) long -> (b, l, V) logits, logits[:, t] predicting sample t + 1 from
/// samples &lt;= t (the caller shifts). <see cref="forward"/> is the convolution mode; <see cref="AllocateState"/> and
/// <see cref="Step"/> the recurrent mode, equal to it up to rounding.
/// </summary>
public sealed class Sashimi : Module<Tensor, Tensor>, IFp32Parameters
{
#pragma warning disable IDE1006 // naming: state-dict names
    public Embedding encoder;                                                     // (V, H)
    public ModuleList<Module<Tensor, Tensor>> d_layers;                           // DownPool per level
    public ModuleList<Module<Tensor, Tensor>> c_layers;                           // residual blocks at the coarsest level
    public ModuleList<ModuleList<Module<Tensor, Tensor>>> u_layers;               // [UpPool, residual blocks...] per level, coarse to fine
    public LayerNorm norm;                                                        // (H)
    public Linear decoder;                                                        // (V, H)
#pragma warning restore IDE1006

    public Sashimi(SashimiConfig config) : base(nameof(Sashimi))
    {
        Config = config.Validate();
        long H = config.DModel;

        // One stage's worth of residual blocks at width `dim` (sashimi.py's s4_block + ff_block per layer, or a
        // Mamba block per layer for the Mamba variant).
        IEnumerable<Module<Tensor, Tensor>> Stage(long dim)
        {
            for (long i = 0; i < config.NLayers; i++)
            {
                if (config.Variant == SashimiVariant.Mamba)
                {
                    var mixer = new Mamba(new MambaConfig(dim, DState: config.MambaDState, DConv: config.MambaDConv, Expand: config.MambaExpand));
                    yield return new SashimiResidualBlock(dim, mixer, config.Dropout, config.NormEps);
                    continue;
                }
                var s4 = new S4DBlock(dim, config.DState, config.DtMin, config.DtMax, config.Init, config.Dropout);
                yield return new SashimiResidualBlock(dim, s4, config.Dropout, config.NormEps);
                if (config.FF > 0)
                    yield return new SashimiResidualBlock(dim, new FFBlock(dim, config.FF, config.Dropout), config.Dropout, config.NormEps);
            }
        }

        encoder = Embedding(config.Classes, H);

        var down = new List<Module<Tensor, Tensor>>();
        foreach (long p in config.Pool)
        {
            down.Add(new DownPool(H, config.Expand, p));                          // unet=False: no blocks on the way down
            H *= config.Expand;
        }
        d_layers = ModuleList(down.ToArray());

        c_layers = ModuleList(Stage(H).ToArray());

        var up = new List<ModuleList<Module<Tensor, Tensor>>>();
        foreach (long p in config.Pool.Reverse())
        {
            H /= config.Expand;
            var block = new List<Module<Tensor, Tensor>> { new UpPool(H * config.Expand, config.Expand, p) };
            block.AddRange(Stage(H));
            up.Add(ModuleList(block.ToArray()));
        }
        u_layers = ModuleList(up.ToArray());

        norm = LayerNorm(H, config.NormEps);
        decoder = Linear(H, config.Classes);
        RegisterComponents();
    }

    public SashimiConfig Config { get; }

    // The parameters of every S4D layer, by state-dict name (built on first use, after registration).
    HashSet<string>? _s4dParameters;

    /// <summary>
    /// Mixed precision (MixedPrecision.Apply asks): every parameter of an S4D layer stays float32, not only its kernel
    /// (log_dt, log_A_real, A_imag, C) and D but its output linear too, because backbone's S4DBlock computes its FFT
    /// convolution (float32 only on the CPU) and output projection in one dtype; the residual block casts around it.
    /// The Mamba variant's blocks follow the usual rule (A_log, D, dt bias float32, matrices bf16).
    /// </summary>
    public bool KeepsFp32(string name)
    {
        _s4dParameters ??= named_modules().Where(m => m.module is S4DBlock)
            .SelectMany(m => m.module.named_parameters().Select(p => m.name + "." + p.name)).ToHashSet(StringComparer.Ordinal);
        return _s4dParameters.Contains(name);
    }

    /// <summary>
    /// The weight-decay rule for <see cref="Ssm.Backbone.Training.AdamW"/>: its default (matrices only, no norms/biases/A/D), and, as in
    /// s4d.py's register(..., wd=0), none on the S4D kernel's log_dt, log_A_real, A_imag; none on the embedding.
    /// </summary>
    public static bool Decay(string name, Tensor p) =>
        Ssm.Backbone.Training.AdamW.DefaultDecay(name, p)
        && !name.StartsWith("encoder.", StringComparison.Ordinal)
        && !S4DBlock.NoWeightDecay.Any(n => name.EndsWith("layer." + n, StringComparison.Ordinal));

    // ------------------------------------------------------------------------------------------ convolution mode

    /// <summary>
    /// Convolution mode. ids (b, l) int64 in [0, V) -> logits (b, l, V); any l >= 1 (padded internally to a
    /// multiple of prod(pool), which causality makes invisible).
    /// </summary>
    public override Tensor forward(Tensor ids)
    {
        CheckIds(ids, 2, "(b, l)");
        long l = ids.size(1);
        if (l < 1) throw new ArgumentException("Sashimi: the sequence is empty (l = 0)", nameof(ids));
        using (var lo = ids.min()) using (var hi = ids.max())
        {
            long min = lo.item<long>(), max = hi.item<long>();
            if (min < 0 || max >= Config.Classes)
                throw new ArgumentException($"Sashimi: class ids must lie in [0, {Config.Classes}), got [{min}, {max}]", nameof(ids));
        }

        using var scope = torch.NewDisposeScope();
        var x = encoder.forward(ids);                                             // (b l H)
        long stride = Config.Stride, padded = (l + stride - 1) / stride * stride;
        if (padded != l) x = nn.functional.pad(x, new long[] { 0, 0, 0, padded - l }); // (b L H), zeros after the end
        var y = Body(x);                                                          // (b L H)
        if (padded != l) y = y.narrow(1, 0, l);                                   // (b l H)
        return MixedPrecision.Widen(decoder.forward(norm.forward(y))).MoveToOuterDisposeScope(); // (b l V), float32 under mixed precision
    }

    /// <summary>sashimi.py Sashimi.forward (unet=False) without the final norm: x (b, L, H) -> (b, L, H).</summary>
    private Tensor Body(Tensor x)
    {
        var outputs = new Stack<Tensor>();
        outputs.Push(x);
        foreach (var layer in d_layers)
        {
            x = layer.forward(x);                                                 // (b L/.. h_k+1)
            outputs.Push(x);
        }
        foreach (var layer in c_layers) x = layer.forward(x);
        x = x + outputs.Pop();                                                    // skip around the center
        foreach (var block in u_layers)
        {
            foreach (var layer in block)
            {
                x = layer.forward(x);
                if (layer is UpPool)
                {
                    x = x + outputs.Pop();                                        // skip from the down path
                    outputs.Push(x);
                }
            }
            x = x + outputs.Pop();                                                // skip around the stage's blocks
        }
        return x;
    }

    // ------------------------------------------------------------------------------------------ recurrent mode

    /// <summary>
    /// A zero state for <paramref name="batch"/> sequences (sashimi.py default_state), on the parameters' device and
    /// in their dtype: every module's state, pooling buffers included, preallocated once.
    /// </summary>
    public SashimiState AllocateState(long batch)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "batch must be at least 1");
        var dtype = norm.weight!.dtype;
        var device = norm.weight.device;
        var states = new List<SashimiLayerState>();
        foreach (var layer in AllLayers()) states.Add(((ISashimiStep)layer).AllocateState(batch, dtype, device));
        return new SashimiState(states, batch);
    }

    /// <summary>
    /// Recurrent mode, one sample: ids (b) int64 -> logits (b, V) for the next sample; advances
    /// <paramref name="state"/> in place. Inference only (runs without autograd, dropout off as in eval mode).
    /// Follows sashimi.py Sashimi.step: a pooling level whose DownPool emitted nothing this step is skipped down to
    /// the center and back, and its UpPool emits a buffered output instead.
    /// </summary>
    public Tensor Step(Tensor ids, SashimiState state)
    {
        CheckIds(ids, 1, "(b)");
        if (ids.size(0) != state.Batch)
            throw new ArgumentException($"Sashimi.Step: ids has batch {ids.size(0)}, the state was allocated for {state.Batch}", nameof(ids));
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var states = state.Layers;
        int si = 0;                                                               // index into default_state order

        Tensor? x = encoder.forward(ids);                                         // (b H)
        var outputs = new Stack<Tensor>();
        int nDown = d_layers.Count;
        for (int k = 0; k < nDown; k++)
        {
            outputs.Push(x!);
            x = ((DownPool)d_layers[k]).Step(x, states[si + k]);                 // (b h_k+1) or null
            if (x is null) break;
        }
        si += nDown;

        // skipped = levels below the one where the input stopped: their up blocks do not run this step.
        int skipped = nDown - outputs.Count;
        if (x is not null)
        {
            outputs.Push(x);
            for (int i = 0; i < c_layers.Count; i++) x = ((SashimiResidualBlock)c_layers[i]).Step(x, states[si + i]);
            x = x + outputs.Pop();
        }
        si += c_layers.Count;
        for (int j = 0; j < skipped; j++) si += u_layers[j].Count;

        for (int j = skipped; j < u_layers.Count; j++)
        {
            foreach (var layer in u_layers[j])
            {
                var st = states[si++];
                if (layer is UpPool up)
                {
                    x = up.Step(x, st) + outputs.Pop();                          // (b h_k) buffered output + down-path skip
                    outputs.Push(x);
                }
                else
                {
                    x = ((SashimiResidualBlock)layer).Step(x!, st);
                }
            }
            x = x! + outputs.Pop();
        }
        state.Steps++;
        return MixedPrecision.Widen(decoder.forward(norm.forward(x!))).MoveToOuterDisposeScope(); // (b V), float32 under mixed precision
    }

    /// <summary>Every module with a state, in sashimi.py's default_state order.</summary>
    private IEnumerable<Module<Tensor, Tensor>> AllLayers() =>
        d_layers.Concat(c_layers).Concat(u_layers.SelectMany(b => b));

    private void CheckIds(Tensor ids, int dims, string expected)
    {
        if (ids.dim() != dims || ids.dtype != ScalarType.Int64)
            throw new ArgumentException($"Sashimi expects class ids {expected} of int64, got {ids.dtype} [{string.Join(", ", ids.shape)}]", nameof(ids));
    }
}
