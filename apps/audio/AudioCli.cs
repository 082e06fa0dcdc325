// ssm-audio: raw-waveform generation with SaShiMi-style state-space models (thin: parse the command line, call
// Ssm.Audio, print). Results go to stdout, progress and notes to stderr; user errors are one line "error: ..." with a
// non-zero exit (Ssm.Apps.Cli.Guard: 1 bad input or a failed run, 2 bad usage, 70 libtorch, 130 interrupted).
//   generate          unconditional clips from the start token, recurrent mode (constant time and memory per sample)
//   continue          prime the recurrent state with a real recording, then generate its continuations
//   train             trains a sashimi (S4D or Mamba blocks) or lstm next-sample model on a prepared folder
//   eval              NLL in bits per sample of WAV files / folders, or of a data split
//   baselines         the mu-law unigram entropy of a data set's test split (fitted on its train split)
//   judge             IS, mIS, AM and classifier-feature FID of a folder of generated clips against the test split
//   train-classifier  trains the spoken-digit SSM classifier that `judge` uses
//   info              a model's (or a preset's) type, size, config and audio settings
//   doctor            the backend and the device self-test (shared with every ssm-* CLI)
// The default generator (models/spoken-digits-sashimi) and the judge classifier (models/spoken-digits-classifier)
// are copied next to the executable at build (see ssm-audio.csproj).
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ssm.Audio;
using Ssm.Backbone;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Apps.Audio;

public static class AudioCli
{
    public const string DefaultModelName = "spoken-digits-sashimi", DefaultJudgeName = "spoken-digits-classifier";

    /// <summary>Where the embedded default generator is copied at build and publish (see ssm-audio.csproj).</summary>
    public static string DefaultModelDir => Path.Combine(AppContext.BaseDirectory, "models", DefaultModelName);

    /// <summary>Where the embedded judge classifier is copied.</summary>
    public static string DefaultJudgeDir => Path.Combine(AppContext.BaseDirectory, "models", DefaultJudgeName);

    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Runs the CLI on Console.Out / Console.Error; returns the exit code.</summary>
    /// <param name="defaultModelDir">The default generator (null: <see cref="DefaultModelDir"/>).</param>
    /// <param name="defaultJudgeDir">The default judge classifier (null: <see cref="DefaultJudgeDir"/>).</param>
    public static int Run(string[] args, string? defaultModelDir = null, string? defaultJudgeDir = null)
    {
        var defaults = new Defaults(defaultModelDir ?? DefaultModelDir, defaultJudgeDir ?? DefaultJudgeDir);
        var root = new RootCommand(
            "Raw-audio generation with state-space models: SaShiMi (a causal multi-scale U-Net of S4D or Mamba blocks over " +
            "8-bit mu-law samples), trained with the suite's trainer, generating one sample at a time in recurrent mode. " +
            $"Without --model the embedded {DefaultModelName} (16 kHz spoken digits) is used.");
        root.Subcommands.Add(GenerateCommand(defaults));
        root.Subcommands.Add(ContinueCommand(defaults));
        root.Subcommands.Add(TrainCommand());
        root.Subcommands.Add(EvalCommand(defaults));
        root.Subcommands.Add(BaselinesCommand());
        root.Subcommands.Add(JudgeCommand(defaults));
        root.Subcommands.Add(TrainClassifierCommand());
        root.Subcommands.Add(InfoCommand(defaults));
        root.Subcommands.Add(Doctor.Create());
        return Cli.Invoke(root, args);
    }

    sealed record Defaults(string Model, string Judge);

    // ------------------------------------------------------------------ shared pieces

    static Option<string?> ModelOption() => new("--model", "-m")
    {
        Description = $"audio model folder (config.json + model.safetensors); default: the embedded {DefaultModelName}",
        HelpName = "DIR",
    };

    static Option<string?> DataOption(string what = "prepared data folder") => new("--data")
    {
        Description = $"{what} (data/spoken-digits.sh, data/piano.sh); default: data/cache/spoken-digits in the current folder or above",
        HelpName = "DIR",
    };

    static string ResolveFolder(string? given, string defaultDir, string what, string howToMake)
    {
        if (given is not null) return given;
        if (File.Exists(Path.Combine(defaultDir, ModelFolder.ConfigFile)) && File.Exists(Path.Combine(defaultDir, ModelFolder.WeightsFile)))
            return defaultDir;
        throw new FileNotFoundException($"no {what} is installed (looked in {defaultDir}); pass its folder, or train one: {howToMake}");
    }

    static string ResolveModel(string? given, Defaults d) => ResolveFolder(given, d.Model, "default audio model",
        $"data/spoken-digits.sh && ssm-audio train --preset small --out models/{DefaultModelName} (a build copies models/{DefaultModelName} next to the app)");

    static string ResolveJudge(string? given, Defaults d) => ResolveFolder(given, d.Judge, "judge classifier",
        $"ssm-audio train-classifier --out models/{DefaultJudgeName}");

    /// <summary>The data set folder: --data (its dataset.json names the script that made it), else the spoken-digit default.</summary>
    static AudioDataset OpenData(string? dir) => dir is null ? AudioDataset.OpenSpokenDigits() : AudioDataset.Open(dir);

