// Text generation with a Mamba LM: prefill the prompt with the parallel scan, then one recurrent step per new token.
//
// Why it is fast: a state-space model carries a fixed-size state (LMState: per layer the last d_conv conv inputs and
// the (d_inner, n) SSM state), so each new token costs the same -- no KV cache that grows with the sequence. The
// prompt goes through MambaLM's fused-scan forward once (MambaBackbone.Forward(ids, state) hands over the final
// state), then MambaLM.Step or the DecodeEngine (Mamba-1 on the CPU, weights in float32 / bfloat16 / int8) advances
// it one token at a time. FullForward is the baseline: recompute the whole sequence for every new token.
//
// Batches: each prompt is prefilled alone (prompts may differ in length), the states are stacked along the batch
// dimension and the sequences step together, so the weights stream from memory once per step for all of them; a
// sequence that finishes (max tokens, end-of-sequence token, stop string) leaves the batch and its rows of the state.
using System.Diagnostics;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using Ssm.Backbone.Native;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Generation;

/// <summary>What to generate (transformers' GenerationConfig names in brackets).</summary>
/// <param name="MaxNewTokens">[max_new_tokens] tokens to generate at most.</param>
/// <param name="Temperature">[temperature] divides the logits before sampling.</param>
/// <param name="TopK">[top_k] 0 = off.</param>
/// <param name="TopP">[top_p] 1 = off.</param>
/// <param name="MinP">[min_p] 0 = off.</param>
/// <param name="RepetitionPenalty">[repetition_penalty] 1 = off; applies to prompt and generated tokens.</param>
/// <param name="Seed">Seed of the sampler (sequence i of a batch uses Seed + i); null = random.</param>
/// <param name="StopStrings">[stop_strings] generation of a sequence ends when its decoded new text contains one
/// (the tokens that complete it are kept); needs a decode function.</param>
/// <param name="EosTokenId">[eos_token_id] generation of a sequence ends after this token (kept).</param>
/// <param name="Greedy">[do_sample = false] argmax instead of sampling.</param>
public sealed record GenerationOptions(
    int MaxNewTokens = 64,
    double Temperature = 1.0,
    int TopK = 0,
    double TopP = 1.0,
    double MinP = 0.0,
    double RepetitionPenalty = 1.0,
    ulong? Seed = null,
    IReadOnlyList<string>? StopStrings = null,
    long? EosTokenId = null,
    bool Greedy = false)
{
    public SamplingOptions Sampling => new(Temperature, TopK, TopP, MinP, RepetitionPenalty, Greedy);

    /// <summary>Throws an ArgumentException naming the first invalid option.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentException($"max new tokens must be >= 0, got {MaxNewTokens}");
        Sampling.Validate();
        if (StopStrings is not null && StopStrings.Any(string.IsNullOrEmpty)) throw new ArgumentException("a stop string is empty");
    }
}

/// <summary>Why a sequence stopped.</summary>
public enum StopReason { MaxNewTokens, EndOfSequence, StopString }

/// <summary>How a <see cref="TokenGenerator"/> computes the logits of the next token.</summary>
public enum DecodeBackend
{
    /// <summary>The engine when the model supports it (Mamba-1: float32 on the CPU, float32 or bfloat16 on CUDA), otherwise Model.</summary>
    Auto,
    /// <summary>MambaLM.Step (any mixer, any device).</summary>
    Model,
    /// <summary>Mamba-1: DecodeEngine on the CPU (weights in the chosen format), CudaDecodeEngine on CUDA.</summary>
    Engine,
    /// <summary>Baseline: a full forward pass over the whole sequence for every new token.</summary>
    FullForward,
}

/// <summary>Timings of one generate call, shared by the sequences of a batch.</summary>
/// <param name="PrefillSeconds">Forward passes over the prompts (all of them) and the first token's sampling.</param>
/// <param name="StepSeconds">One entry per later step: the step of all active sequences plus sampling.</param>
public sealed record GenerationTiming(double PrefillSeconds, IReadOnlyList<double> StepSeconds);

