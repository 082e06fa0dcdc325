// Vision Mamba (Vim; Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State
// Space Model", ICML 2024, arXiv 2401.09417), as hustvl/Vim vim/models_mamba.py VisionMamba with the released
// configuration (vim_*_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2): bimamba v2 mixers,
// RMSNorm, residual in fp32, learned absolute position embedding, one class token in the middle of the sequence,
// divide-out, classification from the class token.
// State-dict names equal VisionMamba's: patch_embed.proj, cls_token, pos_embed, layers.{i}.norm,
// layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj, conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b},
// norm_f, head.
//
// Shapes: b batch, c in_chans, H = W = img_size, p patch, g = H / p grid side, m = g * g patches, l = m + 1 tokens,
// d = embed_dim, k = num_classes.
//   images (b c H W) -patch_embed.proj (conv p x p, stride p)-> (b d g g) -> (b m d)  (row-major patches)
//   insert cls_token at position t = m / 2 -> (b l d);  + pos_embed (1 l d)
//   depth x:  x <- x + drop_path_i(mixer_i(norm_i(x)))  (residual stream in fp32)
//   norm_f(x)[:, t] (b d) -head-> logits (b k)
using System.Text.Json.Serialization;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>VisionMamba's constructor arguments; the defaults are Vim-Ti (vim_tiny_patch16_224, ~7M parameters).</summary>
public sealed record VimConfig
{
    public long ImgSize { get; init; } = 224;
    public long PatchSize { get; init; } = 16;
    public long InChans { get; init; } = 3;
    public long NumClasses { get; init; } = 1000;
    public long EmbedDim { get; init; } = 192;
    public long Depth { get; init; } = 24;
    public long DState { get; init; } = 16;
    public long DConv { get; init; } = 4;
    public long Expand { get; init; } = 2;
    public double NormEpsilon { get; init; } = 1e-5;
    /// <summary>Stochastic depth at the last layer (rates rise linearly from 0); Vim-Ti trains with 0.05.</summary>
    public double DropPathRate { get; init; } = 0.05;
    /// <summary>Keep the residual stream in float32 when activations are lower precision (the reference does).</summary>
    public bool ResidualInFp32 { get; init; } = true;

    /// <summary>Vim-Ti: 224 x 224 RGB, patch 16, width 192, depth 24, 1000 classes (the paper's 7M model).</summary>
    public static VimConfig Tiny => new();

    /// <summary>28 x 28 grey images, 10 classes (Fashion-MNIST): patch 4 (7 x 7 patches), width 128, depth 6 (~0.8M parameters).</summary>
    public static VimConfig Small28 => new()
    {
        ImgSize = 28, PatchSize = 4, InChans = 1, NumClasses = 10, EmbedDim = 128, Depth = 6, DropPathRate = 0.0,
    };

    /// <summary>Patches per side.</summary>
    [JsonIgnore] public long GridSize => ImgSize / PatchSize;

    /// <summary>Patches per image (the class token makes the sequence one longer).</summary>
    [JsonIgnore] public long NumPatches => GridSize * GridSize;

    /// <summary>The mixer's sizes (mamba_simple.py defaults for everything Vim does not set).</summary>
    [JsonIgnore] public MambaConfig Mixer => new(EmbedDim, DState, DConv, Expand);

    /// <exception cref="ArgumentException">An option out of range, named.</exception>
    public void Validate()
    {
        foreach (var (name, v) in new[] { (nameof(ImgSize), ImgSize), (nameof(PatchSize), PatchSize), (nameof(InChans), InChans),
            (nameof(NumClasses), NumClasses), (nameof(EmbedDim), EmbedDim), (nameof(Depth), Depth), (nameof(DState), DState),
            (nameof(DConv), DConv), (nameof(Expand), Expand) })
            if (v <= 0) throw new ArgumentException($"VimConfig.{name} must be positive, got {v}");
        if (ImgSize % PatchSize != 0) throw new ArgumentException($"VimConfig.ImgSize {ImgSize} must be a multiple of PatchSize {PatchSize}");
        if (!(DropPathRate >= 0 && DropPathRate < 1)) throw new ArgumentException($"VimConfig.DropPathRate must be in [0, 1), got {DropPathRate}");
        if (!(NormEpsilon > 0)) throw new ArgumentException($"VimConfig.NormEpsilon must be positive, got {NormEpsilon}");
    }
}

/// <summary>Stochastic depth (Huang et al. 2016; timm DropPath): drop a residual branch per sample, scale survivors by 1/keep.</summary>
public static class StochasticDepth
{
    /// <summary>x (b, ...): in training with rate p > 0, each sample's x is zeroed with probability p, else divided by 1 - p.</summary>
    public static Tensor Apply(Tensor x, double p, bool training)
    {
        if (!training || p <= 0) return x.alias();
        using var scope = torch.NewDisposeScope();
        double keep = 1 - p;
        var shape = new long[x.dim()];
        Array.Fill(shape, 1L);
        shape[0] = x.shape[0];
        var mask = (torch.rand(shape, x.dtype, x.device) < keep).to_type(x.dtype); // (b 1 ... 1)
        return (x * mask / keep).MoveToOuterDisposeScope();
    }
}