    /// <summary>A split as one batch of clips: fixed-length clips as they are, long recordings cut into windows.</summary>
    static AudioBatch LoadSplit(AudioDataset data, string split, int sampleRate, double windowSeconds) =>
        data.ClipSeconds is double s ? data.LoadSplit(split, sampleRate, s) : data.LoadChunks(split, sampleRate, windowSeconds);

    static IEnumerable<KeyValuePair<string, string>> ParseSets(string[]? sets) => Cli.ParseSets(sets, "n_layers=4");

    static string Num(double v, string format = "0.##") => v.ToString(format, Inv);

    static JsonArray Array<T>(IEnumerable<T> items) => new(items.Select(i => (JsonNode?)JsonValue.Create(i)).ToArray());

    // ------------------------------------------------------------------ generate / continue

    sealed record SamplingArgs(Option<double> Temperature, Option<int> TopK, Option<double> TopP, Option<ulong?> Seed);

    static SamplingArgs SamplingOptions() => new(
        new Option<double>("--temperature", "-t") { Description = "softmax temperature (1: the model's distribution; lower: safer, quieter audio)", DefaultValueFactory = _ => 1.0 },
        new Option<int>("--top-k") { Description = "sample only among the k most likely classes (0: all 256)", DefaultValueFactory = _ => 0 },
        new Option<double>("--top-p") { Description = "nucleus sampling: the smallest set of classes with this much probability (1: all)", DefaultValueFactory = _ => 1.0 },
        new Option<ulong?>("--seed") { Description = "random seed (the same seed, settings and model give the same audio); default: a fresh one, printed" });

    static AudioGenerationOptions Sampling(ParseResult pr, SamplingArgs s)
    {
        double t = pr.GetValue(s.Temperature), p = pr.GetValue(s.TopP);
        int k = pr.GetValue(s.TopK);
        if (!double.IsFinite(t) || t <= 0) throw new UsageException($"--temperature must be positive, got {t.ToString(Inv)}");
        if (k < 0) throw new UsageException($"--top-k must be >= 0, got {k}");
        if (!(p > 0 && p <= 1)) throw new UsageException($"--top-p must be in (0, 1], got {p.ToString(Inv)}");
        ulong seed = pr.GetValue(s.Seed) ?? (ulong)Random.Shared.NextInt64(1, int.MaxValue);
        return new AudioGenerationOptions { Temperature = t, TopK = k, TopP = p, Seed = seed, ProgressEvery = 250 };
    }

    static Command GenerateCommand(Defaults defaults)
    {
        var seconds = new Option<double>("--seconds", "-s") { Description = "length of each clip in seconds", DefaultValueFactory = _ => 1.0 };
        var n = new Option<int>("--n") { HelpName = "N", Description = "number of clips", DefaultValueFactory = _ => 4 };
        var output = new Option<string>("--out", "-o") { Description = "output folder for the WAV files (16-bit PCM)", DefaultValueFactory = _ => "generated", HelpName = "DIR" };
        var s = SamplingOptions();
        var (model, device, batch, spectrogram, prefix, json) = CommonGenerationOptions();
        var cmd = new Command("generate", "Generate clips from scratch, one sample at a time in recurrent mode; writes DIR/PREFIX-NNNN.wav (and .png spectrograms).")
        {
            seconds, n, output, s.Temperature, s.TopK, s.TopP, s.Seed, model, device, batch, spectrogram, prefix, json,
        };
        cmd.SetAction(pr => Cli.Guard(() => Generate(defaults, pr, null, 0, pr.GetValue(seconds), pr.GetValue(n), pr.GetValue(output)!,
            Sampling(pr, s), pr.GetValue(model), pr.GetValue(device)!, pr.GetValue(batch), pr.GetValue(spectrogram), pr.GetValue(prefix)!, pr.GetValue(json))));
        return cmd;
    }

    static Command ContinueCommand(Defaults defaults)
    {
        var prompt = new Argument<string>("PROMPT.wav") { Description = "the recording to continue (any WAV format; mixed to mono and resampled to the model's rate)" };
        var promptSeconds = new Option<double>("--prompt-seconds") { Description = "use only the first S seconds of the prompt (0: all of it)", DefaultValueFactory = _ => 0 };
        var seconds = new Option<double>("--seconds", "-s") { Description = "seconds of new audio after the prompt", DefaultValueFactory = _ => 1.0 };
        var n = new Option<int>("--n") { HelpName = "N", Description = "number of continuations", DefaultValueFactory = _ => 4 };
        var output = new Option<string>("--out", "-o") { Description = "output folder; each file holds the prompt followed by its continuation", DefaultValueFactory = _ => "continued", HelpName = "DIR" };
        var s = SamplingOptions();
        var (model, device, batch, spectrogram, prefix, json) = CommonGenerationOptions();
        var cmd = new Command("continue", "Prime the model's recurrent state with a real recording, then generate continuations of it.")
        {
            prompt, promptSeconds, seconds, n, output, s.Temperature, s.TopK, s.TopP, s.Seed, model, device, batch, spectrogram, prefix, json,
        };
        cmd.SetAction(pr => Cli.Guard(() => Generate(defaults, pr, pr.GetValue(prompt)!, pr.GetValue(promptSeconds), pr.GetValue(seconds), pr.GetValue(n),
            pr.GetValue(output)!, Sampling(pr, s), pr.GetValue(model), pr.GetValue(device)!, pr.GetValue(batch), pr.GetValue(spectrogram), pr.GetValue(prefix)!, pr.GetValue(json))));
        return cmd;
    }

