// VMamba (Liu et al. 2024, "VMamba: Visual State Space Model", arXiv 2401.10166 v1, Jan 2024), the first released
// version: MzeroMiko/VMamba classification/models/vmamba/vmamba.py, class VSSM with VSSBlock = LayerNorm -> SS2D ->
// residual (no MLP; the MLP, d_state 1 and ssm_ratio 1 came with the later "v2"/"v3" VMamba-T[s1l8] models).
// VMamba-T of that version: dims 96/192/384/768, depths 2/2/9/2, d_state 16, ssm ratio (expand) 2, patch 4,
// 3 x 3 depthwise conv, drop_path 0.2 (the repository's configs/vssm/vmambav0_tiny_224.yaml: SSM_D_STATE 16,
// SSM_RATIO 2.0, MLP_RATIO 0.0); the paper's Table 1 gives it 22M parameters and 4.5 GFLOPs at 224.
// State-dict names equal VSSM's: patch_embed.{proj, norm}, layers.{i}.blocks.{j}.ln_1,
// layers.{i}.blocks.{j}.self_attention.{in_proj, conv2d, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
// out_norm, out_proj}, layers.{i}.downsample.{norm, reduction}, norm, head.
//
// Shapes: b batch, c in_chans, H x W image, p patch, h x w feature map (H/p x W/p, halved by each merging),
// C stage width, d = ssm_ratio * C, n = d_state, r = dt_rank = ceil(C / 16), k = 4 scan directions, l = h * w.
//   images (b c H W) -patch_embed (conv p x p stride p, LayerNorm)-> (b h w C)      channels-last inside, as VSSM
//   stage i: depths[i] x VSS block, then PatchMerging2D (not after the last): (b h w C) -> (b h/2 w/2 2C)
//   VSS block:  x <- x + drop_path(SS2D(ln_1(x)))
//   SS2D:       in_proj (b h w 2d) -> [x | z];  x -> conv2d 3x3 depthwise -> silu   (b d h w)
//               CrossScan -> (b k d l);  x_proj_weight (k, r+2n, d): [dt | B | C] per direction
//               Δ = dt_projs_weight (k, d, r) dt;  one selective scan over the k*d channels, B/C grouped by direction
//               (b k d l) -CrossScan.Merge-> (b d l) -> (b h w d);  out_norm, * silu(z), out_proj -> (b h w C)
//   head:       LayerNorm, mean over h w, Linear -> logits (b num_classes)
using System.Text.Json.Serialization;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Scans;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>VSSM's constructor arguments; the defaults are VMamba-T of arXiv 2401.10166 v1 (~22M parameters).</summary>
public sealed record VMambaConfig
{
    /// <summary>The training image size (the model itself runs on any size that is a multiple of PatchSize).</summary>
    public long ImgSize { get; init; } = 224;
    public long PatchSize { get; init; } = 4;
    public long InChans { get; init; } = 3;
    public long NumClasses { get; init; } = 1000;
    /// <summary>Width of each stage.</summary>
    public long[] Dims { get; init; } = [96, 192, 384, 768];
    /// <summary>VSS blocks per stage.</summary>
    public long[] Depths { get; init; } = [2, 2, 9, 2];
    public long DState { get; init; } = 16;
    /// <summary>d_inner / d_model of SS2D ("expand" in v1's SS2D, "ssm_ratio" later).</summary>
    public double SsmRatio { get; init; } = 2.0;
    /// <summary>Side of SS2D's depthwise convolution.</summary>
    public long DConv { get; init; } = 3;
    public double NormEpsilon { get; init; } = 1e-5;
    /// <summary>Stochastic depth at the last block (rates rise linearly from 0 over all blocks); VMamba-T uses 0.2.</summary>
    public double DropPathRate { get; init; } = 0.2;

    /// <summary>VMamba-T (v1): 224 x 224 RGB, 1000 classes.</summary>
    public static VMambaConfig Tiny => new();

