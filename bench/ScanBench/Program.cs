// Scan benchmark (foundation issue, section 5): fast path vs the sequential reference, forward and
// forward+backward, on the CPU. Prints a Markdown table naming the machine.
//   dotnet run -c Release --project bench/ScanBench [-- --lengths 512,2048,8192 --reps 5 --quick]
using System.Diagnostics;
using Ssm.Backbone.Scans;
using TorchSharp;
using static TorchSharp.torch;

var lengths = new long[] { 512, 2048, 8192 };
int reps = 5;
bool quick = false;
long chunkedMaxLength = 2048;
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--lengths": lengths = Next().Split(',').Select(long.Parse).ToArray(); break;
            case "--reps": reps = int.Parse(Next()); break;
            case "--quick": quick = true; break;
            case "--chunked-max-length": chunkedMaxLength = long.Parse(Next()); break;
            case "-h" or "--help":
                Console.WriteLine("usage: ScanBench [--lengths 512,2048,8192] [--reps N] [--quick] [--chunked-max-length L]\n" +
                    "  --quick: skip the sequential references at the largest length\n" +
                    "  --chunked-max-length: longest l for the selective scan's Chunked path with backward (default 2048; memory)");
                return 0;
            default: throw new FormatException($"unknown argument '{args[i]}' (try --help)");
        }
    }
    if (reps < 1 || lengths.Length == 0 || lengths.Any(x => x < 1)) throw new FormatException("lengths and --reps must be positive");
}
catch (Exception e) when (e is FormatException or OverflowException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}

torch.set_num_threads(Environment.ProcessorCount);
Console.WriteLine($"# Scan benchmark: {Machine.Describe()}");
Console.WriteLine($"TorchSharp threads {torch.get_num_threads()}, float32, median of up to {reps} runs after two warm-ups (references and the selective scan's Chunked path: up to 3 runs); peak = extra resident memory of one more run.");
Console.WriteLine();
Console.WriteLine("| scan | l | pass | impl | median ms | speed-up vs reference | peak extra RSS MB |");
Console.WriteLine("|---|---:|---|---|---:|---:|---:|");

foreach (var l in lengths)
{
    // Selective scan: b = 1, d = 1536, n = 16 (mamba-130m's d_inner and d_state).
    {
        torch.manual_seed(0);
        long b = 1, d = 1536, n = 16;
        var u = torch.randn(b, d, l);
        var delta = torch.randn(b, d, l) * 0.5 - 1.0;
        var A = -torch.rand(d, n) * 4 - 0.5;
        var B = torch.randn(b, n, l);
        var C = torch.randn(b, n, l);
        var D = torch.randn(d);
        var z = torch.randn(b, d, l);
        var bias = torch.randn(d) * 0.1;
        foreach (var backward in new[] { false, true })
        {
            double? refMs = null;
            foreach (var impl in new[] { ScanImpl.Reference, ScanImpl.Chunked, ScanImpl.Fused })
            {
                if (impl == ScanImpl.Reference && quick && l == lengths.Max()) continue;
                // The tensor-op path keeps a (b, d, n, 16, 16) decay matrix per chunk for autograd: ~8 GB at l = 2048,
                // so past that it would not fit in this machine's memory.
                if (impl == ScanImpl.Chunked && backward && l > chunkedMaxLength)
                {
                    Console.WriteLine($"| selective scan | {l} | fwd+bwd | Chunked | skipped (memory grows ~4 MB per step) | - | - |");
                    continue;
                }
                var leaves = new[] { u, delta, A, B, C }.Select(t => t.detach().requires_grad_(backward)).ToArray();
                var (ms, peak) = Measure.Run(impl == ScanImpl.Fused ? reps : Math.Min(reps, 3), () =>
                {
                    var (y, _) = SelectiveScan.Forward(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], D, z, bias, true, impl: impl);
                    if (backward) y.sum().backward();
                });
                if (impl == ScanImpl.Reference) refMs = ms;
                Row("selective scan", l, backward, impl.ToString(), ms, refMs, peak);
            }
        }
    }
    // SSD: b = 1, h = 24 heads of p = 64, n = 128 (mamba2-130m's shapes), chunk 256.
    {
        torch.manual_seed(1);
        long b = 1, h = 24, p = 64, n = 128, g = 1;
        var x = torch.randn(b, l, h, p);
        var dt = torch.randn(b, l, h) * 0.5 - 1.0;
        var A = -torch.rand(h) * 4 - 0.5;
        var B = torch.randn(b, l, g, n);
        var C = torch.randn(b, l, g, n);
        var D = torch.randn(h);
        var bias = torch.randn(h) * 0.1;
        foreach (var backward in new[] { false, true })
        {
            double? refMs = null;
            // Chunk 256 is mamba_ssm's default (sized for GPU tensor cores); 64 suits the CPU (less quadratic work).
            foreach (var chunk in new[] { 0, 64, 256 })
            {
                string impl = chunk == 0 ? "Reference" : $"Chunked Q={chunk}";
                if (chunk == 0 && quick && l == lengths.Max()) continue;
                var leaves = new[] { x, dt, A, B, C }.Select(t => t.detach().requires_grad_(backward)).ToArray();
                var (ms, peak) = Measure.Run(chunk == 0 ? Math.Min(reps, 3) : reps, () =>
                {
                    var (y, _) = chunk == 0
                        ? Ssd.Reference(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], D: D, dtBias: bias, dtSoftplus: true)
                        : Ssd.ChunkScan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], chunk, D: D, dtBias: bias, dtSoftplus: true);
                    if (backward) y.sum().backward();
                });
                if (chunk == 0) refMs = ms;
                Row("SSD", l, backward, impl, ms, refMs, peak);
            }
        }
    }
}
return 0;

static void Row(string scan, long l, bool backward, string impl, double ms, double? refMs, double peakMb)
{
    string speed = refMs is double r ? $"{r / ms:F1}x" : "-";
    Console.WriteLine($"| {scan} | {l} | {(backward ? "fwd+bwd" : "fwd")} | {impl} | {ms:F1} | {speed} | {peakMb:F0} |");
}