/// <summary>One sequence's outcome: the new tokens (prompt excluded), why it stopped, which stop string matched.</summary>
public sealed record GenerationResult(IReadOnlyList<long> Tokens, StopReason Reason, string? StopString, GenerationTiming Timing);

/// <summary>Generates tokens from a <see cref="MambaLM"/>: prefill + recurrent steps, sampling, stopping, batches.</summary>
public sealed class TokenGenerator : IDisposable
{
    readonly MambaLM model;
    readonly DecodeEngine? engine;
    readonly CudaDecodeEngine? cudaEngine;

    public DecodeBackend Backend { get; }

    /// <param name="model">The LM (its device is used; generation runs under no_grad).</param>
    /// <param name="backend">How to compute each step.</param>
    /// <param name="weights">Decode-weight format of the Engine backend (Auto with a format other than Float32
    /// requires the engine: an unsupported model is an error rather than a silent float32 fallback).</param>
    /// <param name="impl">Implementation of the engine's step.</param>
    public TokenGenerator(MambaLM model, DecodeBackend backend = DecodeBackend.Auto, WeightFormat weights = WeightFormat.Float32,
        DecodeImpl impl = DecodeImpl.Fused)
    {
        this.model = model;
        if (model.backbone.embeddings.weight!.device_type == DeviceType.CUDA)
        {
            // On CUDA the engine is CudaDecodeEngine, which reads the model's own weights (float32, or bfloat16 after
            // MixedPrecision.Apply): other decode-weight formats are a CPU feature.
            var whyCuda = CudaDecodeEngine.Unsupported(model);
            if (weights != WeightFormat.Float32)
                throw new NotSupportedException($"{weights} decode weights are a CPU-engine format; on CUDA the engine decodes with the model's own weights (cast the model to bfloat16 instead)");
            if (backend == DecodeBackend.Auto) backend = whyCuda is null ? DecodeBackend.Engine : DecodeBackend.Model;
            if (backend == DecodeBackend.Engine)
            {
                if (whyCuda is not null) throw new NotSupportedException(whyCuda);
                cudaEngine = new CudaDecodeEngine(model);
            }
            Backend = backend;
            return;
        }
        var why = DecodeEngine.Unsupported(model);
        if (backend == DecodeBackend.Auto)
            backend = why is null ? DecodeBackend.Engine
                : weights == WeightFormat.Float32 ? DecodeBackend.Model
                : throw new NotSupportedException($"{weights} decode weights: {why}");
        if (backend == DecodeBackend.Engine)
        {
            if (why is not null) throw new NotSupportedException(why);
            engine = new DecodeEngine(model, weights, impl);
        }
        Backend = backend;
    }

    /// <summary>The CUDA decode engine in use, if any.</summary>
    public CudaDecodeEngine? CudaEngine => cudaEngine;

    /// <summary>The decode engine in use, if any.</summary>
    public DecodeEngine? Engine => engine;

    /// <summary>Generates a continuation of one prompt (token ids).</summary>
    /// <param name="onToken">Called with each new token as soon as it is chosen (streaming).</param>
    /// <param name="decode">Turns token ids into text; needed for stop strings.</param>
    public GenerationResult Generate(IReadOnlyList<long> prompt, GenerationOptions options, Action<long>? onToken = null,
        Func<IReadOnlyList<long>, string>? decode = null)
        => GenerateBatch(new[] { prompt }, options, onToken is null ? null : (_, t) => onToken(t), decode)[0];