/// <summary>Initialisers shared by the vision models.</summary>
public static class VisionInit
{
    /// <summary>
    /// Fills t in place with N(mean, std^2) truncated to [a, b] (torch.nn.init.trunc_normal_, by the inverse CDF:
    /// uniform between the CDF at a and at b, then the normal quantile). Written out because TorchSharp 0.107's
    /// nn.init.trunc_normal_ fills the tensor with the constant std instead.
    /// </summary>
    public static void TruncNormal(Tensor t, double mean, double std, double a = -2, double b = 2)
    {
        static double Cdf(double x) => (1 + Erf(x / Math.Sqrt(2))) / 2;
        using var noGrad = torch.no_grad();
        double lo = Cdf((a - mean) / std), hi = Cdf((b - mean) / std);
        t.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_().mul_(std * Math.Sqrt(2)).add_(mean).clamp_(a, b);
    }

    /// <summary>erf(x) to ~1e-7 (Abramowitz and Stegun 7.1.26); only used for the truncation bounds.</summary>
    static double Erf(double x)
    {
        double s = Math.Sign(x), ax = Math.Abs(x), k = 1 / (1 + 0.3275911 * ax);
        double y = 1 - ((((1.061405429 * k - 1.453152027) * k + 1.421413741) * k - 0.284496736) * k + 0.254829592) * k * Math.Exp(-ax * ax);
        return s * y;
    }
}

/// <summary>The patch projection of Vim, VMamba and DiS: a p x p convolution with stride p over exact multiples of p.</summary>
public static class PatchProjection
{
    /// <summary>
    /// images (b, c, H, W), H and W multiples of p -> (b, H/p, W/p, d) = proj(images) channels last. For 16-bit weights
    /// it runs as the equivalent matmul over flattened patches: libtorch 2.10's CPU bf16 Conv2d returns wrong values
    /// when out_channels is not a multiple of 16 (measured: relative error 0.3-0.7 for 4, 8, 12 and 24 output channels,
    /// bf16 rounding only for 16, 32, 48 and 64), which tiny configs hit. Float32 and float64 keep the convolution.
    /// </summary>
    public static Tensor ChannelsLast(Conv2d proj, Tensor images)
    {
        using var scope = torch.NewDisposeScope();
        var w = proj.weight!;                                                      // (d c p p)
        if (!MixedPrecision.IsHalf(w)) return proj.forward(images).permute(0, 2, 3, 1).MoveToOuterDisposeScope();
        long b = images.shape[0], c = images.shape[1], p = w.shape[2], gh = images.shape[2] / p, gw = images.shape[3] / p, d = w.shape[0];
        var patches = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh, gw, c * p * p); // (b gh gw c*p*p)
        var y = patches.matmul(w.reshape(d, c * p * p).t());                      // (b gh gw d)
        if (proj.bias is { } bias) y = y + bias;
        return y.MoveToOuterDisposeScope();
    }
}

/// <summary>Vim's PatchEmbed: a p x p convolution with stride p (no norm in Vim).</summary>
public sealed class VimPatchEmbed : nn.Module<Tensor, Tensor>
{
    public Conv2d proj;

    public VimPatchEmbed(long inChans, long embedDim, long patch) : base("PatchEmbed")
    {
        proj = nn.Conv2d(inChans, embedDim, kernel_size: patch, stride: patch);
        RegisterComponents();
    }

    /// <summary>images (b, c, H, W) -> (b, m, d), patches in row-major order.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return PatchProjection.ChannelsLast(proj, x).flatten(1, 2).MoveToOuterDisposeScope();   // (b g*g d), row-major
    }
}

/// <summary>
/// One Vim layer: RMSNorm, bimamba v2 mixer, residual with stochastic depth. The reference's Block computes
/// "add, then norm, then mixer" and hands the mixer's output to the next block, which adds it to the residual after
/// its own drop_path (rate inter_dpr[i] = [0] + linspace(0, rate, depth)); the final add before norm_f uses the full
/// rate. That is the same as the pre-norm form here with mixer i's output dropped at linspace(0, rate, depth)[i].
/// The backbone's ResidualBlock has the same norm/mixer names but no stochastic depth, hence this class.
/// </summary>
public sealed class VimBlock : nn.Module<Tensor, Tensor>
{
    public RMSNorm norm;
    public BiMambaV2 mixer;
    public double DropPath { get; }
    public bool ResidualInFp32 { get; }

    public VimBlock(MambaConfig mixerConfig, double eps, double dropPath, bool residualInFp32) : base("Block")
    {
        norm = new RMSNorm(mixerConfig.DModel, eps);
        mixer = new BiMambaV2(mixerConfig);
        DropPath = dropPath;
        ResidualInFp32 = residualInFp32;
        RegisterComponents();
    }

