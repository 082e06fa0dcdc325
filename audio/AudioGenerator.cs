// Sampling audio from an AudioModel, one sample at a time in recurrent mode (constant time and memory per sample,
// however long the clip grows), and the slow path that recomputes the whole convolution-mode forward for every new
// sample (what generation costs without a recurrent mode; kept for the speed comparison of bench/AudioBench).
//
// Both paths follow AudioModel's conventions: the first input is the start token (the zero class, silence), the
// logits after input t are the distribution of sample t + 1, and samples are drawn by the backbone's Sampler
// (temperature, top-k, top-p) from one seeded CPU generator per sequence, so a seed reproduces the same audio, and
// sequence i of a batch draws what it would draw alone with seed + i.
//
// Continuation: the prompt (a waveform at the model's sample rate) is quantised, then primed by stepping through
// [start, p_0, ..., p_{P-1}] (P + 1 recurrent steps from a zero state; the logits after the last are the distribution
// of sample P, equal to the convolution mode's last-position logits on the same inputs). The returned clip is the
// prompt exactly as given, followed by the decoded new samples.
//
// Shapes: b = number of sequences generated together; V = classes; P = prompt samples; S = new samples.
using System.Diagnostics;
using TorchSharp;
using Ssm.Backbone.Generation;
using static TorchSharp.torch;

namespace Ssm.Audio;

/// <summary>How to sample (transformers' names): temperature, top-k (0 = off), top-p (1 = off), seed (null = random).</summary>
public sealed record AudioGenerationOptions
{
    public double Temperature { get; init; } = 1.0;
    public int TopK { get; init; }
    public double TopP { get; init; } = 1.0;
    public ulong? Seed { get; init; }

    /// <summary>Samples between two progress reports.</summary>
    public int ProgressEvery { get; init; } = 500;

    public SamplingOptions Sampling => new(Temperature, TopK, TopP);
}

/// <summary>A progress report: phase "prime" (stepping through the prompt) or "generate".</summary>
/// <param name="Done">Samples done in this phase (per sequence).</param>
/// <param name="Total">Samples of this phase (per sequence).</param>
/// <param name="Seconds">Time since the phase began.</param>
public sealed record AudioGenerationProgress(string Phase, long Done, long Total, double Seconds)
{
    /// <summary>Samples per second per sequence (multiply by the batch for the total rate).</summary>
    public double SamplesPerSecond => Seconds > 0 ? Done / Seconds : 0;
}

/// <summary>Generated clips: waveforms and classes, prompt included, with the time each phase took.</summary>
/// <param name="Audio">b waveforms at <paramref name="SampleRate"/>: the prompt as given, then the new samples decoded.</param>
/// <param name="Classes">b class sequences: the quantised prompt, then the new samples.</param>
/// <param name="PromptSamples">P, the prompt's length (0 for unconditional generation).</param>
/// <param name="PrimeSeconds">Time spent priming on the prompt (and on the start token).</param>
/// <param name="GenerateSeconds">Time spent drawing the S new samples.</param>
public sealed record GeneratedAudio(float[][] Audio, long[][] Classes, int SampleRate, long PromptSamples, double PrimeSeconds, double GenerateSeconds)
{
    /// <summary>S, the new samples per sequence.</summary>
    public long NewSamples => Classes.Length == 0 ? 0 : Classes[0].Length - PromptSamples;

    /// <summary>New samples per second over the whole batch.</summary>
    public double SamplesPerSecond => GenerateSeconds > 0 ? NewSamples * Classes.Length / GenerateSeconds : 0;

    /// <summary>Writes clip <paramref name="index"/> as a 16-bit PCM WAV file (atomically).</summary>
    public void WriteWav(int index, string path) => Wav.Write(path, Audio[index], SampleRate, WavSampleFormat.Pcm16);
}

/// <summary>Unconditional generation and continuation for an <see cref="AudioModel"/> (see the file header).</summary>
public sealed class AudioGenerator(AudioModel model)
{
    /// <summary>CPU generation of up to this many clips at once runs on one libtorch thread.</summary>
    public const int SingleThreadBatch = 8;

    public AudioModel Model { get; } = model;

    /// <summary><paramref name="count"/> clips of <paramref name="samples"/> samples from the start token, recurrent mode.</summary>
    public GeneratedAudio Generate(int count, long samples, AudioGenerationOptions? options = null,
        Action<AudioGenerationProgress>? progress = null, CancellationToken cancel = default) =>
        Run(count, [], samples, options ?? new(), progress, cancel, recompute: false);

