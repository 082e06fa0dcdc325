// GPU benchmark (issue 8, section 3): the selective scan (fused CUDA kernel, tensor-op path, sequential reference),
// the SSD chunked scan, the causal depthwise conv1d + SiLU (fused kernel against cuDNN's convolution and a SiLU), a mamba-130m-shaped training step and token decoding, with peak memory; prints Markdown
// tables naming the machine and writes every number to a JSON file. Timings: medians of repeated runs after
// warm-ups, each bracketed by torch.cuda.synchronize() (wall time, host overhead included). For the fused scan also the
// device time per run: CUDA events (libssm_cuda.so's timer) around the same number of runs enqueued back to back, so the
// host's launch work overlaps the device's and the GPU never waits for it; the bandwidth columns use that time. The transformers peer runs from bench/GpuBench/peer.py on the
// checkpoint and prompts this program writes (--ckpt), so both sides decode the same random weights from the same prompts.
//   dotnet run -c Release --project bench/GpuBench -- --out gpu.json --ckpt /tmp/m130 [--sections doctor,scan,ssd,conv,train,decode] [--quick]
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ssm.Backbone.Generation;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using Ssm.Backbone.Native;
using Ssm.Backbone.Scans;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

string? outPath = null, ckptDir = null;
var sections = new HashSet<string> { "doctor", "scan", "ssd", "conv", "train", "decode" };
bool quick = false;
int reps = 10, decodeTokens = 128;
long[] trainBatches = { 8, 1 };
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--out": outPath = Next(); break;
            case "--ckpt": ckptDir = Next(); break;
            case "--sections": sections = Next().Split(',').ToHashSet(); break;
            case "--quick": quick = true; break;
            case "--reps": reps = int.Parse(Next(), CultureInfo.InvariantCulture); break;
            case "--decode-tokens": decodeTokens = int.Parse(Next(), CultureInfo.InvariantCulture); break;
            case "--train-batches": trainBatches = Next().Split(',').Select(long.Parse).ToArray(); break;
            case "-h" or "--help":
                Console.WriteLine("usage: GpuBench [--out FILE.json] [--ckpt DIR] [--sections doctor,scan,ssd,conv,train,decode] [--quick] [--reps N]\n" +
                    "                [--decode-tokens N] [--train-batches 8,1]\n" +
                    "  --ckpt: write the decode model (Hugging Face layout) and prompts.json there, for peer.py\n" +
                    "  --quick: small shapes (a smoke test of every path)");
                return 0;
            default: throw new FormatException($"unknown argument '{args[i]}' (try --help)");
        }
    }
    if (reps < 1 || decodeTokens < 2 || trainBatches.Any(b => b < 1)) throw new FormatException("--reps, --decode-tokens (>= 2) and batches must be positive");
    if (sections.Except(new[] { "doctor", "scan", "ssd", "conv", "train", "decode" }).FirstOrDefault() is string bad) throw new FormatException($"unknown section '{bad}'");
}
catch (Exception e) when (e is FormatException or OverflowException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
if (!torch.cuda.is_available())
{
    Console.Error.WriteLine("error: CUDA is not available (this benchmark runs on a GPU; see README, GPU)");
    return 1;
}

var dev = torch.CUDA;
var results = new JsonArray();
var header = new JsonObject
{
    ["gpu"] = Gpu.Describe(),
    ["torchsharp"] = typeof(torch).Assembly.GetName().Version?.ToString(),
    ["libtorch"] = Ssm.Backbone.Diagnostics.SelfTest.LibTorchPath(),
    ["fused_kernels"] = CudaLib.Status,
    ["memory_metric"] = CudaMemory.HasAllocatorStats ? "peak allocated (caching allocator, as torch.cuda.max_memory_allocated)" : "device used memory (cudaMemGetInfo)",
    ["quick"] = quick,
};
Console.WriteLine($"# GPU benchmark: {header["gpu"]}");
Console.WriteLine($"TorchSharp {header["torchsharp"]}, libtorch {header["libtorch"]}; fused kernels {CudaLib.Status}; memory = {header["memory_metric"]}.");
Console.WriteLine($"Medians of up to {reps} timed runs after warm-ups, each between torch.cuda.synchronize() calls.");
Console.WriteLine();

double copyTbs = Bench.CopyBandwidth(dev);
header["copy_tb_s"] = copyTbs;
Console.WriteLine($"Device-to-device copy: {copyTbs:F2} TB/s (bytes read + written).");
Console.WriteLine();

void Save()
{
    if (outPath is null) return;
    var doc = new JsonObject { ["header"] = header.DeepClone(), ["results"] = results.DeepClone() };
    Ssm.Backbone.IO.AtomicFile.WriteAllText(outPath, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
}

// ------------------------------------------------------------------------------------------------ self-test first
if (sections.Contains("doctor"))
{
    // The CUDA-vs-CPU self-test of every op (the CLIs' `doctor`): numbers below mean nothing if an op disagrees.
    Console.WriteLine("## Self-test on this GPU (vs float64 on the CPU; CUDA-only checks vs their float32 twins)");
    Console.WriteLine();
    Console.WriteLine("| op | result | rel. error | tolerance |");
    Console.WriteLine("|---|---|---:|---:|");
    foreach (var r in Ssm.Backbone.Diagnostics.SelfTest.Run(dev))
    {
        Console.WriteLine($"| {r.Op} | {(r.Passed ? "pass" : "FAIL")} | {r.RelErr:0.0e+0} | {r.Tolerance:0e+0} |{(r.Error is null ? "" : " " + r.Error)}");
        results.Add(new JsonObject { ["section"] = "doctor", ["op"] = r.Op, ["passed"] = r.Passed, ["rel_err"] = Bench.J(r.RelErr), ["tolerance"] = r.Tolerance, ["error"] = r.Error });
    }
    Console.WriteLine();
    Save();
}

// ------------------------------------------------------------------------------------------------ selective scan
if (sections.Contains("scan"))
{
    long b = quick ? 2 : 8, d = quick ? 256 : 2048, n = 16;
    var lengths = quick ? new long[] { 512 } : new long[] { 2048, 8192 };
    Console.WriteLine($"## Selective scan (b = {b}, d = {d}, n = {n}; Δ softplus, D skip and z gate included)");
    Console.WriteLine();
    Console.WriteLine("| l | dtype | pass | impl | median ms | device ms | x vs sequential | x vs tensor-op | peak MiB | TB/s moved | x of floor |");
    Console.WriteLine("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    foreach (var l in lengths)
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            torch.manual_seed(0);
            var u = torch.randn(new[] { b, d, l }, device: dev).to(dtype);
            var delta = (torch.randn(new[] { b, d, l }, device: dev) * 0.5 - 1.0).to(dtype);
            var A = -torch.rand(new[] { d, n }, device: dev) * 4 - 0.5;
            var B = torch.randn(new[] { b, n, l }, device: dev).to(dtype);
            var C = torch.randn(new[] { b, n, l }, device: dev).to(dtype);
            var D = torch.randn(d, device: dev);
            var z = torch.randn(new[] { b, d, l }, device: dev).to(dtype);
            var bias = torch.randn(d, device: dev) * 0.1;
            // The backward gets a random dL/dy, as in training (y.sum().backward() would hand it an expanded scalar,
            // which the kernel's contiguous copy turns into an extra full-size write), and the input gradients are taken
            // with autograd.grad: accumulating them into leaf tensors' .grad would add a full-size copy per input that
            // a real model, whose scan inputs are intermediate activations, does not pay.
            var gy = torch.randn(new[] { b, d, l }, device: dev).to(dtype);
            int es = dtype == ScalarType.BFloat16 ? 2 : 4;
            double bytes = es * (4.0 * b * d * l + 2.0 * b * l * n) + 4.0 * b * d * n;     // read u, Δ, z, B, C; write y, last
            foreach (var backward in new[] { false, true })
            {
                double? seqMs = null, chunkMs = null;
                foreach (var impl in new[] { ScanImpl.Reference, ScanImpl.Chunked, ScanImpl.Fused })
                {
                    // The reference and the tensor-op path compute in float32 whatever the input dtype: their bf16 rows
                    // would repeat the fp32 ones, so only the fused kernel is measured in bf16.
                    if (dtype == ScalarType.BFloat16 && impl != ScanImpl.Fused) continue;
                    int r = impl == ScanImpl.Fused ? reps : impl == ScanImpl.Chunked ? Math.Min(reps, 3) : 1;
                    int w = impl == ScanImpl.Fused ? 3 : 1;
                    var m = Bench.Time(w, r, () =>
                    {
                        var leaves = new[] { u, delta, B, C, z }.Select(t => t.detach().requires_grad_(backward)).ToArray();
                        using var grad = torch.set_grad_enabled(backward);
                        var (y, _) = SelectiveScan.Forward(leaves[0], leaves[1], A, leaves[2], leaves[3], D, leaves[4], bias, deltaSoftplus: true, impl: impl);
                        if (backward) foreach (var gr in torch.autograd.grad(new[] { y }, leaves, new[] { gy })) gr.Dispose();
                    }, deviceTime: impl == ScanImpl.Fused);
                    if (impl == ScanImpl.Reference) seqMs = m.Ms;
                    if (impl == ScanImpl.Chunked) chunkMs = m.Ms;
                    string pass = backward ? "fwd+bwd" : "fwd";
                    string implName = impl switch { ScanImpl.Fused => "fused CUDA", ScanImpl.Chunked => "tensor-op (chunked)", _ => "sequential reference" };
                    // The bandwidth is the kernel's: bytes over its GPU time (the wall time adds the host's launch work).
                    bool bw = impl == ScanImpl.Fused && !backward && m.Error is null && !double.IsNaN(m.GpuMs);
                    double tbs = bw ? bytes / (m.GpuMs * 1e-3) / 1e12 : double.NaN;
                    Console.WriteLine($"| {l} | {Bench.Name(dtype)} | {pass} | {implName} | {Bench.F(m.Ms, m.Error)} | {Bench.F(m.GpuMs, m.Error)} | {Bench.Ratio(seqMs, m)} | {Bench.Ratio(chunkMs, m)} | {Bench.F(m.PeakMb, m.Error, "F0")} | {(bw ? tbs.ToString("F2", CultureInfo.InvariantCulture) : "-")} | {(bw ? (copyTbs / tbs).ToString("F2", CultureInfo.InvariantCulture) : "-")} |");
                    results.Add(new JsonObject
                    {
                        ["section"] = "scan", ["b"] = b, ["d"] = d, ["n"] = n, ["l"] = l, ["dtype"] = Bench.Name(dtype), ["pass"] = pass,
                        ["impl"] = implName, ["ms"] = Bench.J(m.Ms), ["gpu_ms"] = Bench.J(m.GpuMs), ["ms_all"] = Bench.JArr(m.All), ["peak_mib"] = Bench.J(m.PeakMb), ["error"] = m.Error,
                        ["bytes"] = bw ? bytes : null, ["tb_s"] = bw ? tbs : null, ["floor_ms"] = bw ? bytes / (copyTbs * 1e12) * 1e3 : null,
                    });
                    Save();
                }
            }
            foreach (var t in new[] { u, delta, A, B, C, D, z, bias, gy }) t.Dispose();
        }
    Console.WriteLine();
}

// ------------------------------------------------------------------------------------------------ SSD
if (sections.Contains("ssd"))
{
    long b = quick ? 2 : 8, l = quick ? 1024 : 8192, h = quick ? 4 : 32, p = 64, n = 128, g = 1;
    Console.WriteLine($"## SSD chunked scan (Mamba-2; b = {b}, l = {l}, {h} heads of {p}, n = {n}, bf16 in and out, float32 inside)");
    Console.WriteLine();
    Console.WriteLine("| pass | impl | median ms | peak MiB |");
    Console.WriteLine("|---|---|---:|---:|");
    torch.manual_seed(1);
    var dt16 = ScalarType.BFloat16;
    var x = torch.randn(new[] { b, l, h, p }, device: dev).to(dt16);
    var dt = (torch.randn(new[] { b, l, h }, device: dev) * 0.5 - 1.0).to(dt16);
    var A = -torch.rand(h, device: dev) * 4 - 0.5;
    var B = torch.randn(new[] { b, l, g, n }, device: dev).to(dt16);
    var C = torch.randn(new[] { b, l, g, n }, device: dev).to(dt16);
    var D = torch.randn(h, device: dev);
    var bias = torch.randn(h, device: dev) * 0.1;
    var gy = torch.randn(new[] { b, l, h, p }, device: dev).to(dt16);
    // With libssm_cuda.so ChunkScan runs step 1 (the diagonal blocks) in the fused kernels, forward and backward;
    // fusedKernels: false keeps every step a tensor op.
    const string fusedDiag = "fused diagonal blocks + tensor ops, Q = 256";
    foreach (var backward in new[] { false, true })
        foreach (var impl in new[] { "tensor-op chunked, Q = 256", fusedDiag, "sequential reference" })
        {
            string pass = backward ? "fwd+bwd" : "fwd";
            bool seq = impl.StartsWith("sequential", StringComparison.Ordinal), fused = impl == fusedDiag;
            if (seq && backward)
            {
                // Autograd of the sequential loop keeps every step's (b, h, p, n) state: l x 8 MB x ~3 = about 200 GB here.
                Console.WriteLine($"| {pass} | {impl} | not run (autograd would keep ~{3.0 * l * b * h * p * n * 4 / 1e9:F0} GB of per-step states) | - |");
                continue;
            }
            var m = Bench.Time(seq ? 1 : 2, seq ? 1 : Math.Min(reps, 5), () =>
            {
                var leaves = new[] { x, dt, B, C }.Select(t => t.detach().requires_grad_(backward)).ToArray();
                using var grad = torch.set_grad_enabled(backward);
                var (y, _) = seq
                    ? Ssd.Reference(leaves[0], leaves[1], A, leaves[2], leaves[3], D: D, dtBias: bias, dtSoftplus: true)
                    : Ssd.ChunkScan(leaves[0], leaves[1], A, leaves[2], leaves[3], 256, D: D, dtBias: bias, dtSoftplus: true, fusedKernels: fused);
                if (backward) foreach (var gr in torch.autograd.grad(new[] { y }, leaves, new[] { gy })) gr.Dispose();
            });
            Console.WriteLine($"| {pass} | {impl} | {Bench.F(m.Ms, m.Error)} | {Bench.F(m.PeakMb, m.Error, "F0")} |");
            results.Add(new JsonObject
            {
                ["section"] = "ssd", ["b"] = b, ["l"] = l, ["heads"] = h, ["head_dim"] = p, ["n"] = n, ["dtype"] = "bf16", ["pass"] = pass,
                ["impl"] = impl, ["ms"] = Bench.J(m.Ms), ["ms_all"] = Bench.JArr(m.All), ["peak_mib"] = Bench.J(m.PeakMb), ["error"] = m.Error,
            });
            Save();
        }
    foreach (var t in new[] { x, dt, A, B, C, D, bias, gy }) t.Dispose();
    Console.WriteLine();
}

// mamba-130m's shape (state-spaces/mamba-130m; HF MambaConfig): d_model 768, 24 layers, vocabulary 50280, n = 16.
MambaLMConfig Shape130m() => quick
    ? new MambaLMConfig(1000, 128, 2, Mamba: new MambaConfig(128))
    : new MambaLMConfig(50280, 768, 24, Mamba: new MambaConfig(768));

// ------------------------------------------------------------------------------------------------ causal conv1d + SiLU
if (sections.Contains("conv"))
{
    long b = quick ? 2 : 8, c = quick ? 256 : 2048, k = 4;
    var lengths = quick ? new long[] { 512 } : new long[] { 2048, 8192 };
    Console.WriteLine($"## Causal depthwise conv1d + SiLU (b = {b}, c = {c}, k = {k}, bias; the Mamba block's convolution)");
    Console.WriteLine();
    Console.WriteLine("| l | dtype | pass | impl | median ms | device ms | x vs unfused | peak MiB |");
    Console.WriteLine("|---:|---|---|---|---:|---:|---:|---:|");
    foreach (var l in lengths)
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            torch.manual_seed(2);
            using var conv = CausalConv.Create(c, k, bias: true);
            conv.to(dev).to(dtype);
            var x = torch.randn(new[] { b, c, l }, device: dev).to(dtype);
            var gy = torch.randn(new[] { b, c, l }, device: dev).to(dtype);
            foreach (var backward in new[] { false, true })
            {
                double? unfusedMs = null;
                foreach (var fused in new[] { false, true })
                {
                    var m = Bench.Time(3, reps, () =>
                    {
                        var xl = x.detach().requires_grad_(backward);
                        using var grad = torch.set_grad_enabled(backward);
                        // Unfused: what the block ran before the kernel (cuDNN depthwise convolution over l + k - 1
                        // padded outputs, slice, SiLU); fused: CausalConv.ForwardSilu, the kernel on CUDA.
                        var y = fused ? CausalConv.ForwardSilu(conv, xl) : nn.functional.silu(CausalConv.Forward(conv, xl));
                        if (backward) foreach (var gr in torch.autograd.grad(new[] { y }, new[] { xl, conv.weight!, conv.bias! }, new[] { gy })) gr.Dispose();
                    }, deviceTime: true);
                    if (!fused) unfusedMs = m.Ms;
                    string pass = backward ? "fwd+bwd" : "fwd", impl = fused ? "fused CUDA" : "cuDNN conv + SiLU";
                    Console.WriteLine($"| {l} | {Bench.Name(dtype)} | {pass} | {impl} | {Bench.F(m.Ms, m.Error)} | {Bench.F(m.GpuMs, m.Error)} | {(fused && unfusedMs is double u && m.Error is null ? (u / m.Ms).ToString("F1", CultureInfo.InvariantCulture) + "x" : "1x")} | {Bench.F(m.PeakMb, m.Error, "F0")} |");
                    results.Add(new JsonObject
                    {
                        ["section"] = "conv", ["b"] = b, ["c"] = c, ["k"] = k, ["l"] = l, ["dtype"] = Bench.Name(dtype), ["pass"] = pass,
                        ["impl"] = impl, ["ms"] = Bench.J(m.Ms), ["gpu_ms"] = Bench.J(m.GpuMs), ["ms_all"] = Bench.JArr(m.All), ["peak_mib"] = Bench.J(m.PeakMb), ["error"] = m.Error,
                    });
                    Save();
                }
            }
            x.Dispose();
            gy.Dispose();
        }
    Console.WriteLine();
}

// ------------------------------------------------------------------------------------------------ training step
if (sections.Contains("train"))
{
    long l = quick ? 256 : 2048;
    var cfg = Shape130m();
    Console.WriteLine($"## Training step, mamba-130m shape (d_model {cfg.DModel}, {cfg.NLayer} layers, vocabulary {cfg.VocabSize}), l = {l}");
    Console.WriteLine("One step = forward, cross-entropy, backward, AdamW (bf16: bf16 compute with float32 SSM parameters, states and master weights).");
    Console.WriteLine();
    Console.WriteLine("| precision | batch | median ms | tokens/s | peak MiB |");
    Console.WriteLine("|---|---:|---:|---:|---:|");
    foreach (var precision in new[] { Precision.Fp32, Precision.Bf16 })
        foreach (var batch in trainBatches)
        {
            torch.manual_seed(2);
            var lm = new MambaLM(cfg);
            MixedPrecision.MoveTo(lm, dev);
            MixedPrecision.Apply(lm, precision);
            var opt = new AdamW(lm.named_parameters().Select(q => (q.name, (Tensor)q.parameter)), weightDecay: 0.1);
            var ids = torch.randint(0, cfg.VocabSize, new[] { batch, l + 1 }, device: dev);
            var m = Bench.Time(2, Math.Min(reps, 5), () =>
            {
                opt.ZeroGrad();
                var logits = lm.forward(ids[.., ..^1]);
                var loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), ids[.., 1..].reshape(-1));
                loss.backward();
                opt.Step(1e-4);
            });
            string name = precision == Precision.Fp32 ? "fp32" : "bf16";
            double tps = batch * l / (m.Ms * 1e-3);
            Console.WriteLine($"| {name} | {batch} | {Bench.F(m.Ms, m.Error)} | {(m.Error is null ? tps.ToString("F0", CultureInfo.InvariantCulture) : "-")} | {Bench.F(m.PeakMb, m.Error, "F0")} |");
            results.Add(new JsonObject
            {
                ["section"] = "train", ["precision"] = name, ["batch"] = batch, ["l"] = l, ["ms"] = Bench.J(m.Ms), ["ms_all"] = Bench.JArr(m.All),
                ["tokens_per_s"] = m.Error is null ? tps : null, ["peak_mib"] = Bench.J(m.PeakMb), ["error"] = m.Error,
            });
            Save();
            ids.Dispose();
            lm.Dispose();
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    Console.WriteLine();
}

