// RMSNorm (Zhang & Sennrich 2019) as used by Mamba: y = w * x / sqrt(mean(x^2) + eps), computed in float32 and
// returned in the input dtype (HF MambaRMSNorm). The gated form of Mamba-2 (mamba_ssm RMSNormGated):
//   norm_before_gate = False (the default, and the only form transformers has): y = w * norm(x * silu(gate))
//   norm_before_gate = True  (mamba_ssm option):                                 y = w * norm(x) * silu(gate)
// normalised per group of channels (mamba_ssm: d_inner / n_groups; transformers: all of d_inner).
using TorchSharp;
using static TorchSharp.torch;
using TorchSharp.Modules;

namespace Ssm.Backbone.Layers;

public sealed class RMSNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    public double Eps { get; }

    public RMSNorm(long dim, double eps = 1e-5) : base(nameof(RMSNorm))
    {
        Eps = eps;
        weight = new Parameter(torch.ones(dim));
        RegisterComponents();
    }

    /// <summary>x (..., dim) -> (..., dim) in x's dtype.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = Normalise(x.to_type(ScalarType.Float32), Eps).to_type(x.dtype);
        return (weight * y).MoveToOuterDisposeScope();
    }

    /// <summary>x / sqrt(mean(x^2, -1) + eps) over the last dimension.</summary>
    internal static Tensor Normalise(Tensor x, double eps)
        => x * torch.rsqrt(x.pow(2).mean(new long[] { -1 }, keepdim: true) + eps);
}

public sealed class GatedRMSNorm : nn.Module<Tensor, Tensor, Tensor>
{
    public Parameter weight;
    public double Eps { get; }
    /// <summary>Channels normalised together (d / n_groups in mamba_ssm; d for transformers' torch path).</summary>
    public long GroupSize { get; }
    /// <summary>Normalise x first and gate afterwards (mamba_ssm norm_before_gate=True); false gates first.</summary>
    public bool NormBeforeGate { get; }

    public GatedRMSNorm(long dim, long groupSize, double eps = 1e-5, bool normBeforeGate = false) : base(nameof(GatedRMSNorm))
    {
        if (groupSize <= 0 || dim % groupSize != 0) throw new ArgumentException($"group size {groupSize} must divide {dim}");
        Eps = eps;
        GroupSize = groupSize;
        NormBeforeGate = normBeforeGate;
        weight = new Parameter(torch.ones(dim));
        RegisterComponents();
    }

    /// <summary>x, gate (..., dim) -> w * rmsnorm_per_group(x * silu(gate)) (or w * rmsnorm_per_group(x) * silu(gate)
    /// when NormBeforeGate), in x's dtype.</summary>
    public override Tensor forward(Tensor x, Tensor gate)
    {
        using var scope = torch.NewDisposeScope();
        var g = nn.functional.silu(gate.to_type(ScalarType.Float32));
        var h = x.to_type(ScalarType.Float32);
        if (!NormBeforeGate) h = h * g;
        var shape = h.shape;
        var grouped = h.reshape(shape[..^1].Append(shape[^1] / GroupSize).Append(GroupSize).ToArray());
        var y = RMSNorm.Normalise(grouped, Eps).reshape(shape);
        if (NormBeforeGate) y = y * g;
        return (weight * y.to_type(x.dtype)).MoveToOuterDisposeScope();
    }
}