    /// <summary>x (b, l, d) -> (b, l, d) (float32 when ResidualInFp32).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = mixer.forward(norm.forward(x.to_type(norm.weight.dtype)));
        var residual = ResidualInFp32 ? x.to_type(ScalarType.Float32) : x;
        return (residual + StochasticDepth.Apply(y, DropPath, training)).MoveToOuterDisposeScope();
    }
}

public sealed class Vim : nn.Module<Tensor, Tensor>, IImageFeatures
{
    public VimPatchEmbed patch_embed;
    public Parameter cls_token;   // (1 1 d)
    public Parameter pos_embed;   // (1 m+1 d)
    public ModuleList<VimBlock> layers;
    public RMSNorm norm_f;
    public Linear head;

    public VimConfig Config { get; }

    /// <summary>Where the class token sits in the sequence: the middle, m / 2 (use_middle_cls_token).</summary>
    public long TokenPosition => Config.NumPatches / 2;

    public Vim(VimConfig config) : base(nameof(Vim))
    {
        config.Validate();
        Config = config;
        long d = config.EmbedDim;
        patch_embed = new VimPatchEmbed(config.InChans, d, config.PatchSize);
        cls_token = new Parameter(torch.zeros(1, 1, d));
        pos_embed = new Parameter(torch.zeros(1, config.NumPatches + 1, d));
        // Stochastic depth decay rule: linspace(0, rate, depth) (see VimBlock for how this matches the reference).
        var rates = Enumerable.Range(0, (int)config.Depth)
            .Select(i => config.Depth == 1 ? config.DropPathRate : config.DropPathRate * i / (config.Depth - 1)).ToArray();
        layers = new ModuleList<VimBlock>(rates
            .Select(p => new VimBlock(config.Mixer, config.NormEpsilon, p, config.ResidualInFp32)).ToArray());
        norm_f = new RMSNorm(d, config.NormEpsilon);
        head = nn.Linear(d, config.NumClasses);

        using (torch.no_grad())
        {
            // VisionMamba's "original init" (segm_init_weights): the patch conv lecun-normal with zero bias, the head
            // truncated normal std 0.02 with zero bias, class token and position embedding truncated normal std 0.02.
            double fanIn = config.InChans * config.PatchSize * config.PatchSize;
            VisionInit.TruncNormal(patch_embed.proj.weight!, 0, Math.Sqrt(1 / fanIn) / .87962566103423978);
            patch_embed.proj.bias!.zero_();
            VisionInit.TruncNormal(head.weight!, 0, 0.02);
            head.bias!.zero_();
            VisionInit.TruncNormal(cls_token, 0, 0.02);
            VisionInit.TruncNormal(pos_embed, 0, 0.02);
            // "mamba init" (_init_weights, GPT-2 scheme): out_proj.weight keeps nn.Linear's kaiming-uniform init scaled
            // by 1/sqrt(depth), so the residual stream's variance does not grow with depth.
            foreach (var layer in layers) layer.mixer.out_proj.weight!.div_(Math.Sqrt(config.Depth));
        }
        RegisterComponents();
    }

    /// <summary>
    /// AdamW's weight-decay rule for this model: matrices only, and never A_log, A_b_log, D, D_b, the class token or
    /// the position embedding (mamba_simple.py's _no_weight_decay and VisionMamba.no_weight_decay).
    /// </summary>
    public static bool Decay(string name, Tensor p)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return p.dim() >= 2 && !BiMambaV2.NoWeightDecay.Contains(last) && last != "cls_token" && last != "pos_embed";
    }

    /// <summary>images (b, in_chans, img_size, img_size) float -> logits (b, num_classes), float32 under mixed precision.</summary>
    public override Tensor forward(Tensor images)
    {
        using var scope = torch.NewDisposeScope();
        return MixedPrecision.Widen(head.forward(Features(images))).MoveToOuterDisposeScope(); // (b k)
    }

    /// <summary>The head's input: norm_f of the class token (b, embed_dim), in the compute dtype (the head's).</summary>
    public Tensor Features(Tensor images)
    {
        var c = Config;
        if (images.dim() != 4 || images.shape[1] != c.InChans || images.shape[2] != c.ImgSize || images.shape[3] != c.ImgSize)
            throw new ArgumentException($"Vim: images must be (b, {c.InChans}, {c.ImgSize}, {c.ImgSize}), got ({string.Join(", ", images.shape)})");
        using var scope = torch.NewDisposeScope();
        long b = images.shape[0], t = TokenPosition;
        // Images arrive in float32 (or float64 for a float64 model); a bf16 model computes in its weights' dtype.
        var x = patch_embed.forward(images.to_type(patch_embed.proj.weight!.dtype)); // (b m d)
        var cls = cls_token.to_type(x.dtype).expand(b, -1, -1);                   // (b 1 d)
        x = torch.cat(new[] { x.narrow(1, 0, t), cls, x.narrow(1, t, c.NumPatches - t) }, 1); // (b l d)
        x = x + pos_embed.to_type(x.dtype);
        foreach (var layer in layers) x = layer.forward(x);                        // (b l d)
        var h = norm_f.forward(x.to_type(norm_f.weight.dtype));
        return h.select(1, t).MoveToOuterDisposeScope();                           // (b d)
    }
}