    /// <summary>28 x 28 grey, 10 classes (Fashion-MNIST): patch 2 (14 x 14), stages 48/96 wide, 2 and 4 blocks (~0.5M parameters, 2 MB).</summary>
    public static VMambaConfig Small28 => new()
    {
        ImgSize = 28, PatchSize = 2, InChans = 1, NumClasses = 10, Dims = [48, 96], Depths = [2, 4], DropPathRate = 0.0,
    };

    /// <summary>SS2D's dt_rank for a stage of width <paramref name="dim"/> ("auto": ceil(d_model / 16)).</summary>
    public static long DtRank(long dim) => (dim + 15) / 16;

    /// <summary>SS2D's d_inner for a stage of width <paramref name="dim"/> (int(expand * d_model)).</summary>
    public long DInner(long dim) => (long)(SsmRatio * dim);

    [JsonIgnore] public long NumStages => Dims.Length;

    /// <exception cref="ArgumentException">An option out of range, named.</exception>
    public void Validate()
    {
        foreach (var (name, v) in new[] { (nameof(ImgSize), ImgSize), (nameof(PatchSize), PatchSize), (nameof(InChans), InChans),
            (nameof(NumClasses), NumClasses), (nameof(DState), DState), (nameof(DConv), DConv) })
            if (v <= 0) throw new ArgumentException($"VMambaConfig.{name} must be positive, got {v}");
        if (Dims is null || Depths is null || Dims.Length == 0 || Dims.Length != Depths.Length)
            throw new ArgumentException($"VMambaConfig.Dims and Depths must be non-empty and of equal length, got {Dims?.Length} and {Depths?.Length}");
        if (Dims.Any(x => x <= 0) || Depths.Any(x => x <= 0)) throw new ArgumentException("VMambaConfig.Dims and Depths must be positive");
        if (DConv % 2 != 1) throw new ArgumentException($"VMambaConfig.DConv must be odd (same-size padding), got {DConv}");
        if (!(SsmRatio > 0) || Dims.Any(x => DInner(x) <= 0)) throw new ArgumentException($"VMambaConfig.SsmRatio must be positive, got {SsmRatio}");
        if (!(DropPathRate >= 0 && DropPathRate < 1)) throw new ArgumentException($"VMambaConfig.DropPathRate must be in [0, 1), got {DropPathRate}");
        if (!(NormEpsilon > 0)) throw new ArgumentException($"VMambaConfig.NormEpsilon must be positive, got {NormEpsilon}");
        if (ImgSize % PatchSize != 0) throw new ArgumentException($"VMambaConfig.ImgSize {ImgSize} must be a multiple of PatchSize {PatchSize}");
    }

    // Value equality over the array contents (a record compares arrays by reference).
    public bool Equals(VMambaConfig? other) => other is not null && ImgSize == other.ImgSize && PatchSize == other.PatchSize
        && InChans == other.InChans && NumClasses == other.NumClasses && Dims.SequenceEqual(other.Dims)
        && Depths.SequenceEqual(other.Depths) && DState == other.DState && SsmRatio.Equals(other.SsmRatio)
        && DConv == other.DConv && NormEpsilon.Equals(other.NormEpsilon) && DropPathRate.Equals(other.DropPathRate);

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(ImgSize); h.Add(PatchSize); h.Add(InChans); h.Add(NumClasses);
        foreach (var x in Dims) h.Add(x);
        foreach (var x in Depths) h.Add(x);
        h.Add(DState); h.Add(SsmRatio); h.Add(DConv); h.Add(NormEpsilon); h.Add(DropPathRate);
        return h.ToHashCode();
    }
}

/// <summary>VSSM's PatchEmbed2D: p x p convolution with stride p, channels last, LayerNorm (patch_norm=True).</summary>
public sealed class VMambaPatchEmbed : nn.Module<Tensor, Tensor>
{
    public Conv2d proj;
    public LayerNorm norm;

    public VMambaPatchEmbed(long inChans, long dim, long patch, double eps) : base("PatchEmbed2D")
    {
        proj = nn.Conv2d(inChans, dim, kernel_size: patch, stride: patch);
        norm = nn.LayerNorm(dim, eps);
        RegisterComponents();
    }

