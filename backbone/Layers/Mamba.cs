// The Mamba-1 mixer (Gu & Dao 2023, Figure 3; mamba_ssm/modules/mamba_simple.py; HF MambaMixer).
// Parameter names equal the HF state dict: in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj.
//
// Shapes: b batch, l length, d_model width, d_inner = expand * d_model, n = d_state, r = dt_rank, k = d_conv.
//   x (b l d_model) -in_proj-> [x | z] (b l 2 d_inner)
//   x -> causal depthwise conv -> silu                                  (b d_inner l)
//   x_proj(x) -> [dt (r) | B (n) | C (n)];  Δ = softplus(dt_proj(dt))   (selective: Δ, B, C depend on x)
//   y = SelectiveScan(x, Δ, A = -exp(A_log), B, C, D, z)               (b d_inner l)
//   out_proj(y) -> (b l d_model)
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Backbone.Scans;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

/// <summary>Constructor arguments of <see cref="Mamba"/>, with mamba_simple.py's defaults.</summary>
public sealed record MambaConfig(
    long DModel,
    long DState = 16,
    long DConv = 4,
    long Expand = 2,
    long? DtRank = null,          // null = "auto": ceil(d_model / 16)
    double DtMin = 0.001,
    double DtMax = 0.1,
    double DtScale = 1.0,
    double DtInitFloor = 1e-4,
    bool ConvBias = true,
    bool Bias = false)
{
    public long DInner => Expand * DModel;
    public long Rank => DtRank ?? (DModel + 15) / 16;
}

public sealed class Mamba : nn.Module<Tensor, Tensor>, IPrefillLayer
{
    public Linear in_proj;
    public Conv1d conv1d;
    public Linear x_proj;
    public Linear dt_proj;
    public Parameter A_log;
    public Parameter D;
    public Linear out_proj;

    public MambaConfig Config { get; }

    /// <summary>Which scan implementation forward uses (Auto: fused kernel on the CPU).</summary>
    public ScanImpl Scan { get; set; } = ScanImpl.Auto;

    /// <summary>Computes the projections of <see cref="Step"/> when set (e.g. the decode engine's bf16/int8 weights).</summary>
    public IStepProjection? StepProjection { get; set; }

    Tensor Project(Linear layer, Tensor x, bool withBias = true)
        => StepProjection?.Project(layer, x, withBias) ?? (withBias ? layer.forward(x) : torch.matmul(x, layer.weight!.t()));

    /// <param name="config">Sizes and initialisation.</param>
    /// <param name="shareProjectionsWith">Use that mixer's in_proj and out_proj (tied bidirectional mixers).</param>
    public Mamba(MambaConfig config, Mamba? shareProjectionsWith = null) : base(nameof(Mamba))
    {
        Config = config;
        long dIn = config.DInner, n = config.DState, r = config.Rank;
        in_proj = shareProjectionsWith?.in_proj ?? nn.Linear(config.DModel, 2 * dIn, hasBias: config.Bias);
        conv1d = CausalConv.Create(dIn, config.DConv, config.ConvBias);
        x_proj = nn.Linear(dIn, r + 2 * n, hasBias: false);
        dt_proj = nn.Linear(r, dIn, hasBias: true);
        out_proj = shareProjectionsWith?.out_proj ?? nn.Linear(dIn, config.DModel, hasBias: config.Bias);

        using (torch.no_grad())
        {
            // dt_proj.weight: uniform(-std, std) with std = r^-0.5 * dt_scale, so the initial Δ has the
            // variance fixed by the bias below (mamba_simple.py, dt_init == "random").
            double std = Math.Pow(r, -0.5) * config.DtScale;
            nn.init.uniform_(dt_proj.weight!, -std, std);
            dt_proj.bias!.copy_(SsmInit.DtBias(dIn, config.DtMin, config.DtMax, config.DtInitFloor));
        }
        // S4D-Real initialisation A_n = -(n + 1), stored as log so A stays negative (stable); D = 1 (skip).
        // Neither should get weight decay (mamba_simple.py sets _no_weight_decay on both).
        A_log = new Parameter(torch.log(torch.arange(1, n + 1, dtype: ScalarType.Float32)).repeat(dIn, 1));
        D = new Parameter(torch.ones(dIn));
        RegisterComponents();
    }

