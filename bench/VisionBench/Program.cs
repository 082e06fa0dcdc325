// Vision benchmark (issue 3, section 5): inference throughput of Vim-Ti and VMamba-T (random weights) on the CPU at
// 224 x 224, and how time and peak memory grow from 224 to 512 to 1024 pixels, beside a ViT-Ti of similar size
// (192 wide, 12 layers, 3 heads; attention by TorchSharp's scaled_dot_product_attention). Prints a Markdown table
// naming the machine.
//   dotnet run -c Release --project bench/VisionBench [-- --sizes 224,512,1024 --reps 3 --batch 8 --quick]
using System.Diagnostics;
using Ssm.Vision;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

var sizes = new long[] { 224, 512, 1024 };
int reps = 3;
long batch = 8;
bool quick = false;
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--sizes": sizes = Next().Split(',').Select(long.Parse).ToArray(); break;
            case "--reps": reps = int.Parse(Next()); break;
            case "--batch": batch = long.Parse(Next()); break;
            case "--quick": quick = true; break;
            case "-h" or "--help":
                Console.WriteLine("usage: VisionBench [--sizes 224,512,1024] [--reps N] [--batch B] [--quick]\n" +
                    "  --sizes: image sides (multiples of 32); throughput at the first with batch B, then batch 1 at every size\n" +
                    "  --reps:  timed runs per row after the warm-ups (median reported; default 3)\n" +
                    "  --batch: batch for the throughput rows (default 8)\n" +
                    "  --quick: sizes 224,512, one timed run, batch 2: checks that everything runs\n" +
                    "On a machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps libtorch's spinning OpenMP workers from\n" +
                    "starving the scan kernel's threads (10x differences seen on 2 busy cores); the header prints its value.");
                return 0;
            default: throw new FormatException($"unknown argument '{args[i]}' (try --help)");
        }
    }
    if (quick) { sizes = sizes.Where(s => s <= 512).DefaultIfEmpty(224).ToArray(); reps = 1; batch = Math.Min(batch, 2); }
    if (reps < 1 || batch < 1 || sizes.Length == 0 || sizes.Any(s => s < 32 || s % 32 != 0))
        throw new FormatException("--reps and --batch must be positive and --sizes multiples of 32 (VMamba's patch 4 and three 2x merges)");
}
catch (Exception e) when (e is FormatException or OverflowException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}

torch.set_num_threads(Environment.ProcessorCount);
Console.WriteLine($"# Vision benchmark: {Machine.Describe()}");
Console.WriteLine($"TorchSharp threads {torch.get_num_threads()}, OMP_WAIT_POLICY {Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") ?? "unset"}, " +
    $"float32, inference (eval, no_grad), random weights; median of {reps} " +
    $"run(s) after warm-up; peak = extra resident memory of one more run (the model's own weights excluded).");
Console.WriteLine();
Console.WriteLine($"| model | params M | image | batch | tokens | ms / batch | images / s | peak extra RSS MB | time vs {sizes[0]} (batch 1) |");
Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|");

var models = new (string Name, Func<long, nn.Module<Tensor, Tensor>> Build, Func<long, long> Tokens)[]
{
    ("Vim-Ti", s => new Vim(VimConfig.Tiny with { ImgSize = s }), s => (s / 16) * (s / 16) + 1),
    ("VMamba-T", s => new VMamba(VMambaConfig.Tiny with { ImgSize = s }), s => (s / 4) * (s / 4)),
    ("ViT-Ti", s => new ViT(s), s => (s / 16) * (s / 16) + 1),
};

