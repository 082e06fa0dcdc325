// DiffuSSM (Yan, Gu, Rush 2024, "Diffusion Models Without Attention", CVPR; arXiv 2311.18257): a diffusion denoiser
// with no attention and no patchify. The image is flattened to a sequence of pixels (raster order); every block is a
// gated bidirectional SSM core wrapped in an hourglass of dense layers that shortens the sequence by M before the
// SSM and restores it after (paper section 4, figure 2), with adaLN-Zero conditioning on time step and class (DiT).
//
// Shapes: b batch, c channels, H = W = img_size, J = H W pixels, d = hidden_size, M = downsample ratio,
//         L = ceil(J / M) shortened length, k classes.
//   x (b c H W) -> (b J c) -x_embedder-> (b J d) + pos_embed (1 J d)
//   cond = t_embedder(t) + y_embedder(y)                                      (b d)
//   depth x DiffuSSMBlock:
//     (shift, scale, gate) = adaLN_modulation(cond)                           (b d) each
//     h = modulate(norm(x), shift, scale)                                     (b J d)
//     hourglass down (eq. "U_l = sigma(W_k^down sigma(W^0 I_j))"): u = gelu(W^0 h) (b J d); pad J to L M with
//       zeros and merge each run of M neighbours: (b L M d) -> (b L M*d) -down_proj-> gelu -> (b L d)
//     y = BiSSM(u)   (backbone Bidirectional: a forward and a reversed Mamba, tied projections, summed)  (b L d)
//     hourglass up ("I'_{Ml+k} = sigma(W_k^up Y_l)"): (b L d) -up_proj-> (b L M*d) -> (b L M d) -> (b L*M d), crop to J, gelu
//     gated: o = up * gelu(gate_proj(h))       (the full-length branch gates the SSM path, as in BiGS)
//     x = x + gate * out_proj(o)
//   final_layer: modulate(norm_final(x)) -linear-> (b J c) -> (b c H W)
// Module names follow DiT where the piece is DiT's (x_embedder, t_embedder, y_embedder, adaLN_modulation,
// final_layer); the hourglass and SSM names are this implementation's (no official DiffuSSM code was released).
using System.Text.Json.Serialization;
using Ssm.Backbone.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>DiffuSSM's sizes. The default is a small model for 28 x 28 grey images (Fashion-MNIST, MNIST).</summary>
public sealed record DiffuSSMConfig
{
    public long ImgSize { get; init; } = 28;
    public long InChans { get; init; } = 1;
    public long NumClasses { get; init; } = 10;
    public long HiddenSize { get; init; } = 128;
    public long Depth { get; init; } = 6;
    /// <summary>M: the hourglass shortens the sequence by this factor around the SSM (the paper uses 2).</summary>
    public long Downsample { get; init; } = 2;
    public long DState { get; init; } = 16;
    public long DConv { get; init; } = 4;
    public long Expand { get; init; } = 2;

    /// <summary>28 x 28 grey, 10 classes, width 128, 6 blocks, M = 2 (1,982,465 parameters).</summary>
    public static DiffuSSMConfig Small28 => new();

    /// <summary>A tiny model for tests.</summary>
    public static DiffuSSMConfig Tiny => new() { ImgSize = 8, HiddenSize = 32, Depth = 2, DState = 4 };

    [JsonIgnore] public long SequenceLength => ImgSize * ImgSize;

    /// <summary>The SSM's sizes (mamba_simple.py defaults otherwise).</summary>
    [JsonIgnore] public MambaConfig Mixer => new(HiddenSize, DState, DConv, Expand);

    /// <exception cref="ArgumentException">An option out of range, named.</exception>
    public void Validate()
    {
        foreach (var (name, v) in new[] { (nameof(ImgSize), ImgSize), (nameof(InChans), InChans), (nameof(NumClasses), NumClasses),
            (nameof(HiddenSize), HiddenSize), (nameof(Depth), Depth), (nameof(Downsample), Downsample), (nameof(DState), DState),
            (nameof(DConv), DConv), (nameof(Expand), Expand) })
            if (v <= 0) throw new ArgumentException($"DiffuSSMConfig.{name} must be positive, got {v}");
    }
}

