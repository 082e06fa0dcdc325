// Decode benchmark (issue 7, section 2): generation speed of a randomly initialised mamba-130m-shaped LM on the CPU.
// Prefill (fused scan over the prompt) and decode (recurrent steps) are timed separately and compared with
// regenerating by a full forward pass for every token. Batch-1 decode streams every weight from memory once per
// token, so the machine's read bandwidth divided by the bytes of weights per token is a ceiling on tokens/s: the
// table prints the measured bandwidth, the ceiling of each weight format, and how close each decoder gets.
// Then the accuracy cost of bf16/int8 weights: logit error against float32, and bits per byte on a text.
//   dotnet run -c Release --project bench/DecodeBench [-- --quick --prompt 512 --new-tokens 256 --layers 24 --text FILE]
using System.Diagnostics;
using Ssm.Backbone.Generation;
using Ssm.Backbone.Models;
using TorchSharp;
using static TorchSharp.torch;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

int promptLen = 512, newTokens = 256, nLayers = 24, baselineTokens = 3, bpbBytes = 1024;
bool quick = false;
string textFile = "/usr/share/common-licenses/GPL-3";
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--quick": quick = true; break;
            case "--prompt": promptLen = int.Parse(Next()); break;
            case "--new-tokens": newTokens = int.Parse(Next()); break;
            case "--layers": nLayers = int.Parse(Next()); break;
            case "--baseline-tokens": baselineTokens = int.Parse(Next()); break;
            case "--text": textFile = Next(); break;
            case "--bpb-bytes": bpbBytes = int.Parse(Next()); break;
            case "-h" or "--help":
                Console.WriteLine("usage: DecodeBench [--quick] [--prompt 512] [--new-tokens 256] [--layers 24] [--baseline-tokens 3]\n" +
                    "                   [--text FILE] [--bpb-bytes 1024]\n" +
                    "  --quick: 64 new tokens, 2 baseline tokens, 256 bytes of text, fewer bandwidth repetitions\n" +
                    "  --text: any file, read as bytes (token id = byte value) for the bits-per-byte comparison");
                return 0;
            default: throw new FormatException($"unknown argument '{args[i]}' (try --help)");
        }
    }
    if (quick) { newTokens = Math.Min(newTokens, 64); baselineTokens = Math.Min(baselineTokens, 2); bpbBytes = Math.Min(bpbBytes, 256); }
    if (promptLen < 1 || newTokens < 2 || nLayers < 1 || baselineTokens < 2 || bpbBytes < 2)
        throw new FormatException("--prompt and --layers must be >= 1; --new-tokens, --baseline-tokens and --bpb-bytes >= 2");
    if (!File.Exists(textFile)) throw new FormatException($"--text: {textFile} does not exist");
}
catch (Exception e) when (e is FormatException or OverflowException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}

torch.set_num_threads(Environment.ProcessorCount);
var workers = DecodeWorkers.Shared;
Console.WriteLine($"# Decode benchmark: {Machine.Describe()}");
string kernel = System.Runtime.Intrinsics.X86.Avx512F.IsSupported && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? "AVX-512"
    : System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported ? "AVX2+FMA" : "scalar";
Console.WriteLine($"TorchSharp threads {torch.get_num_threads()} (1 while the engine decodes), decode workers {workers.Size}, matrix-vector kernel {kernel}, float32 activations.");

// ---------------------------------------------------------------------------------------------- read bandwidth
// Measured on a torch allocation (where the weights live), 1 thread and all threads; on a shared (virtual) machine it
// drifts, so every decode row below re-measures it just before it runs and takes its ceiling from that.
using var bandwidth = new Bandwidth(workers);
var (bw1, bwAll) = bandwidth.Measure(quick ? 3 : 7);
Console.WriteLine($"Read bandwidth (sum of a 1.2 GB float32 tensor, best of {(quick ? 3 : 7)}): 1 thread {bw1 / 1e9:F1} GB/s, {workers.Size} threads {bwAll / 1e9:F1} GB/s.");