    /// <summary>images (b, c, H, W) -> (b, H/p, W/p, C).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return norm.forward(PatchProjection.ChannelsLast(proj, x)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Swin's patch merging as VSSM's PatchMerging2D: the 2 x 2 neighbours concatenated (order x[0::2, 0::2], x[1::2, 0::2],
/// x[0::2, 1::2], x[1::2, 1::2]), LayerNorm over 4C, Linear 4C -> 2C without bias. An odd side drops its last row or
/// column, as the reference does.
/// </summary>
public sealed class PatchMerging2D : nn.Module<Tensor, Tensor>
{
    public Linear reduction;
    public LayerNorm norm;

    public PatchMerging2D(long dim, long outDim, double eps) : base(nameof(PatchMerging2D))
    {
        reduction = nn.Linear(4 * dim, outDim, hasBias: false);
        norm = nn.LayerNorm(4 * dim, eps);
        RegisterComponents();
    }

    /// <summary>x (b, h, w, C) -> (b, h/2, w/2, 2C).</summary>
    public override Tensor forward(Tensor x)
    {
        long h = x.shape[1] / 2, w = x.shape[2] / 2;
        if (h == 0 || w == 0) throw new ArgumentException($"PatchMerging2D: the feature map ({x.shape[1]} x {x.shape[2]}) is too small to halve");
        using var scope = torch.NewDisposeScope();
        Tensor Take(long i0, long j0) => x[.., TensorIndex.Slice(i0, 2 * h, 2), TensorIndex.Slice(j0, 2 * w, 2), ..];
        var cat = torch.cat(new[] { Take(0, 0), Take(1, 0), Take(0, 1), Take(1, 1) }, -1); // (b h/2 w/2 4C)
        return reduction.forward(norm.forward(cat)).MoveToOuterDisposeScope();
    }
}

/// <summary>VMamba's 2D selective scan (SS2D, forward_corev0): four scan directions with their own Δ, B, C, A, D.</summary>
public sealed class SS2D : nn.Module<Tensor, Tensor>
{
    public Linear in_proj;
    public Conv2d conv2d;
    public Parameter x_proj_weight;    // (k, r+2n, d)
    public Parameter dt_projs_weight;  // (k, d, r)
    public Parameter dt_projs_bias;    // (k, d)
    public Parameter A_logs;           // (k*d, n)
    public Parameter Ds;               // (k*d)
    public LayerNorm out_norm;
    public Linear out_proj;

    public long DModel { get; }
    public long DInner { get; }
    public long DState { get; }
    public long DtRank { get; }

    /// <summary>Which scan implementation forward uses (Auto: fused kernel on the CPU).</summary>
    public ScanImpl Scan { get; set; } = ScanImpl.Auto;

    /// <summary>Parameter names (last component) that take no weight decay (the reference's _no_weight_decay).</summary>
    public static IReadOnlyList<string> NoWeightDecay { get; } = new[] { "A_logs", "Ds" };

    public SS2D(long dModel, long dState, double ssmRatio, long dConv, double eps,
        double dtMin = 0.001, double dtMax = 0.1, double dtScale = 1.0, double dtInitFloor = 1e-4) : base(nameof(SS2D))
    {
        const int k = CrossScan.Directions;
        DModel = dModel;
        DState = dState;
        DInner = (long)(ssmRatio * dModel);
        DtRank = VMambaConfig.DtRank(dModel);
        long d = DInner, r = DtRank, n = dState;
        in_proj = nn.Linear(dModel, 2 * d, hasBias: false);
        conv2d = nn.Conv2d(d, d, kernel_size: dConv, padding: (dConv - 1) / 2, groups: d, bias: true);
        // Per direction: x_proj as nn.Linear's default init (kaiming uniform, bound 1/sqrt(d)), dt_proj as Mamba's
        // (weight uniform(+-r^-0.5 dt_scale), bias the inverse softplus of a log-uniform dt in [dt_min, dt_max]).
        double xBound = 1 / Math.Sqrt(d), dtStd = Math.Pow(r, -0.5) * dtScale;
        x_proj_weight = new Parameter(torch.empty(k, r + 2 * n, d).uniform_(-xBound, xBound));
        dt_projs_weight = new Parameter(torch.empty(k, d, r).uniform_(-dtStd, dtStd));
        dt_projs_bias = new Parameter(torch.stack(Enumerable.Range(0, k)
            .Select(_ => SsmInit.DtBias(d, dtMin, dtMax, dtInitFloor)).ToArray()));
        // S4D-Real A = -(n + 1) stored as log, D = 1, one copy per direction, merged to (k*d, ...) as the scan takes them.
        A_logs = new Parameter(torch.log(torch.arange(1, n + 1, dtype: ScalarType.Float32)).repeat(k * d, 1));
        Ds = new Parameter(torch.ones(k * d));
        out_norm = nn.LayerNorm(d, eps);
        out_proj = nn.Linear(d, dModel, hasBias: false);
        RegisterComponents();
    }