    static (Option<string?>, Option<string>, Option<int>, Option<bool>, Option<string>, Option<bool>) CommonGenerationOptions() => (
        ModelOption(), Cli.DeviceOption(),
        new Option<int>("--batch-size", "--batch") { Description = "clips generated together (one recurrent state each)", DefaultValueFactory = _ => 64 },
        new Option<bool>("--spectrogram") { Description = "also write a PNG spectrogram of each clip (DIR/PREFIX-NNNN.png)" },
        new Option<string>("--prefix") { Description = "file-name prefix", DefaultValueFactory = _ => "sample" },
        Cli.JsonOption("the written files and the speed"));

    static int Generate(Defaults defaults, ParseResult pr, string? promptPath, double promptSeconds, double seconds, int n, string outDir,
        AudioGenerationOptions sampling, string? modelDir, string device, int batch, bool spectrogram, string prefix, bool json)
    {
        if (!double.IsFinite(seconds) || seconds <= 0) throw new UsageException($"--seconds must be positive, got {seconds.ToString(Inv)}");
        if (n < 1) throw new UsageException($"--n must be at least 1, got {n}");
        if (batch < 1) throw new UsageException($"--batch-size must be at least 1, got {batch}");
        if (!double.IsFinite(promptSeconds) || promptSeconds < 0) throw new UsageException($"--prompt-seconds must be >= 0, got {promptSeconds.ToString(Inv)}");
        if (prefix.Length == 0 || prefix.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0)
            throw new UsageException($"--prefix '{prefix}' is not a valid file-name prefix");
        if (promptPath is not null && !File.Exists(promptPath)) throw new FileNotFoundException($"{promptPath}: no such file");

        var dev = Devices.Resolve(device, Console.Error);
        string dir = ResolveModel(modelDir, defaults);
        using var model = AudioModel.Load(dir, dev);
        float[]? prompt = null;
        if (promptPath is not null)
        {
            var info = Wav.Probe(promptPath);
            if (info.SampleRate != model.SampleRate)
                Console.Error.WriteLine($"note: {promptPath} is at {info.SampleRate} Hz; resampling to the model's {model.SampleRate} Hz");
            prompt = Wav.ReadMono(promptPath, model.SampleRate);
            if (promptSeconds > 0) prompt = prompt.AsSpan(0, (int)Math.Min(prompt.Length, Math.Round(promptSeconds * model.SampleRate))).ToArray();
            if (prompt.Length == 0) throw new InvalidDataException($"{promptPath}: the prompt holds no samples");
        }
        long samples = (long)Math.Round(seconds * model.SampleRate);
        if (samples < 1) throw new UsageException($"--seconds {seconds.ToString(Inv)} is less than one sample at {model.SampleRate} Hz");
        Directory.CreateDirectory(outDir);

        var generator = new AudioGenerator(model);
        var files = new List<string>();
        double genSeconds = 0, primeSeconds = 0;
        long newSamples = 0;
        long perClip = samples + (prompt is null ? 0 : prompt.Length);
        using (var bar = new ProgressBar(prompt is null ? "generate" : "continue", n * perClip, "samples"))
        {
            for (int first = 0; first < n; first += batch)
            {
                int count = Math.Min(batch, n - first);
                long done = (long)first * perClip;
                // Each batch gets its own seed (seed + batch index) so a clip depends on --seed and --batch-size only.
                var o = sampling with { Seed = sampling.Seed + (ulong)(first / batch) };
                void Progress(AudioGenerationProgress p) =>
                    bar.Report(done + count * (p.Phase == "prime" ? p.Done : (prompt?.Length ?? 0) + p.Done),
                        $"{Num(p.SamplesPerSecond * count, "0")} samples/s ({p.Phase})");
                var result = prompt is null
                    ? generator.Generate(count, samples, o, Progress, Cli.Interrupt)
                    : generator.Continue(prompt, count, samples, o, Progress, Cli.Interrupt);
                genSeconds += result.GenerateSeconds;
                primeSeconds += result.PrimeSeconds;
                newSamples += result.NewSamples * count;
                for (int i = 0; i < count; i++)
                {
                    string path = Path.Combine(outDir, $"{prefix}-{first + i:D4}.wav");
                    result.WriteWav(i, path);
                    files.Add(path);
                    if (spectrogram)
                    {
                        string png = Path.ChangeExtension(path, ".png");
                        Spectrogram.SavePng(png, result.Audio[i]);
                        files.Add(png);
                    }
                }
            }
        }
        double sps = newSamples / Math.Max(genSeconds, 1e-9);
        double realTime = sps / model.SampleRate;
        if (json)
        {
            var doc = new JsonObject
            {
                ["model"] = dir, ["model_type"] = model.ModelType, ["sample_rate"] = model.SampleRate, ["device"] = dev.ToString(),
                ["prompt"] = promptPath, ["prompt_samples"] = prompt?.Length ?? 0,
                ["clips"] = n, ["seconds"] = seconds, ["samples_per_clip"] = samples, ["seed"] = sampling.Seed,
                ["temperature"] = sampling.Temperature, ["top_k"] = sampling.TopK, ["top_p"] = sampling.TopP, ["batch_size"] = batch,
                ["prime_seconds"] = primeSeconds, ["generate_seconds"] = genSeconds,
                ["samples_per_second"] = sps, ["real_time_factor"] = realTime, ["out_dir"] = outDir, ["files"] = Array(files),
            };
            Console.WriteLine(doc.ToJsonString(Indented));
            return Cli.Ok;
        }
        Console.WriteLine($"wrote {n} clip{(n == 1 ? "" : "s")} of {Num(seconds)} s{(prompt is null ? "" : $" after a {Num((double)prompt.Length / model.SampleRate)} s prompt")} to {outDir}" +
            (spectrogram ? " (with PNG spectrograms)" : ""));
        Console.WriteLine($"seed {sampling.Seed}, temperature {Num(sampling.Temperature)}: {Num(sps, "0")} samples/s in total on {dev} " +
            $"({Num(realTime, "0.000")}x real time; {Num(sps / Math.Min(n, batch), "0")} samples/s per clip)");
        return Cli.Ok;
    }