// ---------------------------------------------------------------------------------------------- model
torch.manual_seed(0);
var cfg = new MambaLMConfig(VocabSize: 50280, DModel: 768, NLayer: nLayers);
var model = new MambaLM(cfg);
model.eval();
long parameters = Distinct(model).Sum(p => p.numel());
var prompt = torch.randint(0, cfg.VocabSize, new long[] { promptLen }, generator: new torch.Generator(1, torch.CPU)).data<long>().ToArray();
Console.WriteLine($"Model: mamba-130m shape (d_model 768, {nLayers} layers, d_inner 1536, d_state 16, vocab {cfg.VocabSize}, tied lm_head), random init, {parameters / 1e6:F1} M parameters; prompt {promptLen} tokens, {newTokens} new tokens, greedy.");
Console.WriteLine();

// ---------------------------------------------------------------------------------------------- decode rates
Console.WriteLine("Decode tok/s = batch / median step time; ms/token = median over new tokens 2-64, 65-128, 129-256 (token 1 comes from the prefill). " +
    "Bandwidth = best of 3 sums of the 1.2 GB tensor right before the row; ceiling = bandwidth / bytes read per token; achieved = bytes per token x tok/s.");
Console.WriteLine();
Console.WriteLine("| decoder | weights | MB read / token | bandwidth GB/s | ceiling tok/s | prefill tok/s | decode tok/s | achieved GB/s | % of ceiling | ms/token new 2-64 | 65-128 | 129-256 |");
Console.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
var greedy = new GenerationOptions(MaxNewTokens: newTokens, Greedy: true);
double? fp32Rate = null;
var rates = new Dictionary<string, double>();
void DecodeRow(string name, DecodeBackend backend, WeightFormat format, DecodeImpl impl, int batch = 1, GenerationOptions? options = null)
{
    using var gen = new TokenGenerator(model, backend, format, impl);
    var opts = options ?? greedy;
    var prompts = Enumerable.Range(0, batch).Select(i => (IReadOnlyList<long>)prompt.Skip(i).ToArray()).ToArray();
    gen.GenerateBatch(prompts.Select(p => (IReadOnlyList<long>)p.Take(16).ToArray()).ToArray(), opts with { MaxNewTokens = 8 });   // warm-up
    var (b1, bAll) = bandwidth.Measure(3);
    double bw = Math.Max(b1, bAll);
    var res = gen.GenerateBatch(prompts, opts)[0];
    var steps = res.Timing.StepSeconds;
    // Median step time: robust to the odd step that loses its core to another process.
    double rate = batch / Median(steps);
    long bytes = gen.Engine?.WeightBytesPerToken ?? FloatWeightBytes(model);
    double ceiling = bw / bytes;
    string Bucket(int from, int to)
    {
        // StepSeconds[j] produced new token j + 2 (the first came from the prefill).
        var sel = steps.Where((_, j) => j + 2 >= from && j + 2 <= to).ToArray();
        return sel.Length == 0 ? "-" : $"{Median(sel) * 1e3:F1}";
    }
    double prefillRate = prompts.Sum(p => p.Count) / res.Timing.PrefillSeconds;
    string pct = batch == 1 ? $"{100 * rate / ceiling:F0}%" : "-";
    string achieved = batch == 1 ? $"{bytes * rate / 1e9:F1}" : "-";
    Console.WriteLine($"| {name} | {format.ToString().ToLowerInvariant()} | {bytes / 1e6:F0} | {bw / 1e9:F1} | {(batch == 1 ? ceiling.ToString("F1") : "-")} | {prefillRate:F0} | {rate:F1} | {achieved} | {pct} | {Bucket(2, 64)} | {Bucket(65, 128)} | {Bucket(129, 256)} |");
    rates[name + " " + format] = rate;
    if (backend == DecodeBackend.Engine && format == WeightFormat.Float32 && impl == DecodeImpl.Fused && batch == 1 && options is null) fp32Rate = rate;
}
DecodeRow("DecodeEngine (fused)", DecodeBackend.Engine, WeightFormat.Float32, DecodeImpl.Fused);
DecodeRow("DecodeEngine (fused)", DecodeBackend.Engine, WeightFormat.BFloat16, DecodeImpl.Fused);
DecodeRow("DecodeEngine (fused)", DecodeBackend.Engine, WeightFormat.Int8, DecodeImpl.Fused);
DecodeRow("DecodeEngine (tensor ops = Mamba.Step + hook)", DecodeBackend.Engine, WeightFormat.Float32, DecodeImpl.TensorOps);
DecodeRow("DecodeEngine (tensor ops = Mamba.Step + hook)", DecodeBackend.Engine, WeightFormat.Int8, DecodeImpl.TensorOps);
DecodeRow("MambaLM.Step (torch ops)", DecodeBackend.Model, WeightFormat.Float32, DecodeImpl.Fused);
DecodeRow("DecodeEngine (fused), top-k 50 / top-p 0.9 / T 0.8 / rep 1.1 sampling", DecodeBackend.Engine, WeightFormat.Float32, DecodeImpl.Fused,
    options: greedy with { Greedy = false, TopK = 50, TopP = 0.9, Temperature = 0.8, RepetitionPenalty = 1.1, Seed = 0 });