    /// <summary>x (b, h, w, C) -> (b, h, w, C).</summary>
    public override Tensor forward(Tensor x)
    {
        const int k = CrossScan.Directions;
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], h = x.shape[1], w = x.shape[2], l = h * w, d = DInner, n = DState, r = DtRank;
        var xz = in_proj.forward(x).chunk(2, -1);                                  // 2 x (b h w d)
        var xs = nn.functional.silu(conv2d.forward(xz[0].permute(0, 3, 1, 2)));   // (b d h w)
        var u = CrossScan.Scan(xs);                                                // (b k d l)
        var dbc = torch.matmul(x_proj_weight.to_type(u.dtype), u);                 // (b k r+2n l)
        var parts = dbc.split(new[] { r, n, n }, 2);
        var delta = torch.matmul(dt_projs_weight.to_type(u.dtype), parts[0]);      // (b k d l), bias added in the scan
        var B = parts[1].contiguous();                                             // (b k n l): group j = direction j
        var C = parts[2].contiguous();
        var A = -torch.exp(A_logs.to_type(ScalarType.Float32));                    // (k*d n)
        // One scan over all k*d channels: channel j*d + i reads B/C group j, as selective_scan_fn with (b, g, n, l).
        var (y, _) = SelectiveScan.Forward(u.reshape(b, k * d, l), delta.reshape(b, k * d, l), A, B, C,
            Ds.to_type(ScalarType.Float32), null, dt_projs_bias.reshape(k * d).to_type(ScalarType.Float32),
            deltaSoftplus: true, impl: Scan);                                      // (b k*d l)
        var merged = CrossScan.Merge(y.reshape(b, k, d, l), h, w);                 // (b d l) row-major
        var ym = out_norm.forward(merged.transpose(1, 2).reshape(b, h, w, d));     // (b h w d)
        ym = ym * nn.functional.silu(xz[1]);
        return out_proj.forward(ym).MoveToOuterDisposeScope();                     // (b h w C)
    }
}

/// <summary>VSSBlock: x + drop_path(SS2D(LayerNorm(x))).</summary>
public sealed class VSSBlock : nn.Module<Tensor, Tensor>
{
    public LayerNorm ln_1;
    public SS2D self_attention;
    public double DropPath { get; }

    public VSSBlock(long dim, VMambaConfig c, double dropPath) : base(nameof(VSSBlock))
    {
        ln_1 = nn.LayerNorm(dim, c.NormEpsilon);
        self_attention = new SS2D(dim, c.DState, c.SsmRatio, c.DConv, c.NormEpsilon);
        DropPath = dropPath;
        RegisterComponents();
    }

    /// <summary>x (b, h, w, C) -> (b, h, w, C).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = self_attention.forward(ln_1.forward(x));
        return (x + StochasticDepth.Apply(y, DropPath, training)).MoveToOuterDisposeScope();
    }
}

/// <summary>VSSLayer: one stage of VSS blocks, then patch merging (all stages but the last).</summary>
public sealed class VSSLayer : nn.Module<Tensor, Tensor>
{
    public ModuleList<VSSBlock> blocks;
    public PatchMerging2D? downsample;