    /// <summary>Generates continuations of several prompts (of any lengths) together.</summary>
    /// <param name="onToken">Called with (prompt index, token) as each token is chosen.</param>
    public IReadOnlyList<GenerationResult> GenerateBatch(IReadOnlyList<IReadOnlyList<long>> prompts, GenerationOptions options,
        Action<int, long>? onToken = null, Func<IReadOnlyList<long>, string>? decode = null)
    {
        options.Validate();
        if (prompts.Count == 0) return Array.Empty<GenerationResult>();
        long vocab = model.Config.VocabSize;
        for (int i = 0; i < prompts.Count; i++)
        {
            if (prompts[i].Count == 0) throw new ArgumentException($"prompt {i} is empty: generation needs at least one token to condition on");
            foreach (var t in prompts[i])
                if (t < 0 || t >= vocab) throw new ArgumentException($"prompt {i} has token id {t} outside the vocabulary [0, {vocab})");
        }
        if (options.StopStrings is { Count: > 0 } && decode is null) throw new ArgumentException("stop strings need a decode function");
        if (options.MaxNewTokens == 0)
        {
            var none = new GenerationTiming(0, Array.Empty<double>());
            return prompts.Select(_ => new GenerationResult(Array.Empty<long>(), StopReason.MaxNewTokens, null, none)).ToArray();
        }
        using var noGrad = torch.no_grad();
        var run = new Run(prompts, options, decode, onToken, vocab, model.backbone.embeddings.weight!.device);
        try
        {
            if (Backend == DecodeBackend.FullForward) RunFullForward(run);
            else RunRecurrent(run);
            return run.Results();
        }
        finally { run.Dispose(); }
    }

    // ------------------------------------------------------------------------------------------ the loops

    void RunRecurrent(Run run)
    {
        int b = run.Count;
        var clock = Stopwatch.StartNew();
        var states = new List<LMState>();
        var firstLogits = new List<Tensor>();
        LMState? state = null;
        TorchThreads? singleThread = null;
        try
        {
            for (int i = 0; i < b; i++)
            {
                var st = model.AllocateState(1);
                states.Add(st);
                using var ids = run.PromptTensor(i);
                firstLogits.Add(LastLogits(ids, st));
            }
            state = Stack(states);
            foreach (var s in states) s.Dispose();
            states.Clear();
            var logits = torch.cat(firstLogits, 0);                                // (b V)
            foreach (var t in firstLogits) t.Dispose();
            firstLogits.Clear();
            var active = Enumerable.Range(0, b).ToList();
            bool first = true;
            // While the engine decodes, torch only samples (ops on one row of V logits, no gain from threads), and
            // each multi-threaded torch op leaves its OpenMP threads spinning for milliseconds (libgomp's
            // GOMP_SPINCOUNT) on the cores the engine's workers need: measured 74 ms instead of 11 ms per token on
            // 2 cores. So torch runs single-threaded until the loop ends.
            if (engine is not null) singleThread = TorchThreads.Single();
            while (true)
            {
                var next = run.Choose(logits, active);                              // one token per active sequence
                logits.Dispose();
                var (keep, keepRows) = run.Accept(active, next);
                if (first) { run.Prefill = clock.Elapsed.TotalSeconds; first = false; }
                else run.Steps.Add(clock.Elapsed.TotalSeconds);
                if (keep.Count == 0) break;
                if (keep.Count < active.Count)
                {
                    var old = state;
                    state = Select(old, keepRows);
                    old.Dispose();
                }
                active = keep;
                using var ids = torch.tensor(active.Select(i => run.Last(i)).ToArray(), ScalarType.Int64, run.Device);
                clock.Restart();
                logits = engine is not null ? engine.Step(ids, state) : cudaEngine is not null ? cudaEngine.Step(ids, state) : model.Step(ids, state);
            }
        }
        finally
        {
            singleThread?.Dispose();
            foreach (var s in states) s.Dispose();
            foreach (var t in firstLogits) t.Dispose();
            state?.Dispose();
        }
    }