DecodeRow("DecodeEngine (fused), batch of 4 prompts (tok/s summed)", DecodeBackend.Engine, WeightFormat.Float32, DecodeImpl.Fused, batch: 4);
DecodeRow("DecodeEngine (fused), batch of 4 prompts (tok/s summed)", DecodeBackend.Engine, WeightFormat.Int8, DecodeImpl.Fused, batch: 4);

// Baseline: a full forward pass over prompt + generated tokens for every new token.
{
    using var gen = new TokenGenerator(model, DecodeBackend.FullForward);
    gen.Generate(prompt.Take(16).ToArray(), greedy with { MaxNewTokens = 2 });
    var res = gen.Generate(prompt, greedy with { MaxNewTokens = baselineTokens });
    double perToken = res.Timing.StepSeconds.Average();
    Console.WriteLine($"| full forward each token (baseline) | float32 | - | - | - | - | {1 / perToken:F2} | - | - | {perToken * 1e3:F0} (context {promptLen + 1}..{promptLen + baselineTokens - 1} tokens) | - | - |");
    if (fp32Rate is double r) Console.WriteLine($"\nRecurrent decode (fused, float32) is {r * perToken:F0}x faster per token than the full-forward baseline at a {promptLen}-token context; the baseline's cost grows with the context, the recurrent step's does not.");
}
// The ceiling moves with whatever else the host's memory is doing, so also pair each bandwidth measurement with the
// decode steps right after it: 15 x (one sum of the 1.2 GB tensor, then 3 engine steps), median of the ratios.
Console.WriteLine();
Console.WriteLine("Paired measurement (15 x: sum of the 1.2 GB tensor over all threads, then 3 steps of the fused engine; the sum evicts the caches, so every step starts cold):");
Console.WriteLine();
Console.WriteLine("| weights | median bandwidth GB/s | median step ms | median achieved / bandwidth | min | max |");
Console.WriteLine("|---|---:|---:|---:|---:|---:|");
foreach (var format in Enum.GetValues<WeightFormat>())
{
    using var eng = new DecodeEngine(model, format);
    using var st = model.AllocateState(1);
    using var noGrad = torch.no_grad();
    using var id = torch.tensor(new long[] { prompt[0] });
    for (int i = 0; i < 3; i++) eng.Step(id, st).Dispose();
    var ratios = new List<double>(); var bws = new List<double>(); var times = new List<double>();
    for (int rep = 0; rep < 15; rep++)
    {
        var (_, bAll) = bandwidth.Measure(1);
        var sw = Stopwatch.StartNew();
        for (int k = 0; k < 3; k++) eng.Step(id, st).Dispose();
        double step = sw.Elapsed.TotalSeconds / 3;
        bws.Add(bAll); times.Add(step); ratios.Add(eng.WeightBytesPerToken / step / bAll);
    }
    Console.WriteLine($"| {format.ToString().ToLowerInvariant()} | {Median(bws) / 1e9:F1} | {Median(times) * 1e3:F2} | {100 * Median(ratios):F0}% | {100 * ratios.Min():F0}% | {100 * ratios.Max():F0}% |");
}
Console.WriteLine();