    /// <summary>
    /// <paramref name="count"/> continuations of <paramref name="prompt"/> (a waveform at the model's sample rate, in
    /// [-1, 1]) by <paramref name="samples"/> new samples each, recurrent mode.
    /// </summary>
    public GeneratedAudio Continue(float[] prompt, int count, long samples, AudioGenerationOptions? options = null,
        Action<AudioGenerationProgress>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Length == 0) throw new ArgumentException("the prompt is empty");
        return Run(count, prompt, samples, options ?? new(), progress, cancel, recompute: false);
    }

    /// <summary>
    /// The slow path: the same sampling, but every new sample's distribution comes from a convolution-mode forward over
    /// the whole sequence so far (start token, prompt and the samples drawn so far), so each sample costs more than
    /// the last. Draws what the recurrent path draws, up to rounding.
    /// </summary>
    public GeneratedAudio GenerateByRecompute(int count, long samples, float[]? prompt = null, AudioGenerationOptions? options = null,
        Action<AudioGenerationProgress>? progress = null, CancellationToken cancel = default) =>
        Run(count, prompt ?? [], samples, options ?? new(), progress, cancel, recompute: true);

    /// <summary>
    /// Recurrent priming: a zero state stepped through [start, p_0, ..., p_{P-1}] for prompt classes (b, P) int64 (P may
    /// be 0). Returns the state and the logits (b, V) of sample P.
    /// </summary>
    public (AudioModelState State, Tensor Logits) Prime(Tensor promptClasses, Action<AudioGenerationProgress>? progress = null, int progressEvery = 500)
    {
        if (promptClasses.dim() != 2) throw new ArgumentException($"prompt classes must be (b, P), got [{string.Join(", ", promptClasses.shape)}]");
        long b = promptClasses.size(0), p = promptClasses.size(1);
        var state = Model.AllocateState(b);
        try
        {
            var clock = Stopwatch.StartNew();
            using var prompt = promptClasses.to(Model.Device).to_type(ScalarType.Int64);       // (b P)
            Tensor logits;
            using (var start = torch.full(new[] { b }, Model.ZeroClass, ScalarType.Int64, Model.Device))
                logits = Model.Step(start, state).DetachFromDisposeScope();                   // (b V): sample 0
            for (long t = 0; t < p; t++)
            {
                using var scope = torch.NewDisposeScope();
                var next = Model.Step(prompt.select(1, t), state);                            // (b V): sample t + 1
                logits.Dispose();
                logits = next.DetachFromDisposeScope();
                if (progress is not null && ((t + 1) % progressEvery == 0 || t + 1 == p))
                    progress(new AudioGenerationProgress("prime", t + 1, p, clock.Elapsed.TotalSeconds));
            }
            return (state, logits);
        }
        catch
        {
            state.Dispose();
            throw;
        }
    }

    GeneratedAudio Run(int count, float[] prompt, long samples, AudioGenerationOptions o, Action<AudioGenerationProgress>? progress,
        CancellationToken cancel, bool recompute)
    {
        if (count < 1) throw new ArgumentException($"the number of clips must be at least 1, got {count}");
        if (samples < 1) throw new ArgumentException($"the number of samples to generate must be at least 1, got {samples}");
        if (o.ProgressEvery < 1) throw new ArgumentException($"progress interval must be at least 1, got {o.ProgressEvery}");
        using var sampler = new Sampler(o.Sampling, count, o.Seed);
        var device = Model.Device;
        long p = prompt.Length;

        using var noGrad = torch.no_grad();
        using var promptWave = torch.tensor(prompt, new long[] { 1, p });
        using var promptClasses = Model.Encode(promptWave).expand(count, p).contiguous();        // (b P)
        // Every class of every sequence, start token first: (b, 1 + P + S) on the model's device.
        using var all = torch.full(new[] { (long)count, 1 + p + samples }, Model.ZeroClass, ScalarType.Int64, device);
        if (p > 0) using (var dst = all.narrow(1, 1, p)) dst.copy_(promptClasses);

        Model.Model.eval();
        // Recurrent steps of a few clips are many tiny ops: one intra-op thread is several times faster on the CPU
        // (see TorchThreads); larger batches keep the thread pool.
        using var threads = Ssm.Backbone.Native.TorchThreads.Single(device.type == DeviceType.CPU && count <= SingleThreadBatch);
        var clock = Stopwatch.StartNew();
        AudioModelState? state = null;
        Tensor logits;
        if (recompute)
        {
            logits = NextLogitsByForward(all, 1 + p);
        }
        else
        {
            (state, logits) = Prime(promptClasses, progress, o.ProgressEvery);
        }
        double primeSeconds = clock.Elapsed.TotalSeconds;
        clock.Restart();
        try
        {
            for (long t = 0; t < samples; t++)
            {
                cancel.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                var next = sampler.Next(logits);                                              // (b)
                using (var slot = all.select(1, 1 + p + t)) slot.copy_(next);
                if (t + 1 < samples)
                {
                    var nextLogits = recompute ? NextLogitsByForward(all, 1 + p + t + 1) : Model.Step(next, state!);   // (b V)
                    logits.Dispose();
                    logits = nextLogits.DetachFromDisposeScope();
                }
                if (progress is not null && ((t + 1) % o.ProgressEvery == 0 || t + 1 == samples))
                    progress(new AudioGenerationProgress("generate", t + 1, samples, clock.Elapsed.TotalSeconds));
            }
        }
        finally
        {
            logits.Dispose();
            state?.Dispose();
        }
        double generateSeconds = clock.Elapsed.TotalSeconds;

        using var classes = all.narrow(1, 1, p + samples).cpu();                                  // (b P+S)
        using var generated = classes.narrow(1, p, samples);
        using var wave = Model.Decode(generated).contiguous();                                    // (b S) float32
        var audio = new float[count][];
        var ids = new long[count][];
        for (int i = 0; i < count; i++)
        {
            using var row = classes[i];
            ids[i] = row.data<long>().ToArray();
            using var w = wave[i];
            audio[i] = [.. prompt, .. w.data<float>().ToArray()];
        }
        return new GeneratedAudio(audio, ids, Model.SampleRate, p, primeSeconds, generateSeconds);
    }

    /// <summary>The slow path's logits (b, V): a full forward over the first <paramref name="length"/> inputs, last position.</summary>
    Tensor NextLogitsByForward(Tensor all, long length)
    {
        using var scope = torch.NewDisposeScope();
        var logits = Model.Model.call(all.narrow(1, 0, length));                                 // (b length V)
        return logits.select(1, length - 1).contiguous().MoveToOuterDisposeScope();               // (b V)
    }
}