// ------------------------------------------------------------------------------------------------ decoding
if (sections.Contains("decode"))
{
    var cfg = Shape130m();
    int promptLen = 16, maxBatch = 16;
    torch.manual_seed(3);
    var lm = new MambaLM(cfg);                                               // random weights, float32, on the CPU first
    var prompts = new List<long[]>();
    var gen = new torch.Generator(5);
    for (int i = 0; i < maxBatch; i++) prompts.Add(torch.randint(0, cfg.VocabSize, new long[] { promptLen }, generator: gen).data<long>().ToArray());
    if (ckptDir is not null)
    {
        Ssm.Language.HfMamba.Save(ckptDir, lm);
        Ssm.Backbone.IO.AtomicFile.WriteAllText(Path.Combine(ckptDir, "prompts.json"), new JsonArray(prompts.Select(p => (JsonNode)new JsonArray(p.Select(t => (JsonNode)t).ToArray())).ToArray()).ToJsonString());
        Console.WriteLine($"(decode model and prompts written to {ckptDir} for peer.py)");
    }
    MixedPrecision.MoveTo(lm, dev);
    Console.WriteLine($"## Decoding, mamba-130m shape, random weights, greedy, prompt {promptLen} tokens, {decodeTokens} new tokens");
    Console.WriteLine("generate = the library's TokenGenerator (sampling on the host each token, as a user gets it); loop = engine steps with argmax on the GPU and one synchronisation at the end.");
    Console.WriteLine();
    Console.WriteLine("| weights | path | batch | ms / token step | tokens/s per sequence | tokens/s total | peak MiB |");
    Console.WriteLine("|---|---|---:|---:|---:|---:|---:|");
    var lm16 = new MambaLM(cfg);
    lm16.load_state_dict(lm.state_dict());
    MixedPrecision.MoveTo(lm16, dev);
    MixedPrecision.Apply(lm16, Precision.Bf16);
    foreach (var (model, wname) in new[] { (lm, "fp32"), (lm16, "bf16") })
        foreach (int batch in new[] { 1, maxBatch })
        {
            var rows = prompts.Take(batch).Select(p => (IReadOnlyList<long>)p).ToList();
            var opts = new GenerationOptions(MaxNewTokens: decodeTokens, Greedy: true);
            var paths = new List<(string Name, Func<(double Ms, long[]? First)> Run)>();
            if (wname == "fp32") paths.Add(("generate, op-by-op MambaLM.Step", () => Bench.Generate(model, DecodeBackend.Model, rows, opts)));
            paths.Add(("generate, CUDA engine (graph)", () => Bench.Generate(model, DecodeBackend.Engine, rows, opts)));
            paths.Add(("loop, CUDA engine (graph)", () => Bench.EngineLoop(model, rows, decodeTokens, graph: true)));
            paths.Add(("loop, CUDA engine (launches)", () => Bench.EngineLoop(model, rows, decodeTokens, graph: false)));
            foreach (var (name, run) in paths)
            {
                CudaMemory.Reset();
                double ms = double.NaN; long[]? first = null; string? error = null;
                try
                {
                    run();                                                       // warm-up (and graph capture)
                    (ms, first) = run();
                }
                catch (Exception e) when (Bench.IsOom(e)) { error = "out of memory"; }
                double peak = CudaMemory.Peak() / 1048576.0;
                Console.WriteLine($"| {wname} | {name} | {batch} | {Bench.F(ms, error, "F3")} | {(error is null ? (1e3 / ms).ToString("F0", CultureInfo.InvariantCulture) : "-")} | {(error is null ? (batch * 1e3 / ms).ToString("F0", CultureInfo.InvariantCulture) : "-")} | {peak:F0} |");
                results.Add(new JsonObject
                {
                    ["section"] = "decode", ["weights"] = wname, ["path"] = name, ["batch"] = batch, ["new_tokens"] = decodeTokens,
                    ["ms_per_step"] = Bench.J(ms), ["tok_s_per_seq"] = error is null ? 1e3 / ms : null, ["tok_s_total"] = error is null ? batch * 1e3 / ms : null,
                    ["peak_mib"] = peak, ["error"] = error,
                    ["greedy_first_row"] = first is null ? null : new JsonArray(first.Take(32).Select(t => (JsonNode)t).ToArray()),
                });
                Save();
            }
        }
    Console.WriteLine();
}
Save();
return 0;