double f32 = rates["DecodeEngine (fused) Float32"];
Console.WriteLine($"Speed-up of the weight formats over float32 (fused engine): bf16 {rates["DecodeEngine (fused) BFloat16"] / f32:F2}x, int8 {rates["DecodeEngine (fused) Int8"] / f32:F2}x.");
Console.WriteLine();

// ---------------------------------------------------------------------------------------------- accuracy cost
var text = File.ReadAllBytes(textFile).Take(bpbBytes).Select(b => (long)b).ToArray();
if (text.Length < 2) { Console.Error.WriteLine($"error: --text {textFile} has fewer than 2 bytes"); return 2; }
int accPrefix = Math.Max(1, Math.Min(64, promptLen / 2));
var accTokens = prompt.Skip(accPrefix).Take(32).DefaultIfEmpty(prompt[0]).ToArray();
var accPrompt = prompt.Take(accPrefix).ToArray();
Console.WriteLine($"Accuracy of the weight formats. Logit error: the first {accPrefix} prompt tokens (float32 prefill), then {accTokens.Length} teacher-forced steps; " +
    $"rel. = max |error| / max |float32 logit|. Bits per byte: the first {text.Length} bytes of {textFile}, one token per byte (id = byte value; " +
    "the model is random, so the numbers only compare formats, they say nothing about language modelling).");
Console.WriteLine();
Console.WriteLine("| weights | max abs logit error | rel. logit error | argmax agreement | bits per byte | change vs float32 |");
Console.WriteLine("|---|---:|---:|---:|---:|---:|");
double? bpb32 = null;
torch.set_num_threads(1);                          // small torch ops between engine steps (see TokenGenerator)
using (var e32 = new DecodeEngine(model, WeightFormat.Float32))
{
    var ref32 = TeacherForced(model, e32, accPrompt, accTokens);
    foreach (var format in Enum.GetValues<WeightFormat>())
    {
        using var eng = format == WeightFormat.Float32 ? null : new DecodeEngine(model, format);
        var e = eng ?? e32;
        var logits = format == WeightFormat.Float32 ? ref32 : TeacherForced(model, e, accPrompt, accTokens);
        double maxAbs = (logits - ref32).abs().max().item<float>();
        double rel = maxAbs / ref32.abs().max().item<float>();
        double agree = logits.argmax(-1).eq(ref32.argmax(-1)).to_type(ScalarType.Float32).mean().item<float>();
        double bpb = BitsPerByte(model, e, text);
        bpb32 ??= bpb;
        Console.WriteLine($"| {format.ToString().ToLowerInvariant()} | {maxAbs:E2} | {rel:E2} | {agree * 100:F0}% | {bpb:F5} | {bpb - bpb32.Value:+0.00000;-0.00000;0} |");
    }
}
// Cross-check of the float32 number through the parallel scan (one forward pass).
torch.set_num_threads(Environment.ProcessorCount);
using (torch.no_grad())
{
    var ids = torch.tensor(text).unsqueeze(0);
    var logp = model.forward(ids)[0, ..^1, ..(int)cfg.VocabSize].log_softmax(-1);
    var nll = -logp.gather(-1, ids[0, 1..].unsqueeze(-1)).sum().item<float>();
    Console.WriteLine($"\nfloat32 bits per byte through MambaLM.forward (parallel scan): {nll / Math.Log(2) / (text.Length - 1):F5}");
}
return 0;

// ---------------------------------------------------------------------------------------------- helpers