foreach (var (name, build, tokens) in models)
{
    double? baseMs = null;
    // Throughput row first (first size, batch B), then batch 1 at every size for the growth.
    var rows = new List<(long Size, long Batch)>();
    if (batch > 1) rows.Add((sizes[0], batch));
    rows.AddRange(sizes.Select(s => (s, 1L)));
    foreach (var (size, b) in rows)
    {
        torch.manual_seed(0);
        var model = build(size);
        model.eval();
        double paramsM = model.parameters().Sum(p => p.numel()) / 1e6;
        var images = torch.randn(b, 3, size, size);
        var (ms, peak) = Measure.Run(size > 256 ? 1 : 2, reps, () =>
        {
            using var noGrad = torch.no_grad();
            model.forward(images);
        });
        if (b == 1 && size == sizes[0]) baseMs = ms;
        string growth = b == 1 && baseMs is double bm ? $"{ms / bm:F1}x" : "-";
        Console.WriteLine($"| {name} | {paramsM:F1} | {size} | {b} | {tokens(size)} | {ms:F1} | {b * 1000 / ms:G3} | {peak:F0} | {growth} |");
        images.Dispose();
        model.Dispose();
    }
}
return 0;

/// <summary>
/// ViT-Ti (Dosovitskiy et al. 2021; DeiT-Ti, Touvron et al. 2021): patch 16, width 192, 12 pre-norm blocks of 3-head
/// self-attention and a 4x GELU MLP, class token, learned position embedding; ~5.7M parameters at 224.
/// Attention is TorchSharp's scaled_dot_product_attention (libtorch picks its fused CPU kernel).
/// </summary>
sealed class ViT : nn.Module<Tensor, Tensor>
{
    const long Dim = 192, Depth = 12, Heads = 3, Patch = 16, Classes = 1000;
    public Conv2d patch_embed;
    public Parameter cls_token;
    public Parameter pos_embed;
    public ModuleList<ViTBlock> blocks;
    public LayerNorm norm;
    public Linear head;

    public ViT(long imgSize) : base(nameof(ViT))
    {
        long m = (imgSize / Patch) * (imgSize / Patch);
        patch_embed = nn.Conv2d(3, Dim, kernel_size: Patch, stride: Patch);
        cls_token = new Parameter(torch.randn(1, 1, Dim) * 0.02);
        pos_embed = new Parameter(torch.randn(1, m + 1, Dim) * 0.02);
        blocks = new ModuleList<ViTBlock>(Enumerable.Range(0, (int)Depth).Select(_ => new ViTBlock(Dim, Heads)).ToArray());
        norm = nn.LayerNorm(Dim, 1e-6);
        head = nn.Linear(Dim, Classes);
        RegisterComponents();
    }

    /// <summary>images (b, 3, H, W) -> logits (b, 1000).</summary>
    public override Tensor forward(Tensor images)
    {
        using var scope = torch.NewDisposeScope();
        long b = images.shape[0];
        var x = patch_embed.forward(images).flatten(2).transpose(1, 2);          // (b m d)
        x = torch.cat(new[] { cls_token.expand(b, -1, -1), x }, 1) + pos_embed;  // (b m+1 d)
        foreach (var blk in blocks) x = blk.forward(x);
        return head.forward(norm.forward(x).select(1, 0)).MoveToOuterDisposeScope();
    }
}

sealed class ViTBlock : nn.Module<Tensor, Tensor>
{
    public LayerNorm norm1, norm2;
    public Linear qkv, proj, fc1, fc2;
    readonly long _heads;

    public ViTBlock(long dim, long heads) : base(nameof(ViTBlock))
    {
        _heads = heads;
        norm1 = nn.LayerNorm(dim, 1e-6);
        qkv = nn.Linear(dim, 3 * dim);
        proj = nn.Linear(dim, dim);
        norm2 = nn.LayerNorm(dim, 1e-6);
        fc1 = nn.Linear(dim, 4 * dim);
        fc2 = nn.Linear(4 * dim, dim);
        RegisterComponents();
    }

    /// <summary>x (b, l, d) -> (b, l, d).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], l = x.shape[1], d = x.shape[2];
        var qkvs = qkv.forward(norm1.forward(x)).reshape(b, l, 3, _heads, d / _heads).permute(2, 0, 3, 1, 4); // (3 b h l dh)
        var a = nn.functional.scaled_dot_product_attention(qkvs[0], qkvs[1], qkvs[2]);                         // (b h l dh)
        x = x + proj.forward(a.transpose(1, 2).reshape(b, l, d));
        x = x + fc2.forward(nn.functional.gelu(fc1.forward(norm2.forward(x))));
        return x.MoveToOuterDisposeScope();
    }
}
