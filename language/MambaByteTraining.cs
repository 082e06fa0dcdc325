// Training MambaByte on the prepared English byte corpus with the backbone's Trainer: random windows of L + 1 bytes
// (ByteWindowSampler, a pure function of seed and step, so --resume continues with the same data order), next-byte
// cross-entropy, validation in bits per byte, and a final Hugging Face style folder that ssm-text loads directly.
using System.Globalization;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.Models;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Language;

public sealed record MambaByteTrainOptions
{
    public string DataDir { get; init; } = ByteCorpus.DefaultRelativeDirectory;
    public required string OutputDir { get; init; }
    public MambaLMConfig Config { get; init; } = MambaByte.Small;
    public long Steps { get; init; } = 3000;
    public int BatchSize { get; init; } = 16;
    public int Accumulation { get; init; } = 1;
    public int SeqLen { get; init; } = 1024;
    public double LearningRate { get; init; } = 2e-3;
    public long WarmupSteps { get; init; } = 200;
    public double WeightDecay { get; init; } = 0.1;
    public double GradClip { get; init; } = 1.0;
    public Precision Precision { get; init; } = Precision.Fp32;
    public long EvalEvery { get; init; } = 500;
    /// <summary>Validation bytes scored at each evaluation (0: the whole split).</summary>
    public int EvalBytes { get; init; } = 262144;
    public long CheckpointEvery { get; init; } = 250;
    public bool Resume { get; init; }
    public long Seed { get; init; }
    /// <summary>Called after each optimizer step with the number of steps done (progress hooks, tests).</summary>
    public Action<long>? AfterStep { get; init; }
}

public static class MambaByteTraining
{
    public static TrainResult Train(MambaByteTrainOptions o, Device device, CancellationToken cancel = default) =>
        Train(ByteCorpus.Load(o.DataDir), o, device, cancel);

    public static TrainResult Train(ByteCorpus corpus, MambaByteTrainOptions o, Device device, CancellationToken cancel = default)
    {
        torch.manual_seed(o.Seed);
        var model = MixedPrecision.MoveTo(new MambaLM(o.Config), device);
        MixedPrecision.Apply(model, o.Precision);
        var sampler = new ByteWindowSampler(corpus.Train, o.SeqLen, o.BatchSize, o.Seed);
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"MambaByte {o.Config.NLayer} x {o.Config.DModel}: {model.parameters().Sum(p => p.numel()):N0} parameters; train {corpus.Train.Length:N0} bytes " +
            $"({sampler.WindowsPerEpoch:N0} windows of {o.SeqLen}), {o.Steps} steps = {sampler.Epoch(o.Steps * o.Accumulation):0.00} epochs, {o.Precision} on {device}"));
        var options = new TrainOptions
        {
            Steps = o.Steps, LearningRate = o.LearningRate, WarmupSteps = o.WarmupSteps, WeightDecay = o.WeightDecay, GradClip = o.GradClip,
            Accumulation = o.Accumulation, EvalEvery = o.EvalEvery, CheckpointEvery = o.CheckpointEvery, OutputDir = o.OutputDir,
            Resume = o.Resume, Seed = o.Seed, Unit = "bytes", FormatLoss = MambaByte.FormatBits, LogEvery = 50,
        };
        var trainer = new Trainer(model, options,
            (step, micro, _) =>
            {
                var batch = sampler.Batch(step * o.Accumulation + micro, device);
                return (MambaByte.Loss(model, batch), (long)o.BatchSize * o.SeqLen);
            },
            () => JsonNode.Parse(HfMamba.ConfigJson(o.Config))!)
        {
            AfterStep = o.AfterStep,
            Evaluate = _ => new Dictionary<string, double> { ["valid_bpb"] = ValidBitsPerByte(model, corpus.Valid, o.SeqLen, o.EvalBytes) },
        };
        var result = trainer.Run(cancel);
        if (!cancel.IsCancellationRequested)
        {
            // The final folder is an HF MambaForCausalLM folder plus the note that its tokenizer is bytes.
            TextModel.SaveByteModel(o.OutputDir, model, o.SeqLen);
        }
        return result;
    }

    /// <summary>Bits per byte over the first <paramref name="maxBytes"/> bytes (0: all) of a split, windows as in
    /// <see cref="TextScoring.Score"/> (the one scoring loop; the model's device is used).</summary>
    public static double ValidBitsPerByte(MambaLM model, byte[] data, int window, int maxBytes)
    {
        int n = maxBytes > 0 ? Math.Min(maxBytes, data.Length) : data.Length;
        var (bits, count) = MambaByte.Score(model, data.AsSpan(0, n), window);
        return count == 0 ? double.NaN : bits / count;
    }
}