static long FloatWeightBytes(MambaLM m)
{
    // MambaLM.Step reads every parameter once, except that of an untied embedding table it reads one row.
    long all = Distinct(m).Sum(p => p.numel()) * 4;
    long emb = m.backbone.embeddings.weight!.numel() * 4;
    return m.Config.TieEmbeddings ? all : all - emb + m.Config.DModel * 4;
}

static double Median(IReadOnlyList<double> xs)
{
    var s = xs.OrderBy(x => x).ToArray();
    return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
}

/// <summary>The parameters with a tied lm_head counted once (it is listed under both names).</summary>
static IEnumerable<Tensor> Distinct(MambaLM m)
    => m.named_parameters().Where(p => !(m.Config.TieEmbeddings && p.name == "lm_head.weight")).Select(p => (Tensor)p.parameter);

/// <summary>Prefill on <paramref name="prefix"/> in float32, then one engine step per token of <paramref name="tokens"/>:
/// logits (steps, vocab).</summary>
static Tensor TeacherForced(MambaLM model, DecodeEngine engine, long[] prefix, long[] tokens)
{
    using var noGrad = torch.no_grad();
    using var state = model.AllocateState(1);
    model.backbone.Forward(torch.tensor(prefix).unsqueeze(0), state).Dispose();
    var outs = new List<Tensor>();
    foreach (var t in tokens) outs.Add(engine.Step(torch.tensor(new[] { t }), state)[.., ..(int)model.Config.VocabSize]);
    return torch.cat(outs, 0);
}

/// <summary>Σ -log2 p(next byte) / (bytes - 1), stepping the engine through the text from a zero state.</summary>
static double BitsPerByte(MambaLM model, DecodeEngine engine, long[] text)
{
    using var noGrad = torch.no_grad();
    using var state = model.AllocateState(1);
    double bits = 0;
    for (int t = 0; t + 1 < text.Length; t++)
    {
        using var scope = torch.NewDisposeScope();
        var logits = engine.Step(torch.tensor(new[] { text[t] }), state)[0, ..(int)model.Config.VocabSize];
        bits -= logits.log_softmax(-1)[text[t + 1]].item<float>() / Math.Log(2);
    }
    return bits / (text.Length - 1);
}

sealed class Bandwidth : IDisposable
{
    const int N = 300_000_000;                                               // 1.2 GB: far beyond any cache
    readonly DecodeWorkers workers;
    readonly Tensor buffer = torch.ones(N);                                  // written once: no page faults when timed
    readonly float[] partial;

    public Bandwidth(DecodeWorkers workers) { this.workers = workers; partial = new float[workers.Size]; }

    /// <summary>Best read bandwidth (bytes/s) over reps sums of the buffer: one thread, and split over the workers.</summary>
    public unsafe (double one, double all) Measure(int reps)
    {
        float* a = (float*)THSTensor_data(buffer.Handle);
        double best1 = 0, bestAll = 0;
        for (int r = 0; r < reps; r++)
        {
            var sw = Stopwatch.StartNew();
            float s = TensorPrimitives.Sum(new ReadOnlySpan<float>(a, N));
            best1 = Math.Max(best1, N * 4.0 / sw.Elapsed.TotalSeconds);
            sw.Restart();
            workers.RunParts(p => { var (x, y) = DecodeWorkers.Part(N, workers.Size, p); partial[p] = TensorPrimitives.Sum(new ReadOnlySpan<float>(a + x, y - x)); });
            bestAll = Math.Max(bestAll, N * 4.0 / sw.Elapsed.TotalSeconds);
            if (!(s > 0 && partial.Sum() > 0)) throw new InvalidOperationException("bandwidth sum is wrong");
        }
        return (best1, bestAll);
    }

    public void Dispose() => buffer.Dispose();

    /// <summary>The tensor's data pointer (TorchSharp's native shim; the backbone keeps its own copy internal).</summary>
    [System.Runtime.InteropServices.DllImport("LibTorchSharp")]
    static extern IntPtr THSTensor_data(IntPtr handle);
}
