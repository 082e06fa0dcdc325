// Bidirectional wrapper for non-causal tasks (vision, DNA): one mixer reads the sequence forward, a second reads
// it reversed; the reversed output is flipped back and the two are merged (Caduceus' BiMambaWrapper; Vim's
// "bidirectional SSM"). Parameter names follow Caduceus: mamba_fwd.*, mamba_rev.*.
// With tied projections (Caduceus, Vim bimamba v2) the two directions share in_proj and out_proj: fewer
// parameters, and the same input projection feeds both scans.
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

/// <summary>How the two directions are combined.</summary>
public enum BidirectionalMerge
{
    /// <summary>fwd + rev (Caduceus "add").</summary>
    Add,
    /// <summary>(fwd + rev) / 2 (Vim bimamba v2).</summary>
    Mean,
    /// <summary>fwd * rev (Caduceus "ew_multiply").</summary>
    Multiply,
}

public sealed class Bidirectional : nn.Module<Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor> mamba_fwd;
    public nn.Module<Tensor, Tensor> mamba_rev;
    public BidirectionalMerge Merge { get; }

    public Bidirectional(nn.Module<Tensor, Tensor> forward, nn.Module<Tensor, Tensor> reverse, BidirectionalMerge merge = BidirectionalMerge.Add)
        : base(nameof(Bidirectional))
    {
        if (ReferenceEquals(forward, reverse)) throw new ArgumentException("the two directions must be distinct modules (tie projections instead)");
        mamba_fwd = forward;
        mamba_rev = reverse;
        Merge = merge;
        RegisterComponents();
    }

    /// <summary>Two Mamba mixers; with <paramref name="tieProjections"/> the reverse one shares in_proj and out_proj.</summary>
    public static Bidirectional OfMamba(MambaConfig config, bool tieProjections = true, BidirectionalMerge merge = BidirectionalMerge.Add)
    {
        var fwd = new Mamba(config);
        return new Bidirectional(fwd, new Mamba(config, tieProjections ? fwd : null), merge);
    }

    /// <summary>x (b, l, d) -> (b, l, d): merge(f(x), flip(g(flip(x)))) along l.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var yf = mamba_fwd.forward(x);
        var yr = mamba_rev.forward(x.flip(1)).flip(1);
        var y = Merge switch
        {
            BidirectionalMerge.Add => yf + yr,
            BidirectionalMerge.Mean => (yf + yr) / 2,
            _ => yf * yr,
        };
        return y.MoveToOuterDisposeScope();
    }
}