    /// <summary>Parameter names that take no weight decay.</summary>
    public static IReadOnlyList<string> NoWeightDecay { get; } = new[] { "A_log", "D" };

    /// <summary>x (b, l, d_model) -> (b, l, d_model).</summary>
    public override Tensor forward(Tensor x) => Forward(x, null);

    /// <summary>Forward; when <paramref name="state"/> is given (fresh), it receives the state after the sequence (prefill).</summary>
    public Tensor Forward(Tensor x, LayerState? state)
    {
        using var scope = torch.NewDisposeScope();
        long l = x.shape[1], n = Config.DState, r = Config.Rank;
        var xz = in_proj.forward(x).transpose(1, 2);                             // (b 2d_inner l)
        var chunks = xz.chunk(2, 1);
        Tensor xs = chunks[0], z = chunks[1];                                    // (b d_inner l)
        if (state is not null) state.Conv!.copy_(CausalConv.StateAfter(xs, Config.DConv));
        xs = CausalConv.ForwardSilu(conv1d, xs);                 // (b d_inner l)
        var dbc = x_proj.forward(xs.transpose(1, 2));                           // (b l r+2n)
        var parts = dbc.split(new[] { r, n, n }, -1);
        var delta = torch.matmul(dt_proj.weight!, parts[0].transpose(1, 2));    // (b d_inner l), bias added in the scan
        var B = parts[1].transpose(1, 2).contiguous();                           // (b n l)
        var C = parts[2].transpose(1, 2).contiguous();
        var A = -torch.exp(A_log.to_type(ScalarType.Float32));                  // (d_inner n)
        var (y, last) = SelectiveScan.Forward(xs, delta, A, B, C, D.to_type(ScalarType.Float32), z,
            dt_proj.bias!.to_type(ScalarType.Float32), deltaSoftplus: true, returnLastState: state is not null, impl: Scan);
        if (state is not null) state.Ssm.copy_(last!);
        return out_proj.forward(y.transpose(1, 2)).MoveToOuterDisposeScope();   // (b l d_model)
    }

    /// <summary>
    /// A zero state: Conv (b, d_inner, d_conv), Ssm (b, d_inner, n) on A_log's device; float32 (the SSM state stays in
    /// fp32 for fp32/bf16/half models, as the references do) except for a float64 model, whose state is float64 so
    /// that stepping computes in the same precision as <see cref="forward"/>.
    /// </summary>
    public LayerState AllocateState(long batch)
    {
        var dev = A_log.device;
        var dtype = A_log.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        return new LayerState(
            torch.zeros(new[] { batch, Config.DInner, Config.DConv }, dtype, dev),
            torch.zeros(new[] { batch, Config.DInner, Config.DState }, dtype, dev));
    }

    /// <summary>One token (mamba_simple.py step): x (b, d_model) -> (b, d_model); updates state in place.</summary>
    public Tensor Step(Tensor x, LayerState state)
    {
        using var scope = torch.NewDisposeScope();
        long n = Config.DState, r = Config.Rank;
        var xz = Project(in_proj, x).chunk(2, -1);                              // 2 x (b d_inner)
        var xs = nn.functional.silu(CausalConv.Step(conv1d, state.Conv!, xz[0])).to_type(x.dtype);
        var parts = Project(x_proj, xs).split(new[] { r, n, n }, -1);
        var delta = Project(dt_proj, parts[0], withBias: false);                // (b d_inner), bias added in the scan
        var A = -torch.exp(A_log.to_type(ScalarType.Float32));
        var y = SelectiveScan.Step(xs, delta, A, parts[1], parts[2], state.Ssm, D.to_type(ScalarType.Float32), xz[1],
            dt_proj.bias!.to_type(ScalarType.Float32), deltaSoftplus: true);
        return Project(out_proj, y).MoveToOuterDisposeScope();
    }
}
