// The Mamba-2 mixer (Dao & Gu 2024, section 7 "the Mamba-2 block"; mamba_ssm/modules/mamba2.py; HF Mamba2Mixer).
// Parameter names equal the HF state dict: in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj.
//
// Shapes: b batch, l length, d_model, d_inner = expand * d_model = h * p, h heads of p channels, g groups,
// n = d_state, k = d_conv; conv_dim = d_inner + 2 g n.
//   in_proj(x) -> [z (d_inner) | xBC (conv_dim) | dt (h)]          one projection: the "parallel" block
//   xBC -> causal depthwise conv -> silu -> [x (h p) | B (g n) | C (g n)]
//   y = SSD(x, dt, A = -exp(A_log), B, C, D, dtBias, softplus)       (b l h p)
//   y = GatedRMSNorm(y, z)  (gate then norm unless NormBeforeGate; per group of d_inner / g channels, or over all of
//                            d_inner when NormPerGroup is false, as transformers does)
//   out_proj(y) -> (b l d_model)
// The step size is dt = clamp(softplus(dt + dt_bias), dt_limit) in the full-sequence forward. Both references skip the
// clamp in their one-token step (mamba_ssm Mamba2.step and transformers' cached decode call selective_state_update
// without dt_limit), so with a finite dt_limit their decoding differs slightly from their own forward; Step follows
// them unless DtLimitInStep is set.
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Backbone.Scans;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

/// <summary>Constructor arguments of <see cref="Mamba2"/>, with mamba2.py's defaults.</summary>
public sealed record Mamba2Config(
    long DModel,
    long DState = 128,
    long DConv = 4,
    long Expand = 2,
    long HeadDim = 64,
    long NGroups = 1,
    int ChunkSize = 256,
    double AInitMin = 1,
    double AInitMax = 16,
    double DtMin = 0.001,
    double DtMax = 0.1,
    double DtInitFloor = 1e-4,
    double DtLimitMin = 0.0,
    double DtLimitMax = double.PositiveInfinity,
    double NormEps = 1e-5,
    bool NormPerGroup = true,     // mamba_ssm (and the fused kernel transformers trains with) normalise per group; transformers' inference over all d_inner
    bool ConvBias = true,
    bool Bias = false,
    bool NormBeforeGate = false,  // mamba_ssm option: y = norm(y) * silu(z) instead of norm(y * silu(z))
    bool DtLimitInStep = false)   // false: Step ignores DtLimitMin/Max, as mamba_ssm and transformers do (see above)
{
    public long DInner => Expand * DModel;
    public long NHeads => DInner / HeadDim;
    public long ConvDim => DInner + 2 * NGroups * DState;
}

public sealed class Mamba2 : nn.Module<Tensor, Tensor>, IPrefillLayer
{
    public Linear in_proj;
    public Conv1d conv1d;
    public Parameter dt_bias;
    public Parameter A_log;
    public Parameter D;
    public GatedRMSNorm norm;
    public Linear out_proj;

    public Mamba2Config Config { get; }

    public Mamba2(Mamba2Config config) : base(nameof(Mamba2))
    {
        if (config.DInner % config.HeadDim != 0) throw new ArgumentException($"d_inner {config.DInner} is not a multiple of head_dim {config.HeadDim}");
        if (config.NHeads % config.NGroups != 0) throw new ArgumentException($"{config.NHeads} heads do not split into {config.NGroups} groups");
        Config = config;
        long h = config.NHeads, dIn = config.DInner;
        in_proj = nn.Linear(config.DModel, dIn + config.ConvDim + h, hasBias: config.Bias);
        conv1d = CausalConv.Create(config.ConvDim, config.DConv, config.ConvBias);
        dt_bias = new Parameter(SsmInit.DtBias(h, config.DtMin, config.DtMax, config.DtInitFloor)); // one per head
        // A uniform in [A_init_min, A_init_max], stored as log so A = -exp(A_log) stays negative; D = 1.
        A_log = new Parameter(torch.log(torch.empty(h).uniform_(config.AInitMin, config.AInitMax)));
        D = new Parameter(torch.ones(h));
        norm = new GatedRMSNorm(dIn, config.NormPerGroup ? dIn / config.NGroups : dIn, config.NormEps, config.NormBeforeGate);
        out_proj = nn.Linear(dIn, config.DModel, hasBias: config.Bias);
        RegisterComponents();
    }