static class Bench
{
    /// <summary>Median wall ms (synchronised); device ms per run of a back-to-back batch (NaN unless asked and the timer exists); peak MiB.</summary>
    public sealed record Measured(double Ms, double PeakMb, string? Error, double[] All, double GpuMs = double.NaN);

    public static bool IsOom(Exception e) => e.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase);

    /// <summary>Median ms of <paramref name="reps"/> runs after <paramref name="warmups"/>, with the peak memory of the whole case.</summary>
    public static Measured Time(int warmups, int reps, Action body, bool deviceTime = false)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        CudaMemory.Reset();
        var times = new List<double>();
        double gpuMs = double.NaN;
        try
        {
            for (int i = 0; i < warmups + reps; i++)
            {
                using var scope = torch.NewDisposeScope();
                torch.cuda.synchronize();
                var sw = Stopwatch.StartNew();
                body();
                torch.cuda.synchronize();
                if (i >= warmups) times.Add(sw.Elapsed.TotalMilliseconds);
            }
            if (deviceTime && CudaTimer.Available)
            {
                // The median over 5 batches of the per-run mean of a batch.
                var batches = new List<double>();
                for (int k = 0; k < 5; k++)
                {
                    torch.cuda.synchronize();
                    batches.Add(CudaTimer.Measure(() =>
                    {
                        for (int i = 0; i < reps; i++)
                        {
                            using var scope = torch.NewDisposeScope();
                            body();
                        }
                    }) / reps);
                }
                gpuMs = batches.OrderBy(t => t).ElementAt(batches.Count / 2);
            }
        }
        catch (Exception e) when (IsOom(e))
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            CudaMemory.Reset();
            return new Measured(double.NaN, double.NaN, "out of memory", times.ToArray());
        }
        double peak = CudaMemory.Peak() / 1048576.0;
        var sorted = times.OrderBy(t => t).ToArray();
        return new Measured(sorted[sorted.Length / 2], peak, null, times.ToArray(), gpuMs);
    }

    /// <summary>TB/s of a device-to-device copy of 1 GiB (bytes read + written), the bandwidth floor's yardstick.</summary>
    public static double CopyBandwidth(Device dev)
    {
        using var src = torch.empty(256L << 20, ScalarType.Float32, dev).fill_(1);
        using var dst = torch.empty_like(src);
        var m = Time(3, 10, () => dst.copy_(src));
        return 2.0 * src.numel() * 4 / (m.Ms * 1e-3) / 1e12;
    }

    /// <summary>Greedy generation through TokenGenerator: median step time (ms) and the first row's tokens.</summary>
    public static (double Ms, long[]? First) Generate(MambaLM model, DecodeBackend backend, IReadOnlyList<IReadOnlyList<long>> prompts, GenerationOptions opts)
    {
        using var tg = new TokenGenerator(model, backend);
        var res = tg.GenerateBatch(prompts, opts);
        var steps = res[0].Timing.StepSeconds.OrderBy(s => s).ToArray();
        return (steps[steps.Length / 2] * 1e3, res[0].Tokens.ToArray());
    }

    /// <summary>Prefill, then <paramref name="tokens"/> engine steps with the argmax on the GPU; one synchronisation at
    /// the end, so the time is what the GPU and the launches cost.</summary>
    public static (double Ms, long[]? First) EngineLoop(MambaLM model, IReadOnlyList<IReadOnlyList<long>> prompts, int tokens, bool graph)
    {
        using var noGrad = torch.no_grad();
        var dev = model.backbone.embeddings.weight!.device;
        using var engine = new CudaDecodeEngine(model, graph);
        using var state = model.AllocateState(prompts.Count);
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(prompts.SelectMany(p => p).ToArray(), ScalarType.Int64, dev).reshape(prompts.Count, -1);
        var next = model.Forward(ids, state)[.., -1, ..].argmax(-1);
        var outs = new List<Tensor> { next };
        torch.cuda.synchronize();
        var sw = Stopwatch.StartNew();
        for (int t = 1; t < tokens; t++)
        {
            using var logits = engine.Step(next, state);
            next = logits.argmax(-1);
            outs.Add(next);
        }
        torch.cuda.synchronize();
        double ms = sw.Elapsed.TotalMilliseconds / (tokens - 1);
        var first = torch.stack(outs, 1)[0].cpu().data<long>().ToArray();
        return (ms, first);
    }

    public static string Name(ScalarType t) => t == ScalarType.BFloat16 ? "bf16" : "fp32";
    public static string F(double v, string? error, string fmt = "F2") => error ?? v.ToString(fmt, CultureInfo.InvariantCulture);
    public static string Ratio(double? baseline, Measured m) => baseline is double b && !double.IsNaN(b) && m.Error is null ? (b / m.Ms).ToString("F0", CultureInfo.InvariantCulture) + "x" : "-";
    public static JsonNode? J(double v) => double.IsNaN(v) ? null : v;
    public static JsonArray JArr(double[] v) => new(v.Select(x => (JsonNode)x).ToArray());
}

static class Gpu
{
    /// <summary>nvidia-smi's name, memory and driver of GPU 0, and the host's CPU count.</summary>
    public static string Describe()
    {
        string gpu = "unknown GPU";
        try
        {
            var psi = new ProcessStartInfo("nvidia-smi", "--query-gpu=name,memory.total,driver_version --format=csv,noheader") { RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            gpu = p.StandardOutput.ReadLine()?.Trim() ?? gpu;
            p.WaitForExit();
        }
        catch (System.ComponentModel.Win32Exception) { }
        return $"{gpu}; {Environment.ProcessorCount} CPU cores; {System.Runtime.InteropServices.RuntimeInformation.OSDescription}";
    }
}
