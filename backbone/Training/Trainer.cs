// The one training loop of the suite (every domain trains through it): AdamW with decoupled weight decay, linear
// warm-up + cosine decay, gradient accumulation and clipping, a progress bar, periodic evaluation, atomic checkpoints
// and exact resume.
//
// Exact resume: everything random in a step is a function of (seed, step): the trainer re-seeds torch's generator
// and hands the step a System.Random seeded the same way, and batches are chosen by the step number (EpochSampler).
// A checkpoint holds the weights, the AdamW moments and the step, so a run killed after checkpoint k and resumed
// continues with the same data order and ends with the same parameters as a run that was never interrupted.
//
// Output folder (Hugging Face Trainer's layout):
//   OUT/checkpoint-00000500/{config.json, model.safetensors, optimizer.safetensors, trainer_state.json}
//   OUT/{config.json, model.safetensors}      the final model;   OUT/log.jsonl   one JSON line per log/eval
// A checkpoint folder is written under a temporary name and renamed when complete, so a crash never leaves a torn one.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using static TorchSharp.torch;

namespace Ssm.Backbone.Training;

public sealed record TrainOptions
{
    public long Steps { get; init; } = 1000;
    public double LearningRate { get; init; } = 1e-3;
    public double WeightDecay { get; init; } = 0.1;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double Eps { get; init; } = 1e-8;
    public long WarmupSteps { get; init; }
    /// <summary>Which parameters get weight decay, by state-dict name (null: AdamW.DefaultDecay).</summary>
    public Func<string, Tensor, bool>? Decay { get; init; }
    /// <summary>The cosine schedule ends at this fraction of the peak rate.</summary>
    public double MinLrRatio { get; init; } = 0.1;
    /// <summary>Global gradient-norm clip (0: none).</summary>
    public double GradClip { get; init; } = 1.0;
    /// <summary>Micro-batches per optimizer step (gradient accumulation).</summary>
    public int Accumulation { get; init; } = 1;
    public long EvalEvery { get; init; }
    public long CheckpointEvery { get; init; }
    public int KeepCheckpoints { get; init; } = 2;
    public long LogEvery { get; init; } = 50;
    public long Seed { get; init; }
    /// <summary>Where checkpoints, the final model and the log go (null: nothing is written).</summary>
    public string? OutputDir { get; init; }
    /// <summary>Continue from the newest checkpoint in <see cref="OutputDir"/>, if there is one.</summary>
    public bool Resume { get; init; }
    /// <summary>What a step's unit count measures, for the rate on the progress bar (samples, bytes, tokens...).</summary>
    public string Unit { get; init; } = "samples";
    /// <summary>How the running loss is shown (e.g. converted to bits).</summary>
    public Func<double, string>? FormatLoss { get; init; }
}

/// <summary>One micro-batch: returns its mean loss (a scalar with a graph) and how many units it covered.</summary>
public delegate (Tensor Loss, long Units) TrainStep(long step, int micro, Random rng);

public sealed record TrainResult(long Steps, double LastLoss, IReadOnlyDictionary<string, double> LastEval, string? ResumedFrom);

public sealed class Trainer
{
    readonly nn.Module _model;
    readonly TrainOptions _o;
    readonly TrainStep _step;
    readonly Func<JsonNode> _config;

    /// <summary>Metrics on held-out data, run every EvalEvery steps and at the end (model in eval mode, no grad).</summary>
    public Func<long, IReadOnlyDictionary<string, double>>? Evaluate { get; init; }

    /// <summary>Called after every optimizer step (e.g. an EMA of the weights).</summary>
    public Action<long>? AfterStep { get; init; }

    /// <summary>Extra tensors saved in each checkpoint and the final folder (extra.safetensors), restored on resume.</summary>
    public Func<Dictionary<string, Tensor>>? ExtraState { get; init; }
    public Action<IReadOnlyDictionary<string, Tensor>>? LoadExtraState { get; init; }