    /// <summary>Parameter names that take no weight decay (mamba2.py: A_log, D, dt_bias).</summary>
    public static IReadOnlyList<string> NoWeightDecay { get; } = new[] { "A_log", "D", "dt_bias" };

    public override Tensor forward(Tensor x) => Forward(x, null);

    /// <summary>x (b, l, d_model) -> (b, l, d_model); a fresh <paramref name="state"/> receives the state after x (prefill).</summary>
    public Tensor Forward(Tensor x, LayerState? state)
    {
        using var scope = torch.NewDisposeScope();
        var c = Config;
        long b = x.shape[0], l = x.shape[1], h = c.NHeads, p = c.HeadDim, g = c.NGroups, n = c.DState;
        var parts = in_proj.forward(x).split(new[] { c.DInner, c.ConvDim, h }, -1);
        Tensor z = parts[0], xBC = parts[1].transpose(1, 2), dt = parts[2];      // (b l d_in), (b conv_dim l), (b l h)
        if (state is not null) state.Conv!.copy_(CausalConv.StateAfter(xBC, c.DConv));
        xBC = CausalConv.ForwardSilu(conv1d, xBC).transpose(1, 2); // (b l conv_dim)
        var xs = xBC.split(new[] { c.DInner, g * n, g * n }, -1);
        var A = -torch.exp(A_log.to_type(ScalarType.Float32));                   // (h)
        var (y, final) = Ssd.ChunkScan(
            xs[0].reshape(b, l, h, p), dt, A, xs[1].reshape(b, l, g, n), xs[2].reshape(b, l, g, n), c.ChunkSize,
            D: D.to_type(ScalarType.Float32), dtBias: dt_bias.to_type(ScalarType.Float32), dtSoftplus: true,
            returnFinalStates: state is not null, dtMin: c.DtLimitMin, dtMax: c.DtLimitMax);
        if (state is not null) state.Ssm.copy_(final!);
        var yn = norm.forward(y.reshape(b, l, c.DInner), z);
        return out_proj.forward(yn).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A zero state: Conv (b, conv_dim, d_conv), Ssm (b, h, p, n) on A_log's device; float32 (the SSM state stays in
    /// fp32 for fp32/bf16/half models, as the references do) except for a float64 model, whose state is float64 so
    /// that stepping computes in the same precision as <see cref="forward"/>.
    /// </summary>
    public LayerState AllocateState(long batch)
    {
        var dev = A_log.device;
        var c = Config;
        var dtype = A_log.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        return new LayerState(
            torch.zeros(new[] { batch, c.ConvDim, c.DConv }, dtype, dev),
            torch.zeros(new[] { batch, c.NHeads, c.HeadDim, c.DState }, dtype, dev));
    }

    /// <summary>One token (mamba2.py step): x (b, d_model) -> (b, d_model); updates state in place. The dt limit applies
    /// only when <see cref="Mamba2Config.DtLimitInStep"/> is set (the references' step does not clamp).</summary>
    public Tensor Step(Tensor x, LayerState state)
    {
        using var scope = torch.NewDisposeScope();
        var c = Config;
        long b = x.shape[0], h = c.NHeads, p = c.HeadDim, g = c.NGroups, n = c.DState;
        var parts = in_proj.forward(x).split(new[] { c.DInner, c.ConvDim, h }, -1);
        var xBC = nn.functional.silu(CausalConv.Step(conv1d, state.Conv!, parts[1])).to_type(x.dtype); // (b conv_dim)
        var xs = xBC.split(new[] { c.DInner, g * n, g * n }, -1);
        var A = -torch.exp(A_log.to_type(ScalarType.Float32));
        var y = Ssd.Step(xs[0].reshape(b, h, p), parts[2], A, xs[1].reshape(b, g, n), xs[2].reshape(b, g, n), state.Ssm,
            D: D.to_type(ScalarType.Float32), dtBias: dt_bias.to_type(ScalarType.Float32), dtSoftplus: true,
            dtMin: c.DtLimitInStep ? c.DtLimitMin : 0.0, dtMax: c.DtLimitInStep ? c.DtLimitMax : double.PositiveInfinity);
        var yn = norm.forward(y.reshape(b, c.DInner), parts[0]);
        return out_proj.forward(yn).MoveToOuterDisposeScope();
    }
}
