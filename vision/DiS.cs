// DiS (Fei, Fan, Yu, Huang 2024, "Scalable Diffusion Models with State Space Backbone", arXiv 2402.05608): a
// diffusion denoiser that treats the time step, the class and the image patches all as tokens of one sequence,
// processed by bidirectional SSM blocks (here Vim's: RMSNorm + bimamba v2, vision/Vim.cs) with U-ViT's long skip
// connections (Bao et al. 2023): the first half of the blocks hand their outputs to the mirrored blocks of the second
// half, which concatenate and project them back (skip_linear).
//
// Shapes: b batch, c channels, H = W = img_size, p patch, g = H / p, m = g^2 patches, l = m + 2 tokens, d hidden,
//         D = depth (odd: (D - 1)/2 in, 1 mid, (D - 1)/2 out).
//   x (b c H W) -x_embedder (conv p x p, stride p)-> (b m d);  tokens [t_embedder(t), y_embedder(y), patches] (b l d) + pos_embed
//   in_blocks:  x <- block(x); push x
//   mid_block
//   out_blocks: x <- block(skip_linear(cat(x, pop)))      (b l d)
//   norm -> linear (d -> p^2 c) on the patch tokens -> unpatchify -> (b c H W)
using System.Text.Json.Serialization;
using Ssm.Backbone.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Vision;

public sealed record DiSConfig
{
    public long ImgSize { get; init; } = 28;
    public long PatchSize { get; init; } = 2;
    public long InChans { get; init; } = 1;
    public long NumClasses { get; init; } = 10;
    public long HiddenSize { get; init; } = 192;
    /// <summary>Blocks in all; odd, so the middle block has no skip partner.</summary>
    public long Depth { get; init; } = 9;
    public long DState { get; init; } = 16;
    public long DConv { get; init; } = 4;
    public long Expand { get; init; } = 2;
    public double NormEpsilon { get; init; } = 1e-5;

    /// <summary>
    /// 28 x 28 grey, patch 4 (49 patches), width 128, 5 blocks (0.8M parameters): the shipped Fashion-MNIST model,
    /// sized to train on two CPU cores in about an hour and a half.
    /// </summary>
    public static DiSConfig Small28 => new() { PatchSize = 4, HiddenSize = 128, Depth = 5 };

    /// <summary>28 x 28 grey, patch 2 (196 patches), width 192, 9 blocks: the larger model for a GPU.</summary>
    public static DiSConfig Base28 => new();

    /// <summary>A tiny model for tests.</summary>
    public static DiSConfig Tiny => new() { ImgSize = 8, HiddenSize = 32, Depth = 3, DState = 4 };

    [JsonIgnore] public long GridSize => ImgSize / PatchSize;
    [JsonIgnore] public long NumPatches => GridSize * GridSize;
    [JsonIgnore] public MambaConfig Mixer => new(HiddenSize, DState, DConv, Expand);

    public void Validate()
    {
        foreach (var (name, v) in new[] { (nameof(ImgSize), ImgSize), (nameof(PatchSize), PatchSize), (nameof(InChans), InChans),
            (nameof(NumClasses), NumClasses), (nameof(HiddenSize), HiddenSize), (nameof(Depth), Depth), (nameof(DState), DState),
            (nameof(DConv), DConv), (nameof(Expand), Expand) })
            if (v <= 0) throw new ArgumentException($"DiSConfig.{name} must be positive, got {v}");
        if (ImgSize % PatchSize != 0) throw new ArgumentException($"DiSConfig.ImgSize {ImgSize} must be a multiple of PatchSize {PatchSize}");
        if (Depth % 2 == 0) throw new ArgumentException($"DiSConfig.Depth must be odd (in blocks, a middle block, out blocks), got {Depth}");
    }
}