    // ------------------------------------------------------------------ train

    static Command TrainCommand()
    {
        var data = DataOption();
        var output = new Option<string>("--out", "-o") { Description = "output folder: checkpoints, log.jsonl, the final model", Required = true, HelpName = "DIR" };
        var type = new Option<string>("--model-type") { Description = "sashimi (S4D or Mamba U-Net) or lstm (the baseline)", DefaultValueFactory = _ => "sashimi" }
            .AcceptOnlyFromAmong(AudioModel.Architectures.Select(a => a.Name).ToArray());
        var preset = new Option<string?>("--preset")
        {
            Description = "config preset (" + string.Join("; ", AudioModel.Architectures.Select(a => $"{a.Name}: {string.Join(", ", a.Presets.Keys.Order())}")) + "); default: default",
        };
        var set = new Option<string[]>("--set") { Description = "change a config field, FIELD=VALUE, repeatable (e.g. --set n_layers=4 --set variant=mamba)", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var quant = new Option<string>("--quantization") { Description = "mu-law (SaShiMi's SC09 setting) or linear", DefaultValueFactory = _ => "mu-law" }.AcceptOnlyFromAmong("mu-law", "linear");
        var bits = new Option<int>("--bits") { Description = "bits per sample (classes = 2^bits)", DefaultValueFactory = _ => Quantization.DefaultBits };
        var rate = new Option<int>("--sample-rate") { Description = "the model's sample rate in Hz (the data are resampled to it)", DefaultValueFactory = _ => 16000 };
        var window = new Option<double>("--window-seconds") { Description = "long recordings (piano) are cut into windows of this many seconds", DefaultValueFactory = _ => 4.0 };
        var steps = new Option<long>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 20000 };
        var batch = new Option<int>("--batch-size", "--batch") { Description = "crops per step", DefaultValueFactory = _ => 16 };
        var crop = new Option<int>("--crop") { Description = "samples predicted per crop (longer than a clip: the whole clip)", DefaultValueFactory = _ => 16000 };
        var lr = new Option<double>("--lr") { Description = "peak learning rate (AdamW; linear warm-up, then cosine to 10%)", DefaultValueFactory = _ => 4e-3 };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW decoupled weight decay (never on the S4D spectrum, norms or embeddings)", DefaultValueFactory = _ => 0.0 };
        var warmup = new Option<long?>("--warmup-steps", "--warmup") { Description = "linear warm-up steps (default: 2% of the run)" };
        var clip = new Option<double>("--grad-clip") { Description = "global gradient-norm clip (0: off)", DefaultValueFactory = _ => 1.0 };
        var evalEvery = new Option<long?>("--eval-every") { Description = "validation NLL every N steps (default: a tenth of the run; 0: only at the end)" };
        var ckEvery = new Option<long?>("--checkpoint-every") { Description = "checkpoint every N steps (default: as --eval-every)" };
        var logEvery = new Option<long>("--log-every") { Description = "a log.jsonl line every N steps", DefaultValueFactory = _ => 50 };
        var evalClips = new Option<int>("--eval-clips") { Description = "validation clips scored at each evaluation (0: all)", DefaultValueFactory = _ => 64 };
        var limit = new Option<int?>("--train-limit") { Description = "use only the first N training clips (quick trials)" };
        var seed = new Option<long>("--seed") { Description = "seed of the initialisation and data order", DefaultValueFactory = _ => 0 };
        var resume = new Option<bool>("--resume") { Description = "continue from the newest checkpoint in --out (same settings); Ctrl+C checkpoints and stops" };
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var json = Cli.JsonOption("the final summary");
        var cmd = new Command("train", "Train a next-sample model (cross-entropy over quantised samples, shown in bits per sample) on a prepared data folder; Ctrl+C checkpoints, --resume continues.")
        {
            data, output, type, preset, set, quant, bits, rate, window, steps, batch, crop, lr, wd, warmup, clip, evalEvery, ckEvery, logEvery, evalClips, limit, seed, resume, device, precision, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            long total = pr.GetValue(steps);
            if (total < 1) throw new UsageException($"--steps must be at least 1, got {total}");
            double rateLr = pr.GetValue(lr), decay = pr.GetValue(wd), win = pr.GetValue(window);
            if (!double.IsFinite(rateLr) || rateLr <= 0) throw new UsageException("--lr must be positive");
            if (!double.IsFinite(decay) || decay < 0) throw new UsageException("--weight-decay must be >= 0");
            if (!double.IsFinite(win) || win <= 0) throw new UsageException("--window-seconds must be positive");
            if (pr.GetValue(warmup) is long w && (w < 0 || w > total)) throw new UsageException($"--warmup-steps must be in 0..{total}, got {w}");
            if (pr.GetValue(limit) is < 1) throw new UsageException("--train-limit must be at least 1");
            foreach (var (name, v) in new[] { ("--eval-every", pr.GetValue(evalEvery)), ("--checkpoint-every", pr.GetValue(ckEvery)) })
                if (v is < 0) throw new UsageException($"{name} must be >= 0");
            var ao = new AudioTrainOptions
            {
                BatchSize = pr.GetValue(batch), CropLength = pr.GetValue(crop), EvalClips = pr.GetValue(evalClips), Precision = Cli.ParsePrecision(pr.GetValue(precision)),
            };
            try { ao.Validate(); } catch (ArgumentException e) { throw new UsageException(e.Message); }

            string outDir = pr.GetValue(output)!;
            bool resuming = pr.GetValue(resume);
            bool existing = Directory.Exists(outDir) && (File.Exists(Path.Combine(outDir, ModelFolder.ConfigFile)) || Trainer.LatestCheckpoint(outDir) is not null);
            if (existing && !resuming)
                throw new UsageException($"{outDir}: already holds a training run; pass --resume to continue it, or choose another --out");

            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            var ds = OpenData(pr.GetValue(data));
            torch.manual_seed(pr.GetValue(seed));
            using var model = AudioModel.Create(pr.GetValue(type)!, pr.GetValue(preset), pr.GetValue(rate),
                AudioModel.ParseQuantization(pr.GetValue(quant)!), pr.GetValue(bits), ParseSets(pr.GetValue(set)).ToList()).To(dev);
            Console.Error.WriteLine($"reading {ds.Name} from {ds.Directory}");
            using var trainAll = LoadSplit(ds, "train", model.SampleRate, win);
            using var train = pr.GetValue(limit) is int lim && lim < trainAll.Count ? trainAll.Audio.narrow(0, 0, lim) : trainAll.Audio.alias();
            using var valid = ds.Split("valid").Count > 0 ? LoadSplit(ds, "valid", model.SampleRate, win) : null;
            long warm = pr.GetValue(warmup) ?? (long)Math.Round(0.02 * total);
            long every = pr.GetValue(evalEvery) ?? Math.Max(1, total / 10);
            var options = new TrainOptions
            {
                Steps = total, LearningRate = rateLr, WeightDecay = decay, Beta1 = 0.9, Beta2 = 0.999,
                WarmupSteps = warm, MinLrRatio = 0.1, GradClip = pr.GetValue(clip),
                EvalEvery = every, CheckpointEvery = pr.GetValue(ckEvery) ?? every, LogEvery = pr.GetValue(logEvery),
                Seed = pr.GetValue(seed), OutputDir = outDir, Resume = resuming,
            };
            var result = AudioTraining.Train(model, train, valid?.Audio, options, ao, Cli.Interrupt);
            bool done = result.Steps >= total;
            var doc = new JsonObject
            {
                ["out"] = outDir, ["model_type"] = model.ModelType, ["parameters"] = model.ParameterCount, ["steps"] = result.Steps,
                ["completed"] = done, ["train_clips"] = train.size(0), ["samples_per_clip"] = train.size(1),
                ["final_train_bits"] = double.IsFinite(result.LastLoss) ? result.LastLoss / Math.Log(2) : null,   // none when resumed at the end
            };
            foreach (var (k, v) in result.LastEval) doc[k] = double.IsFinite(v) ? v : null;
            if (pr.GetValue(json)) Console.WriteLine(doc.ToJsonString(Indented));
            else
            {
                Console.WriteLine(done ? $"trained {model.ModelType} ({model.ParameterCount:N0} parameters) for {result.Steps} steps: {outDir}"
                                       : $"stopped at step {result.Steps} of {total}; continue with --resume");
                if (result.LastEval.TryGetValue("valid_bits_per_sample", out var vb))
                    Console.WriteLine($"validation NLL {Num(vb, "0.000")} bits/sample");
            }
            return done ? Cli.Ok : Cli.Interrupted;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ eval / baselines

    /// <summary>WAV files named directly or found (recursively, sorted) in the named folders.</summary>
    public static List<string> ExpandWavs(IEnumerable<string> paths)
    {
        var files = new List<string>();
        foreach (var p in paths)
        {
            if (Directory.Exists(p))
            {
                var found = Directory.EnumerateFiles(p, "*", SearchOption.AllDirectories)
                    .Where(f => f.EndsWith(".wav", StringComparison.OrdinalIgnoreCase)).Order(StringComparer.Ordinal).ToList();
                if (found.Count == 0) throw new InvalidDataException($"{p}: no .wav files in this folder");
                files.AddRange(found);
            }
            else if (File.Exists(p)) files.Add(p);
            else throw new FileNotFoundException($"{p}: no such file or folder");
        }
        return files;
    }

    static Command EvalCommand(Defaults defaults)
    {
        var paths = new Argument<string[]>("PATH") { Description = "WAV files or folders of them (each file scored whole; mixed to mono, resampled to the model's rate)", Arity = ArgumentArity.ZeroOrMore };
        var data = DataOption("instead of paths: score a split of this prepared folder");
        var split = new Option<string>("--split") { Description = "the split scored with --data", DefaultValueFactory = _ => "test" }.AcceptOnlyFromAmong([.. AudioDataset.SplitNames]);
        var window = new Option<double>("--window-seconds") { Description = "long recordings of --data are scored in windows of this many seconds", DefaultValueFactory = _ => 4.0 };
        var limit = new Option<int?>("--limit") { Description = "score only the first N clips of the split" };
        var model = ModelOption();
        var device = Cli.DeviceOption();
        var batchSamples = new Option<long>("--batch-samples") { Description = "samples per forward batch", DefaultValueFactory = _ => 1L << 18 };
        var json = Cli.JsonOption("the per-file and total NLL");
        var cmd = new Command("eval", "Negative log-likelihood in bits per sample (every sample predicted from the ones before it, the first from the start token).")
        {
            paths, data, split, window, limit, model, device, batchSamples, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            var given = pr.GetValue(paths) ?? [];
            Cli.RejectOptionLike(given);
            string? dataDir = pr.GetValue(data);
            bool useData = dataDir is not null || given.Length == 0;
            if (dataDir is not null && given.Length > 0) throw new UsageException("give WAV paths or --data, not both");
            long bs = pr.GetValue(batchSamples);
            if (bs < 1) throw new UsageException("--batch-samples must be at least 1");
            if (pr.GetValue(limit) is < 1) throw new UsageException("--limit must be at least 1");
            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            string dir = ResolveModel(pr.GetValue(model), defaults);
            using var m = AudioModel.Load(dir, dev);
            var rows = new List<(string Name, long Samples, double Bits)>();
            if (useData)
            {
                var ds = OpenData(dataDir);
                string sp = pr.GetValue(split)!;
                using var batch = LoadSplit(ds, sp, m.SampleRate, pr.GetValue(window));
                long n = pr.GetValue(limit) is int lim ? Math.Min(lim, batch.Count) : batch.Count;
                using var audio = batch.Audio.narrow(0, 0, n);
                using var bar = new ProgressBar($"eval {sp}", n, "clips");
                var (bits, count) = m.ScoreWaveforms(audio, bs, bar);
                rows.Add(($"{ds.Name}:{sp} ({n} clips)", count, bits));
            }
            else
            {
                var files = ExpandWavs(given);
                using var bar = new ProgressBar("eval", files.Count, "files");
                foreach (var f in files)
                {
                    var x = Wav.ReadMono(f, m.SampleRate);
                    if (x.Length == 0) throw new InvalidDataException($"{f}: no samples");
                    using var t = torch.tensor(x, new long[] { 1, x.Length });
                    var (bits, count) = m.ScoreWaveforms(t, bs);
                    rows.Add((f, count, bits));
                    bar.Advance();
                }
            }
            long totalSamples = rows.Sum(r => r.Samples);
            double totalBits = rows.Sum(r => r.Bits);
            double bps = totalBits / Math.Max(1, totalSamples);
            if (pr.GetValue(json))
            {
                var doc = new JsonObject
                {
                    ["model"] = dir, ["model_type"] = m.ModelType, ["samples"] = totalSamples, ["bits"] = totalBits, ["bits_per_sample"] = bps,
                    ["items"] = new JsonArray(rows.Select(r => (JsonNode?)new JsonObject
                    {
                        ["name"] = r.Name, ["samples"] = r.Samples, ["bits_per_sample"] = r.Bits / Math.Max(1, r.Samples),
                    }).ToArray()),
                };
                Console.WriteLine(doc.ToJsonString(Indented));
                return Cli.Ok;
            }
            if (rows.Count > 1)
                foreach (var r in rows) Console.WriteLine($"{Num(r.Bits / Math.Max(1, r.Samples), "0.000")}\t{r.Samples}\t{r.Name}");
            Console.WriteLine($"{(rows.Count == 1 ? rows[0].Name : $"{rows.Count} files")}: {Num(bps, "0.000")} bits/sample over {totalSamples:N0} samples ({m.ModelType}, {dir})");
            return Cli.Ok;
        }));
        return cmd;
    }

