// The conditioning pieces every diffusion denoiser of the suite shares, as DiT (Peebles & Xie 2023, facebookresearch/DiT
// models.py) defines them and DiffuSSM / DiS reuse them:
//   TimestepEmbedder   t (b) -> sinusoidal features (b, 256) -> Linear -> SiLU -> Linear -> (b, d)     (names mlp.0, mlp.2)
//   LabelEmbedder      y (b) -> embedding_table (k + 1, d); row k is the "null" class of classifier-free guidance
//   Modulate           adaLN: x * (1 + scale) + shift, with (shift, scale) per sample broadcast over the sequence
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Vision;

public sealed class TimestepEmbedder : nn.Module<Tensor, Tensor>
{
    public Sequential mlp;
    public long FrequencySize { get; }

    public TimestepEmbedder(long hidden, long frequencySize = 256) : base(nameof(TimestepEmbedder))
    {
        FrequencySize = frequencySize;
        mlp = nn.Sequential(nn.Linear(frequencySize, hidden), nn.SiLU(), nn.Linear(hidden, hidden));
        // DiT initialise_weights: the timestep MLP's weights N(0, 0.02).
        using (torch.no_grad())
            foreach (var (name, p) in mlp.named_parameters())
                if (name.EndsWith("weight")) nn.init.normal_(p, 0, 0.02);
        RegisterComponents();
    }

    /// <summary>
    /// Sinusoidal embedding of (possibly fractional) time steps (b) -> (b, dim): [cos(t f_i), sin(t f_i)] with
    /// f_i = 10000^(-i / half), i &lt; half (DiT timestep_embedding; the transformer's positional code).
    /// </summary>
    public static Tensor Sinusoidal(Tensor t, long dim, double maxPeriod = 10000)
    {
        using var scope = torch.NewDisposeScope();
        long half = dim / 2;
        var freqs = torch.exp(-Math.Log(maxPeriod) * torch.arange(half, dtype: ScalarType.Float32, device: t.device) / half); // (half)
        var args = t.to_type(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);                                          // (b half)
        var emb = torch.cat(new[] { args.cos(), args.sin() }, 1);
        if (dim % 2 == 1) emb = torch.cat(new[] { emb, torch.zeros_like(emb.narrow(1, 0, 1)) }, 1);
        return emb.MoveToOuterDisposeScope();
    }

    /// <summary>t (b) long or float -> (b, hidden) in the MLP's dtype.</summary>
    public override Tensor forward(Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        var w = ((Linear)mlp[0]).weight!;
        return mlp.forward(Sinusoidal(t, FrequencySize).to_type(w.dtype)).MoveToOuterDisposeScope();
    }
}

public sealed class LabelEmbedder : nn.Module<Tensor, Tensor>
{
    public Embedding embedding_table;
    public long NumClasses { get; }

    /// <summary>The id that means "no class" (classifier-free guidance's unconditional branch).</summary>
    public long NullClass => NumClasses;

    public LabelEmbedder(long numClasses, long hidden) : base(nameof(LabelEmbedder))
    {
        NumClasses = numClasses;
        embedding_table = nn.Embedding(numClasses + 1, hidden);
        using (torch.no_grad()) nn.init.normal_(embedding_table.weight!, 0, 0.02);
        RegisterComponents();
    }

    /// <summary>y (b) long in 0..k (k = null) -> (b, hidden).</summary>
    public override Tensor forward(Tensor y) => embedding_table.forward(y);

    /// <summary>
    /// Classifier-free guidance's label dropout (Ho &amp; Salimans section 3.2; DiT token_drop): each label is replaced
    /// by the null class with probability <paramref name="p"/>.
    /// </summary>
    public Tensor Drop(Tensor y, double p, Generator? generator = null)
    {
        if (p <= 0) return y.alias();
        using var scope = torch.NewDisposeScope();
        var drop = torch.rand(y.shape, device: y.device, generator: generator) < p;
        return torch.where(drop, torch.full_like(y, NullClass), y).MoveToOuterDisposeScope();
    }
}

public static class AdaLN
{
    /// <summary>x (b, l, d) * (1 + scale (b, d)) + shift (b, d) (DiT modulate).</summary>
    public static Tensor Modulate(Tensor x, Tensor shift, Tensor scale) => x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}