    void RunFullForward(Run run)
    {
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < run.Count; i++)
        {
            var seq = new List<long>(run.Prompt(i));
            var active = new List<int> { i };
            bool first = true;
            while (true)
            {
                Tensor logits;
                using (var ids = torch.tensor(seq.ToArray(), ScalarType.Int64, run.Device).unsqueeze(0))
                    logits = LastLogits(ids, null);
                var next = run.Choose(logits, active);
                logits.Dispose();
                var (keep, _) = run.Accept(active, next);
                if (first) { run.Prefill += clock.Elapsed.TotalSeconds; first = false; }
                else run.Steps.Add(clock.Elapsed.TotalSeconds);
                if (keep.Count == 0) break;
                seq.Add(run.Last(i));
                clock.Restart();
            }
            clock.Restart();
        }
    }

    /// <summary>ids (1, l) -> logits (1, V) of the last position, through the parallel scan; a state receives the
    /// state after ids. (lm_head only at the last position: the prompt's other logits are not needed.)</summary>
    Tensor LastLogits(Tensor ids, LMState? state)
    {
        using var scope = torch.NewDisposeScope();
        var h = model.backbone.Forward(ids, state);                                 // (1 l d_model)
        var last = h[.., -1, ..];                                                   // (1 d_model)
        return model.lm_head.forward(last.to_type(model.lm_head.weight!.dtype)).to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>Stacks per-sequence states (batch 1 each) along the batch dimension.</summary>
    public static LMState Stack(IReadOnlyList<LMState> states)
    {
        int layers = states[0].Layers.Count;
        return new LMState(Enumerable.Range(0, layers).Select(l => new LayerState(
            states[0].Layers[l].Conv is null ? null : torch.cat(states.Select(s => s.Layers[l].Conv!).ToArray(), 0),
            torch.cat(states.Select(s => s.Layers[l].Ssm).ToArray(), 0))).ToList());
    }

    /// <summary>The rows <paramref name="rows"/> of a batched state (contiguous copies).</summary>
    public static LMState Select(LMState state, IReadOnlyList<long> rows)
    {
        using var idx = torch.tensor(rows.ToArray(), ScalarType.Int64, state.Layers[0].Ssm.device);
        return new LMState(state.Layers.Select(ls => new LayerState(
            ls.Conv?.index_select(0, idx).contiguous(), ls.Ssm.index_select(0, idx).contiguous())).ToList());
    }

    public void Dispose() { engine?.Dispose(); cudaEngine?.Dispose(); }

    // ------------------------------------------------------------------------------------------ per-call bookkeeping

    /// <summary>The sequences of one generate call: their tokens, stop checks, sampler and the seen-token mask.</summary>
    sealed class Run : IDisposable
    {
        readonly IReadOnlyList<IReadOnlyList<long>> prompts;
        readonly GenerationOptions options;
        readonly Func<IReadOnlyList<long>, string>? decode;
        readonly Action<int, long>? onToken;
        readonly long vocab;
        readonly Sampler sampler;
        readonly Tensor? seen;                                  // (b, vocab) bool, for the repetition penalty
        readonly List<long>[] tokens;
        readonly StopReason[] reasons;
        readonly string?[] stopStrings;
        readonly int window;                                    // tokens decoded for the stop-string check

        public readonly Device Device;
        public double Prefill;
        public readonly List<double> Steps = new();
        public int Count => prompts.Count;

        public Run(IReadOnlyList<IReadOnlyList<long>> prompts, GenerationOptions options, Func<IReadOnlyList<long>, string>? decode,
            Action<int, long>? onToken, long vocab, Device device)
        {
            this.prompts = prompts;
            this.options = options;
            this.decode = decode;
            this.onToken = onToken;
            this.vocab = vocab;
            Device = device;
            sampler = new Sampler(options.Sampling, prompts.Count, options.Seed);
            tokens = prompts.Select(_ => new List<long>()).ToArray();
            reasons = new StopReason[prompts.Count];
            stopStrings = new string?[prompts.Count];
            // A stop string of m chars spans at most 4m bytes, and every token decodes to at least one byte of
            // the text (or to a part of a character), so its last 4m + 4 tokens contain any match that ends now.
            int longest = options.StopStrings is { Count: > 0 } ? options.StopStrings.Max(s => s.Length) : 0;
            window = 4 * longest + 4;
            if (options.RepetitionPenalty != 1.0)
            {
                seen = torch.zeros(new[] { (long)prompts.Count, vocab }, ScalarType.Bool, device);
                for (int i = 0; i < prompts.Count; i++)
                {
                    using var ids = PromptTensor(i);
                    seen[i].index_fill_(0, ids.squeeze(0), true);
                }
            }
        }

        public IReadOnlyList<long> Prompt(int i) => prompts[i];
        public Tensor PromptTensor(int i) => torch.tensor(prompts[i].ToArray(), ScalarType.Int64, Device).unsqueeze(0);
        public long Last(int i) => tokens[i][^1];

        /// <summary>Next tokens for the active sequences from their logits (a, padded vocab); padding ids are never chosen.</summary>
        public long[] Choose(Tensor logits, List<int> active)
        {
            using var scope = torch.NewDisposeScope();
            var real = logits[.., ..(int)vocab];
            Tensor? seenRows = null;
            if (seen is not null)
            {
                using var idx = torch.tensor(active.Select(i => (long)i).ToArray(), ScalarType.Int64, Device);
                seenRows = seen.index_select(0, idx).to(logits.device);
            }
            var next = sampler.Next(real, seenRows, active);
            return next.cpu().data<long>().ToArray();
        }

        /// <summary>Records one token per active sequence, streams it, checks the stop conditions; returns the
        /// sequences still active and their rows in the current batch.</summary>
        public (List<int> keep, List<long> rows) Accept(List<int> active, long[] next)
        {
            var keep = new List<int>();
            var rows = new List<long>();
            for (int j = 0; j < active.Count; j++)
            {
                int i = active[j];
                long t = next[j];
                tokens[i].Add(t);
                if (seen is not null) seen[i, t].fill_(true);
                onToken?.Invoke(i, t);
                if (options.EosTokenId == t) { reasons[i] = StopReason.EndOfSequence; continue; }
                var stop = MatchStop(i);
                if (stop is not null) { reasons[i] = StopReason.StopString; stopStrings[i] = stop; continue; }
                if (tokens[i].Count >= options.MaxNewTokens) { reasons[i] = StopReason.MaxNewTokens; continue; }
                keep.Add(i);
                rows.Add(j);
            }
            return (keep, rows);
        }

        string? MatchStop(int i)
        {
            if (options.StopStrings is not { Count: > 0 } || decode is null) return null;
            var toks = tokens[i];
            int from = Math.Max(0, toks.Count - window);
            string text = decode(toks.GetRange(from, toks.Count - from));
            foreach (var s in options.StopStrings)
                if (text.Contains(s, StringComparison.Ordinal)) return s;
            return null;
        }

        public IReadOnlyList<GenerationResult> Results()
        {
            var timing = new GenerationTiming(Prefill, Steps.ToArray());
            return Enumerable.Range(0, Count).Select(i => new GenerationResult(tokens[i].ToArray(), reasons[i], stopStrings[i], timing)).ToArray();
        }

        public void Dispose()
        {
            sampler.Dispose();
            seen?.Dispose();
        }
    }
}

/// <summary>
/// Turns a stream of token ids into a stream of text for printing: after each token it returns the text that is
/// new and final. Text ending in U+FFFD is held back, since byte-level tokens can split a UTF-8 character and
/// the next token may complete it.
/// </summary>
public sealed class IncrementalDecoder
{
    readonly Func<IReadOnlyList<long>, string> decode;
    readonly List<long> tokens = new();
    int printed;

    public IncrementalDecoder(Func<IReadOnlyList<long>, string> decode) { this.decode = decode; }

    /// <summary>Adds a token; returns the newly completed text (possibly empty).</summary>
    public string Push(long token)
    {
        tokens.Add(token);
        string text = decode(tokens);
        int end = text.Length;
        while (end > printed && text[end - 1] == '\uFFFD') end--;
        if (end <= printed) return "";
        string fresh = text[printed..end];
        printed = end;
        return fresh;
    }

    /// <summary>Whatever is still held back (call at the end).</summary>
    public string Flush()
    {
        string text = decode(tokens);
        string rest = printed < text.Length ? text[printed..] : "";
        printed = text.Length;
        return rest;
    }
}