public sealed class DiS : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    /// <summary>Tokens before the patches: time step, class.</summary>
    public const int ExtraTokens = 2;

    public VimPatchEmbed x_embedder;
    public TimestepEmbedder t_embedder;
    public LabelEmbedder y_embedder;
    public Parameter pos_embed;
    public ModuleList<VimBlock> in_blocks;
    public VimBlock mid_block;
    public ModuleList<VimBlock> out_blocks;
    public ModuleList<Linear> skip_linears;
    public LayerNorm norm;
    public Linear decoder_pred;

    public DiSConfig Config { get; }

    public DiS(DiSConfig config) : base(nameof(DiS))
    {
        config.Validate();
        Config = config;
        long d = config.HiddenSize, half = (config.Depth - 1) / 2;
        x_embedder = new VimPatchEmbed(config.InChans, d, config.PatchSize);
        t_embedder = new TimestepEmbedder(d);
        y_embedder = new LabelEmbedder(config.NumClasses, d);
        pos_embed = new Parameter(torch.zeros(1, config.NumPatches + ExtraTokens, d));
        VimBlock Block() => new(config.Mixer, config.NormEpsilon, 0.0, residualInFp32: true);
        in_blocks = new ModuleList<VimBlock>(Enumerable.Range(0, (int)half).Select(_ => Block()).ToArray());
        mid_block = Block();
        out_blocks = new ModuleList<VimBlock>(Enumerable.Range(0, (int)half).Select(_ => Block()).ToArray());
        skip_linears = new ModuleList<Linear>(Enumerable.Range(0, (int)half).Select(_ => nn.Linear(2 * d, d)).ToArray());
        norm = nn.LayerNorm(d, eps: 1e-6);
        decoder_pred = nn.Linear(d, config.PatchSize * config.PatchSize * config.InChans);
        using (torch.no_grad())
        {
            VisionInit.TruncNormal(pos_embed, 0, 0.02);
            // Start as the zero predictor, like DiT's zero-initialised final layer: early training is stable.
            decoder_pred.weight!.zero_();
            decoder_pred.bias!.zero_();
            foreach (var blk in in_blocks.Concat(out_blocks).Append(mid_block))
                blk.mixer.out_proj.weight!.div_(Math.Sqrt(config.Depth));
        }
        RegisterComponents();
    }

    public long NullClass => y_embedder.NullClass;

    /// <summary>x (b, c, H, W), t (b) long, y (b) long (NullClass = unconditional) -> (b, c, H, W).</summary>
    public override Tensor forward(Tensor x, Tensor t, Tensor y)
    {
        var c = Config;
        if (x.dim() != 4 || x.shape[1] != c.InChans || x.shape[2] != c.ImgSize || x.shape[3] != c.ImgSize)
            throw new ArgumentException($"DiS: images must be (b, {c.InChans}, {c.ImgSize}, {c.ImgSize}), got ({string.Join(", ", x.shape)})");
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], p = c.PatchSize, g = c.GridSize;
        // Mixed precision: the network computes in its weights' dtype (bf16), the blocks keep their residual stream in
        // float32 (VimBlock), and the prediction leaves in float32, so the diffusion arithmetic around it stays float32.
        var ct = x_embedder.proj.weight!.dtype;
        var patches = x_embedder.forward(x.to_type(ct));                                      // (b m d)
        var h = torch.cat(new[] { t_embedder.forward(t).unsqueeze(1), y_embedder.forward(y).unsqueeze(1), patches }, 1)
            + pos_embed.to_type(ct);                                                          // (b l d)
        var skips = new Stack<Tensor>();
        foreach (var blk in in_blocks) { h = blk.forward(h); skips.Push(h); }
        h = mid_block.forward(h);
        for (int i = 0; i < out_blocks.Count; i++)
            h = out_blocks[i].forward(skip_linears[i].forward(torch.cat(new[] { h, skips.Pop() }, 2).to_type(ct)));
        var o = decoder_pred.forward(norm.forward(h.narrow(1, ExtraTokens, c.NumPatches).to_type(ct))); // (b m p*p*c)
        // unpatchify: (b g g p p c) -> (b c g p g p) -> (b c H W)
        var img = o.reshape(b, g, g, p, p, c.InChans).permute(0, 5, 1, 3, 2, 4).reshape(b, c.InChans, c.ImgSize, c.ImgSize);
        return Ssm.Backbone.Training.MixedPrecision.Widen(img).MoveToOuterDisposeScope();
    }
}