/// <summary>
/// The hourglass around the SSM: shorten (b, J, d) to (b, ceil(J/M), d), run the core, restore exactly J positions.
/// For J not divisible by M the sequence is zero-padded to the next multiple before merging and cropped after.
/// </summary>
public sealed class Hourglass : nn.Module<Tensor, Tensor>
{
    public Linear in_proj;     // W^0   (d -> d)
    public Linear down_proj;   // W^down (M d -> d): one matrix per merged position k, stacked
    public nn.Module<Tensor, Tensor> core;
    public Linear up_proj;     // W^up  (d -> M d): one matrix per restored position k, stacked
    public long Ratio { get; }

    public Hourglass(long d, long ratio, nn.Module<Tensor, Tensor> core) : base(nameof(Hourglass))
    {
        if (ratio <= 0) throw new ArgumentOutOfRangeException(nameof(ratio), $"hourglass ratio must be positive, got {ratio}");
        Ratio = ratio;
        in_proj = nn.Linear(d, d);
        down_proj = nn.Linear(ratio * d, d);
        this.core = core;
        up_proj = nn.Linear(d, ratio * d);
        RegisterComponents();
    }

    /// <summary>(b, J) -> (b, ceil(J / M)): the length the core sees.</summary>
    public long ShortLength(long j) => (j + Ratio - 1) / Ratio;

    /// <summary>(b, J, d) -> (b, ceil(J/M), d): zero-pad to a multiple of M, merge each M neighbours.</summary>
    public Tensor Down(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], j = x.shape[1], d = x.shape[2], l = ShortLength(j);
        var u = nn.functional.gelu(in_proj.forward(x));                                   // (b J d)
        if (l * Ratio != j) u = nn.functional.pad(u, [0, 0, 0, l * Ratio - j]);           // (b L*M d)
        return nn.functional.gelu(down_proj.forward(u.reshape(b, l, Ratio * d))).MoveToOuterDisposeScope(); // (b L d)
    }

    /// <summary>(b, L, d) -> (b, J, d): each short position yields M outputs, then the padding is cropped.</summary>
    public Tensor Up(Tensor y, long j)
    {
        using var scope = torch.NewDisposeScope();
        long b = y.shape[0], l = y.shape[1], d = y.shape[2];
        var u = up_proj.forward(y).reshape(b, l * Ratio, d);                             // (b L*M d)
        return nn.functional.gelu(u.narrow(1, 0, j)).MoveToOuterDisposeScope();          // (b J d)
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return Up(core.forward(Down(x)), x.shape[1]).MoveToOuterDisposeScope();
    }
}

public sealed class DiffuSSMBlock : nn.Module<Tensor, Tensor, Tensor>
{
    public LayerNorm norm;
    public Hourglass hourglass;
    public Linear gate_proj;
    public Linear out_proj;
    public Sequential adaLN_modulation;

    public DiffuSSMBlock(DiffuSSMConfig c) : base(nameof(DiffuSSMBlock))
    {
        long d = c.HiddenSize;
        norm = nn.LayerNorm(d, eps: 1e-6, elementwise_affine: false);
        hourglass = new Hourglass(d, c.Downsample, Bidirectional.OfMamba(c.Mixer, tieProjections: true, BidirectionalMerge.Add));
        gate_proj = nn.Linear(d, d);
        out_proj = nn.Linear(d, d);
        adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 3 * d));
        // adaLN-Zero (DiT section 3.2): the modulation starts at zero, so each block starts as the identity.
        using (torch.no_grad())
        {
            var lin = (Linear)adaLN_modulation[1];
            lin.weight!.zero_();
            lin.bias!.zero_();
        }
        RegisterComponents();
    }

    /// <summary>x (b, J, d), cond (b, d) -> (b, J, d).</summary>
    public override Tensor forward(Tensor x, Tensor cond)
    {
        using var scope = torch.NewDisposeScope();
        var mod = adaLN_modulation.forward(cond).chunk(3, 1);                    // 3 x (b d)
        var h = AdaLN.Modulate(norm.forward(x), mod[0], mod[1]);                  // (b J d)
        var o = hourglass.forward(h) * nn.functional.gelu(gate_proj.forward(h));  // (b J d)
        return (x + mod[2].unsqueeze(1) * out_proj.forward(o)).MoveToOuterDisposeScope();
    }
}