    /// <summary>Called with each checkpoint folder before it is published (write sample images etc.).</summary>
    public Action<long, string>? OnCheckpoint { get; init; }

    public AdamW Optimizer { get; }

    readonly bool _onCuda;

    /// <param name="config">The model's config.json content (written with every checkpoint; a resume checks it matches).</param>
    public Trainer(nn.Module model, TrainOptions options, TrainStep step, Func<JsonNode> config)
    {
        _model = model; _o = options; _step = step; _config = config;
        if (options.Steps <= 0) throw new ArgumentOutOfRangeException(nameof(options), "Steps must be positive");
        if (options.Accumulation <= 0) throw new ArgumentOutOfRangeException(nameof(options), "Accumulation must be positive");
        _onCuda = model.parameters().Any(p => p.device_type == DeviceType.CUDA);
        Optimizer = new AdamW(model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), options.WeightDecay,
            options.Beta1, options.Beta2, options.Eps, options.Decay);
    }

    /// <summary>A seed for (run seed, step): different steps get unrelated streams.</summary>
    public static int StepSeed(long seed, long step)
    {
        // splitmix64's finaliser over a mix of the two: nearby (seed, step) pairs give unrelated seeds.
        ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)step * 0xBF58476D1CE4E5B9UL + 1);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (int)((z ^ (z >> 31)) >> 33);
    }

    public TrainResult Run(CancellationToken cancel = default)
    {
        long start = 0;
        string? resumedFrom = null;
        if (_o.Resume && _o.OutputDir is not null && LatestCheckpoint(_o.OutputDir) is { } ck)
        {
            start = LoadCheckpoint(ck);
            resumedFrom = ck;
            Console.Error.WriteLine($"resuming from {ck} (step {start})");
        }
        IReadOnlyDictionary<string, double> lastEval = new Dictionary<string, double>();
        double ema = double.NaN, lastLoss = double.NaN;
        _model.train();
        using var bar = new ProgressBar("train", _o.Steps, _o.Unit.Length > 0 ? "step" : "it", start);
        var unitClock = System.Diagnostics.Stopwatch.StartNew();
        long unitsSinceLog = 0;
        for (long s = start; s < _o.Steps; s++)
        {
            if (cancel.IsCancellationRequested)
            {
                if (_o.OutputDir is not null && s > start) SaveCheckpoint(s);
                Console.Error.WriteLine($"\nstopped at step {s}" + (_o.OutputDir is not null ? "; resume with the same output folder" : ""));
                return new TrainResult(s, lastLoss, lastEval, resumedFrom);
            }
            torch.manual_seed(StepSeed(_o.Seed, s));
            var rng = new Random(StepSeed(_o.Seed ^ 0x5DEECE66DL, s));
            double lr = LrSchedule.WarmupCosine(s, _o.Steps, _o.WarmupSteps, _o.LearningRate, _o.MinLrRatio);
            Optimizer.ZeroGrad();
            double lossSum = 0;
            for (int m = 0; m < _o.Accumulation; m++)
            {
                using var scope = torch.NewDisposeScope();
                var (loss, units) = _step(s, m, rng);
                if (loss.numel() != 1) throw new InvalidOperationException("the train step must return a scalar loss");
                (_o.Accumulation == 1 ? loss : loss / _o.Accumulation).backward();
                lossSum += loss.item<float>();
                unitsSinceLog += units;
            }
            lastLoss = lossSum / _o.Accumulation;
            if (!double.IsFinite(lastLoss))
                throw new InvalidOperationException($"loss is {lastLoss} at step {s}; lower the learning rate or check the data");
            double gradNorm = Optimizer.ClipGradNorm(_o.GradClip);
            Optimizer.Step(lr);
            // On CUDA, autograd runs custom functions' backward on a device thread outside any dispose scope; the
            // tensor wrappers TorchSharp creates there are freed only by the GC finaliser, which the GC does not run
            // for device memory it cannot see. Collect regularly so device memory stays flat.
            if (_onCuda && s % 4 == 3) { GC.Collect(); GC.WaitForPendingFinalizers(); }
            AfterStep?.Invoke(s + 1);
            ema = double.IsNaN(ema) ? lastLoss : 0.98 * ema + 0.02 * lastLoss;
            long done = s + 1;
            double unitRate = unitsSinceLog / Math.Max(unitClock.Elapsed.TotalSeconds, 1e-9);
            bar.Report(done, $"loss {Show(ema)} lr {lr:0.0e+0} {Rate(unitRate)} {_o.Unit}/s");
            if (_o.LogEvery > 0 && done % _o.LogEvery == 0)
            {
                Log(new JsonObject { ["step"] = done, ["loss"] = lastLoss, ["loss_ema"] = ema, ["lr"] = lr, ["grad_norm"] = gradNorm, [$"{_o.Unit}_per_s"] = unitRate });
                unitsSinceLog = 0; unitClock.Restart();
            }
            if (Evaluate is not null && ((_o.EvalEvery > 0 && done % _o.EvalEvery == 0) || done == _o.Steps))
            {
                lastEval = RunEval(done);
                Console.Error.WriteLine($"\nstep {done}: " + string.Join(", ", lastEval.Select(kv => $"{kv.Key} {kv.Value.ToString("0.0000", CultureInfo.InvariantCulture)}")));
                var entry = new JsonObject { ["step"] = done };
                foreach (var (k, v) in lastEval) entry[k] = v;
                Log(entry);
            }
            if (_o.OutputDir is not null && _o.CheckpointEvery > 0 && done % _o.CheckpointEvery == 0 && done < _o.Steps) SaveCheckpoint(done);
        }
        if (_o.OutputDir is not null)
        {
            SaveCheckpoint(_o.Steps);
            ModelFolder.Save(_o.OutputDir, _model, _config());
            if (ExtraState is not null) SafeTensors.Save(Path.Combine(_o.OutputDir, "extra.safetensors"), ExtraState());
        }
        return new TrainResult(_o.Steps, lastLoss, lastEval, resumedFrom);
    }

    IReadOnlyDictionary<string, double> RunEval(long step)
    {
        _model.eval();
        try { using var noGrad = torch.no_grad(); return Evaluate!(step); }
        finally { _model.train(); }
    }

    string Show(double loss) => _o.FormatLoss?.Invoke(loss) ?? loss.ToString("0.0000", CultureInfo.InvariantCulture);

    static string Rate(double r) => r >= 1e4 ? (r / 1e3).ToString("0.0", CultureInfo.InvariantCulture) + "k" : r.ToString("0", CultureInfo.InvariantCulture);

    void Log(JsonObject entry)
    {
        if (_o.OutputDir is null) return;
        Directory.CreateDirectory(_o.OutputDir);
        File.AppendAllText(Path.Combine(_o.OutputDir, "log.jsonl"), entry.ToJsonString() + "\n");
    }

    public static string CheckpointName(long step) => $"checkpoint-{step:D8}";

    /// <summary>The newest complete checkpoint folder under <paramref name="outputDir"/>, or null.</summary>
    public static string? LatestCheckpoint(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return null;
        return Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (Dir: d, Ok: long.TryParse(Path.GetFileName(d)["checkpoint-".Length..], NumberStyles.None, CultureInfo.InvariantCulture, out long n), Step: n))
            .Where(x => x.Ok && File.Exists(Path.Combine(x.Dir, "trainer_state.json")))
            .OrderByDescending(x => x.Step).Select(x => x.Dir).FirstOrDefault();
    }

    void SaveCheckpoint(long step)
    {
        string outDir = _o.OutputDir!;
        string final = Path.Combine(outDir, CheckpointName(step));
        if (Directory.Exists(final)) return;
        string tmp = Path.Combine(outDir, $".{CheckpointName(step)}.{Guid.NewGuid():N}.tmp");
        try
        {
            ModelFolder.Save(tmp, _model, _config());
            SafeTensors.Save(Path.Combine(tmp, "optimizer.safetensors"), Optimizer.StateDict());
            if (ExtraState is not null) SafeTensors.Save(Path.Combine(tmp, "extra.safetensors"), ExtraState());
            var state = new JsonObject
            {
                ["global_step"] = step, ["optimizer_steps"] = Optimizer.StepCount, ["seed"] = _o.Seed, ["max_steps"] = _o.Steps,
                ["learning_rate"] = _o.LearningRate, ["accumulation"] = _o.Accumulation,
            };
            OnCheckpoint?.Invoke(step, tmp);
            AtomicFile.WriteAllText(Path.Combine(tmp, "trainer_state.json"), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            Directory.Move(tmp, final);
        }
        catch
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
            throw;
        }
        var old = Directory.GetDirectories(outDir, "checkpoint-*").Order(StringComparer.Ordinal).ToList();
        for (int i = 0; i < old.Count - Math.Max(1, _o.KeepCheckpoints); i++) Directory.Delete(old[i], recursive: true);
    }

    long LoadCheckpoint(string dir)
    {
        var saved = ModelFolder.ReadConfig(dir);
        var now = _config();
        if (!JsonNode.DeepEquals(saved, now))
            throw new InvalidDataException($"{dir}: the checkpoint was made with a different model config; use a new output folder or the same settings");
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "trainer_state.json")))!.AsObject();
        long step = state["global_step"]!.GetValue<long>();
        long seed = state["seed"]!.GetValue<long>();
        if (seed != _o.Seed) throw new InvalidDataException($"{dir}: the checkpoint was made with seed {seed}, this run has seed {_o.Seed}; resume with the same seed");
        long maxSteps = state["max_steps"]!.GetValue<long>();
        if (maxSteps != _o.Steps)
            throw new InvalidDataException($"{dir}: the checkpoint belongs to a run of {maxSteps} steps, this one has {_o.Steps}; " +
                "resume with the same length (the learning-rate schedule depends on it) or start a new output folder");
        ModelFolder.LoadWeights(dir, _model);
        var opt = SafeTensors.Load(Path.Combine(dir, "optimizer.safetensors"));
        try { Optimizer.LoadStateDict(opt, state["optimizer_steps"]!.GetValue<long>()); }
        finally { foreach (var t in opt.Values) t.Dispose(); }
        string extra = Path.Combine(dir, "extra.safetensors");
        if (LoadExtraState is not null && File.Exists(extra))
        {
            var e = SafeTensors.Load(extra);
            try { LoadExtraState(e); } finally { foreach (var t in e.Values) t.Dispose(); }
        }
        return step;
    }
}

/// <summary>
/// Batches as a pure function of the step: the index stream is the concatenation of one random permutation of the
/// data per epoch (seeded by seed and epoch), and global batch g takes positions [g B, (g + 1) B) of it.
/// </summary>
public sealed class EpochSampler
{
    readonly int _n, _batch;
    readonly long _seed;
    long _cachedEpoch = -1;
    int[] _perm = [];

    public EpochSampler(int count, int batchSize, long seed)
    {
        if (count <= 0) throw new ArgumentOutOfRangeException(nameof(count), "no data");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize));
        _n = count; _batch = batchSize; _seed = seed;
    }

    public double Epoch(long globalBatch) => (double)globalBatch * _batch / _n;

    public int[] Batch(long globalBatch)
    {
        var idx = new int[_batch];
        long pos = globalBatch * _batch;
        for (int i = 0; i < _batch; i++, pos++)
        {
            long epoch = pos / _n;
            if (epoch != _cachedEpoch)
            {
                _perm = Enumerable.Range(0, _n).ToArray();
                new Random(Trainer.StepSeed(_seed, epoch)).Shuffle(_perm);
                _cachedEpoch = epoch;
            }
            idx[i] = _perm[pos % _n];
        }
        return idx;
    }
}