    public VSSLayer(long dim, long? nextDim, VMambaConfig c, double[] dropPaths) : base(nameof(VSSLayer))
    {
        blocks = new ModuleList<VSSBlock>(dropPaths.Select(p => new VSSBlock(dim, c, p)).ToArray());
        downsample = nextDim is long nd ? new PatchMerging2D(dim, nd, c.NormEpsilon) : null;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        foreach (var blk in blocks) x = blk.forward(x);
        if (downsample is not null) x = downsample.forward(x);
        return x.MoveToOuterDisposeScope();
    }
}

public sealed class VMamba : nn.Module<Tensor, Tensor>, IImageFeatures
{
    public VMambaPatchEmbed patch_embed;
    public ModuleList<VSSLayer> layers;
    public LayerNorm norm;
    public Linear head;

    public VMambaConfig Config { get; }

    public VMamba(VMambaConfig config) : base(nameof(VMamba))
    {
        config.Validate();
        Config = config;
        var dims = config.Dims;
        patch_embed = new VMambaPatchEmbed(config.InChans, dims[0], config.PatchSize, config.NormEpsilon);
        // Stochastic depth decay rule over all blocks: linspace(0, rate, sum(depths)).
        long total = config.Depths.Sum();
        var rates = Enumerable.Range(0, (int)total)
            .Select(i => total == 1 ? config.DropPathRate : config.DropPathRate * i / (total - 1)).ToArray();
        var stages = new List<VSSLayer>();
        int start = 0;
        for (int i = 0; i < dims.Length; i++)
        {
            // The reference's PatchMerging2D always doubles the width; here it maps to the next stage's width, which
            // is the same for the doubling dims of every released model.
            stages.Add(new VSSLayer(dims[i], i + 1 < dims.Length ? dims[i + 1] : null, config,
                rates[start..(start + (int)config.Depths[i])]));
            start += (int)config.Depths[i];
        }
        layers = new ModuleList<VSSLayer>(stages.ToArray());
        norm = nn.LayerNorm(dims[^1], config.NormEpsilon);
        head = nn.Linear(dims[^1], config.NumClasses);

        using (torch.no_grad())
        {
            // VSSM._init_weights: every nn.Linear truncated normal std 0.02 with zero bias (in_proj, out_proj, the
            // merging reductions, the head); LayerNorms 1 and 0 (their default). The convolutions and the stacked
            // per-direction parameters keep their own initialisation.
            foreach (var (_, m) in named_modules())
                if (m is Linear lin)
                {
                    VisionInit.TruncNormal(lin.weight!, 0, 0.02);
                    lin.bias?.zero_();
                }
        }
        RegisterComponents();
    }

    /// <summary>AdamW's weight-decay rule for this model: matrices only, never A_logs or Ds.</summary>
    public static bool Decay(string name, Tensor p)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return p.dim() >= 2 && !SS2D.NoWeightDecay.Contains(last);
    }

    /// <summary>images (b, in_chans, H, W) float, H and W multiples of the patch size -> logits (b, num_classes),
    /// float32 under mixed precision.</summary>
    public override Tensor forward(Tensor images)
    {
        using var scope = torch.NewDisposeScope();
        return Ssm.Backbone.Training.MixedPrecision.Widen(head.forward(Features(images))).MoveToOuterDisposeScope(); // (b k)
    }

    /// <summary>The head's input: the normalised, average-pooled last stage (b, C_last).</summary>
    public Tensor Features(Tensor images)
    {
        var c = Config;
        if (images.dim() != 4 || images.shape[1] != c.InChans || images.shape[2] % c.PatchSize != 0 || images.shape[3] % c.PatchSize != 0)
            throw new ArgumentException($"VMamba: images must be (b, {c.InChans}, H, W) with H and W multiples of {c.PatchSize}, got ({string.Join(", ", images.shape)})");
        using var scope = torch.NewDisposeScope();
        // Images arrive in float32 (or float64 for a float64 model); a bf16 model computes in its weights' dtype.
        var x = patch_embed.forward(images.to_type(patch_embed.proj.weight!.dtype)); // (b h w C0)
        foreach (var layer in layers) x = layer.forward(x);                        // (b h' w' C_last)
        var pooled = norm.forward(x).mean(new long[] { 1, 2 });                    // (b C_last)
        return pooled.MoveToOuterDisposeScope();
    }
}