    static Command BaselinesCommand()
    {
        var data = DataOption();
        var window = new Option<double>("--window-seconds") { Description = "long recordings are cut into windows of this many seconds", DefaultValueFactory = _ => 4.0 };
        var quant = new Option<string>("--quantization") { Description = "mu-law or linear", DefaultValueFactory = _ => "mu-law" }.AcceptOnlyFromAmong("mu-law", "linear");
        var bits = new Option<int>("--bits") { Description = "bits per sample", DefaultValueFactory = _ => Quantization.DefaultBits };
        var rate = new Option<int>("--sample-rate") { Description = "sample rate in Hz", DefaultValueFactory = _ => 16000 };
        var limit = new Option<int?>("--limit") { Description = "measure on the first N test clips only (as eval --limit)" };
        var json = Cli.JsonOption("the numbers");
        var cmd = new Command("baselines", "The unigram baseline: the entropy of the quantised train split, and its cross-entropy on the test split (bits per sample), measured as `eval` measures models.")
        {
            data, window, quant, bits, rate, limit, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            var ds = OpenData(pr.GetValue(data));
            var q = AudioModel.ParseQuantization(pr.GetValue(quant)!);
            int b = pr.GetValue(bits);
            if (b is < 1 or > 16) throw new UsageException($"--bits must be 1 to 16, got {b}");
            using var train = LoadSplit(ds, "train", pr.GetValue(rate), pr.GetValue(window));
            if (pr.GetValue(limit) is < 1) throw new UsageException("--limit must be at least 1");
            using var testAll = LoadSplit(ds, "test", pr.GetValue(rate), pr.GetValue(window));
            using var testAudio = pr.GetValue(limit) is int lim && lim < testAll.Count ? testAll.Audio.narrow(0, 0, lim) : testAll.Audio.alias();
            var (uni, trainBits, testBits) = AudioBaselines.Unigram(train.Audio, testAudio, q, b);
            if (pr.GetValue(json))
            {
                Console.WriteLine(new JsonObject
                {
                    ["data"] = ds.Directory, ["quantization"] = AudioModel.QuantizationName(q), ["bits"] = b,
                    ["train_samples"] = train.Audio.numel(), ["test_samples"] = testAudio.numel(),
                    ["unigram_train_entropy_bits"] = trainBits, ["unigram_test_bits_per_sample"] = testBits,
                }.ToJsonString(Indented));
                return Cli.Ok;
            }
            Console.WriteLine($"{ds.Name} ({AudioModel.QuantizationName(q)}, {b} bits): unigram entropy of train {Num(trainBits, "0.000")} bits/sample; " +
                $"unigram (fitted on train) on test {Num(testBits, "0.000")} bits/sample");
            return Cli.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ judge / classifier

    static Command JudgeCommand(Defaults defaults)
    {
        var dir = new Argument<string>("DIR") { Description = "folder of generated clips (.wav; each cut or zero-padded to the classifier's 1 s)" };
        var classifier = new Option<string?>("--classifier") { Description = $"digit classifier folder; default: the embedded {DefaultJudgeName}", HelpName = "DIR" };
        var data = DataOption("spoken-digit folder whose test split is the reference");
        var ceilingTrain = new Option<int?>("--ceiling-train") { Description = "training clips compared with the test set for the ceiling's FID (default: as many as the test split)" };
        var device = Cli.DeviceOption();
        var batch = new Option<int>("--batch-size", "--batch") { Description = "clips classified together", DefaultValueFactory = _ => 256 };
        var json = Cli.JsonOption("the scores");
        var cmd = new Command("judge", "Score generated spoken digits as the SaShiMi and Mamba papers do: inception score, modified IS, AM score and a Frechet distance on the classifier's features, against the test split; the test split's own scores are the ceiling.")
        {
            dir, classifier, data, ceilingTrain, device, batch, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string folder = pr.GetValue(dir)!;
            if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"{folder}: no such folder");
            if (pr.GetValue(batch) < 1) throw new UsageException("--batch-size must be at least 1");
            if (pr.GetValue(ceilingTrain) is < 2) throw new UsageException("--ceiling-train must be at least 2");
            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            using var clf = DigitClassifier.Load(ResolveJudge(pr.GetValue(classifier), defaults), dev);
            var ds = OpenData(pr.GetValue(data));
            var report = AudioJudge.Judge(clf, folder, ds, pr.GetValue(ceilingTrain), batchSize: pr.GetValue(batch), progress: true);
            Console.WriteLine(pr.GetValue(json) ? report.ToJson().ToJsonString(Indented) : report.Format());
            return Cli.Ok;
        }));
        return cmd;
    }

    static Command TrainClassifierCommand()
    {
        var data = DataOption("spoken-digit folder");
        var output = new Option<string>("--out", "-o") { Description = "output folder: checkpoints, log.jsonl, the final classifier and eval.json", Required = true, HelpName = "DIR" };
        var preset = new Option<string>("--preset") { Description = "classifier preset (" + string.Join(", ", DigitClassifierConfig.Presets.Keys.Order()) + ")", DefaultValueFactory = _ => "default" };
        var set = new Option<string[]>("--set") { Description = "change a config field, FIELD=VALUE, repeatable", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var epochs = new Option<double>("--epochs") { Description = "passes over the training clips", DefaultValueFactory = _ => 8 };
        var steps = new Option<long?>("--steps") { Description = "optimizer steps (overrides --epochs)" };
        var batch = new Option<int>("--batch-size", "--batch") { Description = "clips per step", DefaultValueFactory = _ => 64 };
        var lr = new Option<double>("--lr") { Description = "peak learning rate", DefaultValueFactory = _ => 2e-3 };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW weight decay", DefaultValueFactory = _ => 0.05 };
        var limit = new Option<int?>("--train-limit") { Description = "use only the first N training clips" };
        var noAugment = new Option<bool>("--no-augment") { Description = "no random shifts, gain and noise" };
        var seed = new Option<long>("--seed") { Description = "seed", DefaultValueFactory = _ => 0 };
        var resume = new Option<bool>("--resume") { Description = "continue from the newest checkpoint in --out" };
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var json = Cli.JsonOption("the final accuracies");
        var cmd = new Command("train-classifier", "Train the spoken-digit classifier (log-mel front end, bidirectional Mamba blocks) that `judge` uses; reports validation and test accuracy.")
        {
            data, output, preset, set, epochs, steps, batch, lr, wd, limit, noAugment, seed, resume, device, precision, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            if (pr.GetValue(limit) is < 1) throw new UsageException("--train-limit must be at least 1");
            var mixed = Cli.ParsePrecision(pr.GetValue(precision));
            var job = new DigitTrainJob
            {
                DataDir = pr.GetValue(data), OutputDir = pr.GetValue(output)!, Preset = pr.GetValue(preset)!, Overrides = ParseSets(pr.GetValue(set)).ToList(),
                Epochs = pr.GetValue(epochs), Steps = pr.GetValue(steps), BatchSize = pr.GetValue(batch), LearningRate = pr.GetValue(lr),
                WeightDecay = pr.GetValue(wd), Seed = pr.GetValue(seed), Resume = pr.GetValue(resume),
                Device = Devices.Resolve(pr.GetValue(device), Console.Error), TrainLimit = pr.GetValue(limit), Augment = !pr.GetValue(noAugment),
                Precision = mixed,
            };
            var summary = DigitClassifierJob.Run(job, Console.Error, Cli.Interrupt);
            if (pr.GetValue(json))
            {
                Console.WriteLine(new JsonObject
                {
                    ["out"] = job.OutputDir, ["parameters"] = summary.Parameters, ["steps"] = summary.Steps, ["completed"] = summary.Completed,
                    ["valid"] = summary.Valid?.ToJson(), ["test"] = summary.Test?.ToJson(),
                }.ToJsonString(Indented));
            }
            else if (summary.Completed)
            {
                Console.WriteLine($"trained the digit classifier ({summary.Parameters:N0} parameters, {summary.Steps} steps): {job.OutputDir}");
                if (summary.Valid is { } v) Console.WriteLine($"valid accuracy {Num(100 * v.Accuracy, "0.00")}% ({v.Correct}/{v.Count})");
                if (summary.Test is { } t) Console.WriteLine(t.Format());
            }
            else Console.WriteLine($"stopped at step {summary.Result.Steps} of {summary.Steps}; continue with --resume");
            return summary.Completed ? Cli.Ok : Cli.Interrupted;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ info

    static Command InfoCommand(Defaults defaults)
    {
        var model = ModelOption();
        var type = new Option<string?>("--model-type") { Description = "describe a fresh model of this type instead of a folder (with --preset)" };
        var preset = new Option<string?>("--preset") { Description = "preset of --model-type" };
        var set = new Option<string[]>("--set") { Description = "change a config field of --model-type, FIELD=VALUE", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var json = Cli.JsonOption("the description");
        var cmd = new Command("info", "A model's type, parameter count, size, config and audio settings.") { model, type, preset, set, json };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string? t = pr.GetValue(type);
            if (t is null && (pr.GetValue(preset) is not null || pr.GetValue(set) is { Length: > 0 }))
                throw new UsageException("--preset and --set describe a fresh model: give --model-type too");
            if (t is not null && pr.GetValue(model) is not null) throw new UsageException("give --model or --model-type, not both");
            string? dir = t is null ? ResolveModel(pr.GetValue(model), defaults) : null;
            using var m = t is null ? AudioModel.Load(dir!) : AudioModel.Create(t, pr.GetValue(preset), overrides: ParseSets(pr.GetValue(set)).ToList());
            long bytes = m.Model.parameters().Sum(p => p.numel() * p.element_size());
            var config = m.ConfigJson();
            if (pr.GetValue(json))
            {
                Console.WriteLine(new JsonObject
                {
                    ["model"] = dir, ["model_type"] = m.ModelType, ["parameters"] = m.ParameterCount, ["bytes"] = bytes, ["config"] = config,
                }.ToJsonString(Indented));
                return Cli.Ok;
            }
            Console.WriteLine($"{(dir ?? $"a fresh {t} ({pr.GetValue(preset) ?? "default"})")}: {m.ModelType}, {m.ParameterCount:N0} parameters ({Num(bytes / 1e6, "0.0")} MB), " +
                $"{m.SampleRate} Hz, {AudioModel.QuantizationName(m.Quantization)} {m.Bits} bits ({m.Classes} classes)");
            Console.WriteLine(config.ToJsonString(Indented));
            return Cli.Ok;
        }));
        return cmd;
    }
}