/// <summary>DiT's FinalLayer: adaLN-modulated LayerNorm and a linear map to the output channels (zero-initialised).</summary>
public sealed class DiffusionFinalLayer : nn.Module<Tensor, Tensor, Tensor>
{
    public LayerNorm norm_final;
    public Linear linear;
    public Sequential adaLN_modulation;

    public DiffusionFinalLayer(long hidden, long outFeatures) : base("FinalLayer")
    {
        norm_final = nn.LayerNorm(hidden, eps: 1e-6, elementwise_affine: false);
        linear = nn.Linear(hidden, outFeatures);
        adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden));
        using (torch.no_grad())
        {
            linear.weight!.zero_(); linear.bias!.zero_();
            var lin = (Linear)adaLN_modulation[1];
            lin.weight!.zero_(); lin.bias!.zero_();
        }
        RegisterComponents();
    }

    /// <summary>x (b, l, d), cond (b, d) -> (b, l, out).</summary>
    public override Tensor forward(Tensor x, Tensor cond)
    {
        using var scope = torch.NewDisposeScope();
        var mod = adaLN_modulation.forward(cond).chunk(2, 1);
        return linear.forward(AdaLN.Modulate(norm_final.forward(x), mod[0], mod[1])).MoveToOuterDisposeScope();
    }
}

public sealed class DiffuSSM : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    public Linear x_embedder;
    public Parameter pos_embed;
    public TimestepEmbedder t_embedder;
    public LabelEmbedder y_embedder;
    public ModuleList<DiffuSSMBlock> blocks;
    public DiffusionFinalLayer final_layer;

    public DiffuSSMConfig Config { get; }

    public DiffuSSM(DiffuSSMConfig config) : base(nameof(DiffuSSM))
    {
        config.Validate();
        Config = config;
        long d = config.HiddenSize;
        x_embedder = nn.Linear(config.InChans, d);
        // A learned position per pixel: the raster scan alone does not tell the SSM where a row ends.
        pos_embed = new Parameter(torch.zeros(1, config.SequenceLength, d));
        t_embedder = new TimestepEmbedder(d);
        y_embedder = new LabelEmbedder(config.NumClasses, d);
        blocks = new ModuleList<DiffuSSMBlock>(Enumerable.Range(0, (int)config.Depth).Select(_ => new DiffuSSMBlock(config)).ToArray());
        final_layer = new DiffusionFinalLayer(d, config.InChans);
        using (torch.no_grad()) VisionInit.TruncNormal(pos_embed, 0, 0.02);
        RegisterComponents();
    }

    /// <summary>The class id meaning "unconditional".</summary>
    public long NullClass => y_embedder.NullClass;

    /// <summary>x (b, c, H, W), t (b) long, y (b) long (NullClass = unconditional) -> (b, c, H, W).</summary>
    public override Tensor forward(Tensor x, Tensor t, Tensor y)
    {
        var c = Config;
        if (x.dim() != 4 || x.shape[1] != c.InChans || x.shape[2] != c.ImgSize || x.shape[3] != c.ImgSize)
            throw new ArgumentException($"DiffuSSM: images must be (b, {c.InChans}, {c.ImgSize}, {c.ImgSize}), got ({string.Join(", ", x.shape)})");
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0];
        // Mixed precision: the network computes in its weights' dtype (bf16) and the prediction leaves in float32, so
        // the diffusion arithmetic around it stays float32 (a float64 model stays float64 throughout).
        var ct = x_embedder.weight!.dtype;
        var h = x_embedder.forward(x.to_type(ct).flatten(2).transpose(1, 2)) + pos_embed.to_type(ct); // (b J d)
        var cond = t_embedder.forward(t) + y_embedder.forward(y);                        // (b d)
        foreach (var block in blocks) h = block.forward(h, cond);
        var o = final_layer.forward(h, cond);                                            // (b J c)
        var img = o.transpose(1, 2).reshape(b, c.InChans, c.ImgSize, c.ImgSize);
        return Ssm.Backbone.Training.MixedPrecision.Widen(img).MoveToOuterDisposeScope();
    }
}
