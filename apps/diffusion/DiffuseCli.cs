// ssm-diffuse: the class-conditional image-diffusion CLI (thin: parse the command line, call Ssm.Vision.ImageDiffusion,
// print). Results go to stdout, progress and notes to stderr; user errors are one line "error: ..." with a non-zero exit
// (Ssm.Apps.Cli.Guard: 1 bad input or a failed run, 2 bad usage, 130 interrupted).
//   sample   DDIM samples of the requested classes as a PNG grid (one row per class) and/or single PNGs
//   train    trains a diffussm / dis denoiser on a prepared data folder (data/fashion-mnist.sh, data/mnist-digits.sh)
//   eval     Frechet distance on the features of a suite classifier (generated vs the test split; real train images vs
//            the test split as the floor), class fidelity, inception score and images/s, for several step counts and
//            guidance scales
//   info     a model's (or a preset's) type, parameter count, config, labels and diffusion settings
//   doctor   the backend and the device self-test (shared with every ssm-* CLI)
// The default generator (models/fashion-mnist-diffusion) and the default judge classifier (models/fashion-mnist-vim) are
// copied next to the executable at build (see ssm-diffuse.csproj).
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ssm.Backbone;
using Ssm.Backbone.Generation;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using Ssm.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Apps.Diffusion;

public static class DiffuseCli
{
    public const string DefaultModelName = "fashion-mnist-diffusion", DefaultJudgeName = "fashion-mnist-vim";

    /// <summary>Where the embedded default generator is copied at build and publish (see ssm-diffuse.csproj).</summary>
    public static string DefaultModelDir => Path.Combine(AppContext.BaseDirectory, "models", DefaultModelName);

    /// <summary>Where the embedded judge classifier of `eval` is copied.</summary>
    public static string DefaultJudgeDir => Path.Combine(AppContext.BaseDirectory, "models", DefaultJudgeName);

    /// <summary>The data folder used without --data: data/cache/fashion-mnist in the current folder or one above it.</summary>
    public static readonly string DefaultDataRelative = Path.Combine("data", "cache", "fashion-mnist");

    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>
    /// Runs the CLI on Console.Out / Console.Error (in-process use and tests redirect those); returns the exit code.
    /// </summary>
    /// <param name="defaultModelDir">The default generator (null: <see cref="DefaultModelDir"/>).</param>
    /// <param name="defaultJudgeDir">The default judge classifier (null: <see cref="DefaultJudgeDir"/>).</param>
    public static int Run(string[] args, string? defaultModelDir = null, string? defaultJudgeDir = null)
    {
        var defaults = new Defaults(defaultModelDir ?? DefaultModelDir, defaultJudgeDir ?? DefaultJudgeDir);
        var root = new RootCommand(
            "Class-conditional image diffusion with state-space models: DiffuSSM (pixels as a sequence, hourglass around a " +
            "bidirectional Mamba) and DiS (Vim blocks over patches). DDPM training, DDIM sampling with classifier-free guidance, " +
            "and quality numbers from a suite classifier. Without --model the embedded Fashion-MNIST DiffuSSM is used.");
        root.Subcommands.Add(SampleCommand(defaults));
        root.Subcommands.Add(TrainCommand());
        root.Subcommands.Add(EvalCommand(defaults));
        root.Subcommands.Add(InfoCommand(defaults));
        root.Subcommands.Add(Doctor.Create());
        return Cli.Invoke(root, args);
    }

    sealed record Defaults(string Model, string Judge);

    // ------------------------------------------------------------------ shared pieces

    static Option<string?> ModelOption() => new("--model", "-m")
    {
        Description = $"diffusion model folder (config.json + model.safetensors); default: the embedded {DefaultModelName}",
        HelpName = "DIR",
    };

    static Option<long> SeedOption(string what) => new("--seed") { Description = what, DefaultValueFactory = _ => 0 };

    static Option<string?> DataOption() => new("--data")
    {
        Description = $"prepared data folder (data/fashion-mnist.sh, data/mnist-digits.sh); default: {DefaultDataRelative} in the current folder or above",
        HelpName = "DIR",
    };

    static string ResolveModel(string? given, string defaultDir)
    {
        if (given is not null) return given;
        if (File.Exists(Path.Combine(defaultDir, ModelFolder.ConfigFile)) && File.Exists(Path.Combine(defaultDir, ModelFolder.WeightsFile)))
            return defaultDir;
        throw new FileNotFoundException($"no default model is installed (looked in {defaultDir}); pass --model DIR, or train one: " +
            $"data/fashion-mnist.sh && ssm-diffuse train --data {DefaultDataRelative} --out models/{DefaultModelName} " +
            $"(a build copies models/{DefaultModelName} next to the app)");
    }

    static string ResolveJudge(string? given, string defaultDir)
    {
        if (given is not null) return given;
        if (File.Exists(Path.Combine(defaultDir, ModelFolder.ConfigFile)) && File.Exists(Path.Combine(defaultDir, ModelFolder.WeightsFile)))
            return defaultDir;
        throw new FileNotFoundException($"no judge classifier is installed (looked in {defaultDir}); pass --classifier DIR, or train one: " +
            $"ssm-vision train --data {DefaultDataRelative} --model-type vim --out models/{DefaultJudgeName}");
    }

    static string ResolveData(string? given)
    {
        if (given is not null) return given;
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, DefaultDataRelative);
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new UsageException($"no --data given and no {DefaultDataRelative} in the current folder or above; prepare it with data/fashion-mnist.sh, or pass --data DIR");
    }

    static IEnumerable<KeyValuePair<string, string>> ParseSets(string[]? sets) => Cli.ParseSets(sets, "depth=8");

    /// <summary>The DDIM step count must lie in 1..T (the model's diffusion timesteps).</summary>
    static void CheckSteps(int steps, int timesteps, string option)
    {
        if (steps < 1 || steps > timesteps)
            throw new UsageException($"{option} must be in 1..{timesteps} (the model's diffusion timesteps), got {steps}");
    }

    static void CheckGuidance(double g, string option)
    {
        if (!double.IsFinite(g) || g < 0) throw new UsageException($"{option} must be a number >= 0 (1: no guidance, 0: the unconditional model), got {g.ToString(Inv)}");
    }

    static List<T> ParseList<T>(string text, string option, Func<string, T?> parse) where T : struct
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new UsageException($"{option}: no values given");
        return parts.Select(p => parse(p) ?? throw new UsageException($"{option}: '{p}' is not a valid value")).ToList();
    }

    static string Num(double v, string format = "0.##") => v.ToString(format, Inv);

    /// <summary>The classes asked for by --class (names or ids, repeatable, comma lists); none given: every class.</summary>
    public static int[] ParseClasses(ImageDiffusion gen, IEnumerable<string>? values)
    {
        var ids = new List<int>();
        foreach (var value in values ?? [])
        {
            // A whole value first (a class name could hold a comma), then its comma-separated parts.
            if (TryClass(gen, value.Trim()) is int whole) { ids.Add(whole); continue; }
            foreach (var part in value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                try { ids.Add(gen.ClassId(part)); }
                catch (ArgumentException e) { throw new UsageException(e.Message); }
            }
        }
        if (ids.Count == 0 && values is { } v && v.Any()) throw new UsageException("--class: no class given");
        return ids.Count > 0 ? ids.ToArray() : Enumerable.Range(0, gen.Labels.Count).ToArray();
    }

    static int? TryClass(ImageDiffusion gen, string s)
    {
        try { return gen.ClassId(s); }
        catch (ArgumentException) { return null; }
    }

    /// <summary>A file-name-safe form of a class name: "T-shirt/top" -> "t-shirt-top", "Ankle boot" -> "ankle-boot".</summary>
    public static string Slug(string label)
    {
        var sb = new System.Text.StringBuilder();
        foreach (char ch in label.ToLowerInvariant())
        {
            if (char.IsAsciiLetterOrDigit(ch)) sb.Append(ch);
            else if (sb.Length > 0 && sb[^1] != '-') sb.Append('-');
        }
        return sb.ToString().Trim('-');
    }

    /// <summary>The file-name stem of a class: its id, then its name where the name is not just the id ("0-t-shirt-top", "3").</summary>
    public static string ClassStem(ImageDiffusion gen, int c)
    {
        if (c < 0) return "uncond";
        string id = c.ToString(Inv), slug = Slug(gen.Labels[c]);
        return slug.Length == 0 || slug == id ? id : $"{id}-{slug}";
    }

    // ------------------------------------------------------------------ sample

    static Command SampleCommand(Defaults defaults)
    {
        var classes = new Option<string[]>("--class", "-c")
        {
            Description = "class to draw, by name (case-insensitive) or id; repeatable or a comma list (--class Trouser,Bag); default: every class",
            Arity = ArgumentArity.OneOrMore, HelpName = "NAME|ID",
        };
        var n = new Option<int>("--n") { HelpName = "N", Description = "images per requested class (the grid has one row of n per class)", DefaultValueFactory = _ => 8 };
        var steps = new Option<int>("--steps") { Description = "DDIM sampling steps, 1..T (the model's diffusion timesteps, usually 1000)", DefaultValueFactory = _ => 50 };
        var guidance = new Option<double>("--guidance", "-g")
        {
            Description = "classifier-free guidance scale: 1 = the plain conditional model, above 1 = stronger class likeness, " +
                          "0 = the unconditional model (the class then only names the row)",
            DefaultValueFactory = _ => 2.0,
        };
        var eta = new Option<double>("--eta") { Description = "DDIM noise: 0 = deterministic given the seed, 1 = DDPM-like ancestral sampling", DefaultValueFactory = _ => 0.0 };
        var seed = SeedOption("seed of the initial noise: the same seed, settings and model give the same images");
        var output = new Option<string?>("--out", "-o") { Description = "grid PNG to write (default samples.png, or none when only --out-dir is given)", HelpName = "FILE" };
        var outDir = new Option<string?>("--out-dir") { Description = "also write every image as its own PNG (native size): DIR/{id}-{class}-{i}.png (uncond-{i}.png with --guidance 0)", HelpName = "DIR" };
        var columns = new Option<int?>("--columns") { Description = "grid columns (default: --n, so each class is one row)" };
        var scale = new Option<int>("--scale") { Description = "grid enlargement factor (nearest neighbour), 1..16", DefaultValueFactory = _ => 2 };
        var model = ModelOption();
        var device = Cli.DeviceOption();
        var batch = new Option<int>("--batch-size", "--batch") { Description = "images denoised together", DefaultValueFactory = _ => 64 };
        var json = Cli.JsonOption("the written files and the settings");
        var cmd = new Command("sample", "Draw images of the given classes with DDIM and classifier-free guidance; write a PNG grid (one row per class) and/or single PNGs.")
        {
            classes, n, steps, guidance, eta, seed, output, outDir, columns, scale, model, device, batch, json,
        };
        cmd.SetAction(pr => Cli.Guard(() => Sample(defaults, pr.GetValue(classes), pr.GetValue(n), pr.GetValue(steps), pr.GetValue(guidance),
            pr.GetValue(eta), pr.GetValue(seed), pr.GetValue(output), pr.GetValue(outDir), pr.GetValue(columns), pr.GetValue(scale),
            pr.GetValue(model), pr.GetValue(device)!, pr.GetValue(batch), pr.GetValue(json))));
        return cmd;
    }

    static int Sample(Defaults defaults, string[]? classArgs, int n, int steps, double guidance, double eta, long seed, string? output,
        string? outDir, int? columns, int scale, string? modelDir, string device, int batch, bool json)
    {
        if (n < 1) throw new UsageException($"--n must be at least 1, got {n}");
        CheckGuidance(guidance, "--guidance");
        if (!double.IsFinite(eta) || eta is < 0 or > 1) throw new UsageException($"--eta must be in [0, 1], got {eta.ToString(Inv)}");
        if (columns is < 1) throw new UsageException($"--columns must be at least 1, got {columns}");
        if (scale is < 1 or > 16) throw new UsageException($"--scale must be in 1..16, got {scale}");
        if (batch < 1) throw new UsageException($"--batch-size must be at least 1, got {batch}");
        string? gridPath = output ?? (outDir is null ? "samples.png" : null);

        var dev = Devices.Resolve(device, Console.Error);
        string dir = ResolveModel(modelDir, defaults.Model);
        using var gen = ImageDiffusion.Load(dir, dev);
        CheckSteps(steps, gen.Settings.Timesteps, "--steps");
        var requested = ParseClasses(gen, classArgs);
        // Guidance 0 is the unconditional model: sample it directly (-1) instead of running a conditional half that g = 0 discards.
        bool unconditional = guidance == 0;
        var ids = requested.SelectMany(c => Enumerable.Repeat(unconditional ? -1 : c, n)).ToArray();

        var clock = Stopwatch.StartNew();
        Tensor images;
        using (var bar = new ProgressBar("sample", ids.Length, "img"))
        {
            images = gen.Sample(ids, steps, unconditional ? 1 : guidance, seed, eta, batch, i => bar.Report(i));
        }
        double seconds = clock.Elapsed.TotalSeconds;
        using var imagesScope = images;
        using var unit = ImageDiffusion.ToUnit(images);

        var files = new List<string>();
        RawImage? grid = null;
        if (gridPath is not null)
        {
            grid = ImageIO.Grid(unit, columns ?? n, gap: 2, scale: scale);
            Cli.CreateParent(gridPath);
            ImageIO.SavePng(gridPath, grid);
            files.Add(gridPath);
        }
        if (outDir is not null)
        {
            Directory.CreateDirectory(outDir);
            // Numbered per file-name stem, so a class asked for twice (or every unconditional image) gets distinct names.
            var counters = new Dictionary<string, int>();
            for (int i = 0; i < ids.Length; i++)
            {
                string stem = ClassStem(gen, ids[i]);
                int k = counters.GetValueOrDefault(stem);
                counters[stem] = k + 1;
                string path = Path.Combine(outDir, $"{stem}-{k}.png");
                using var one = unit[i];
                ImageIO.SavePng(path, ImageIO.FromTensor(one));
                files.Add(path);
            }
        }
        double ips = ids.Length / Math.Max(seconds, 1e-9);
        if (json)
        {
            var doc = new JsonObject
            {
                ["model"] = dir, ["model_type"] = gen.ModelType,
                ["grid"] = gridPath, ["grid_width"] = grid?.Width, ["grid_height"] = grid?.Height,
                ["out_dir"] = outDir,
                ["files"] = new JsonArray(files.Select(f => (JsonNode?)JsonValue.Create(f)).ToArray()),
                ["classes"] = new JsonArray(requested.Select(c => (JsonNode?)new JsonObject { ["id"] = c, ["label"] = gen.Labels[c] }).ToArray()),
                ["n"] = n, ["images"] = ids.Length, ["steps"] = steps, ["guidance"] = guidance, ["unconditional"] = unconditional,
                ["eta"] = eta, ["seed"] = seed, ["seconds"] = seconds, ["images_per_second"] = ips,
            };
            Console.WriteLine(doc.ToJsonString(Indented));
            return Cli.Ok;
        }
        string what = $"{ids.Length} images ({n} x {requested.Length} {(requested.Length == 1 ? "class" : "classes")}{(unconditional ? ", unconditional" : "")})";
        if (grid is not null) Console.WriteLine($"wrote {gridPath} ({grid.Width}x{grid.Height}): {what}");
        if (outDir is not null) Console.WriteLine($"wrote {ids.Length} PNGs to {outDir}");
        Console.WriteLine($"DDIM {steps} steps, guidance {Num(guidance)}, eta {Num(eta)}, seed {seed}: {Num(ips, "0.0")} images/s on {dev}");
        return Cli.Ok;
    }

    // ------------------------------------------------------------------ train

    static Command TrainCommand()
    {
        var data = DataOption();
        var output = new Option<string>("--out", "-o") { Description = "output folder: checkpoints, log.jsonl, samples/step-N.png grids, the final (EMA) model", Required = true, HelpName = "DIR" };
        var type = new Option<string>("--model-type") { Description = "denoiser architecture: " + string.Join("; ", ImageDiffusion.Architectures.Select(a => $"{a.Name} = {a.Description}")), DefaultValueFactory = _ => "diffussm" }
            .AcceptOnlyFromAmong(ImageDiffusion.Architectures.Select(a => a.Name).ToArray());
        var preset = new Option<string?>("--preset")
        {
            Description = "config preset (" + string.Join("; ", ImageDiffusion.Architectures.Select(a => $"{a.Name}: {string.Join(", ", a.Presets.Keys.Order())}")) +
                          "); default " + ImageDiffusion.Architectures[0].DefaultPreset + " (image size, channels and classes always come from the data)",
        };
        var set = new Option<string[]>("--set") { Description = "change a config field, FIELD=VALUE, repeatable (e.g. --set depth=8 --set hidden_size=192)", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var steps = new Option<long>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 20000 };
        var batch = new Option<int>("--batch-size", "--batch") { Description = "images per step", DefaultValueFactory = _ => 128 };
        var lr = new Option<double>("--lr") { Description = "peak learning rate (AdamW, betas 0.9/0.999; linear warm-up, then cosine to 10%)", DefaultValueFactory = _ => 2e-4 };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW decoupled weight decay (DiT trains without)", DefaultValueFactory = _ => 0.0 };
        var warmup = new Option<long?>("--warmup-steps", "--warmup") { Description = "linear warm-up steps (default: 5% of the run)" };
        var clip = new Option<double>("--grad-clip") { Description = "global gradient-norm clip (0: off)", DefaultValueFactory = _ => 1.0 };
        var timesteps = new Option<int>("--timesteps") { Description = "diffusion steps T", DefaultValueFactory = _ => 1000 };
        var schedule = new Option<string>("--schedule") { Description = "noise schedule: linear (DDPM) or cosine (improved DDPM)", DefaultValueFactory = _ => "linear" }
            .AcceptOnlyFromAmong("linear", "cosine");
        var prediction = new Option<string>("--prediction") { Description = "what the network predicts: epsilon (the noise) or v (Salimans & Ho)", DefaultValueFactory = _ => "epsilon" }
            .AcceptOnlyFromAmong("epsilon", "v");
        var dropout = new Option<double>("--class-dropout") { Description = "share of labels replaced by the null class (trains the unconditional model for guidance)", DefaultValueFactory = _ => 0.1 };
        var ema = new Option<double>("--ema") { Description = "decay of the weight average that is sampled and saved (0.999 for short runs, 0.9999 for long ones)", DefaultValueFactory = _ => 0.999 };
        var hflip = new Option<string>("--hflip") { Description = "random horizontal flips: auto (as the data folder says: Fashion-MNIST yes, digits no), on, off", DefaultValueFactory = _ => "auto" }
            .AcceptOnlyFromAmong("auto", "on", "off");
        var gridSteps = new Option<int>("--grid-steps") { Description = "DDIM steps of the sample grid written at each evaluation", DefaultValueFactory = _ => 50 };
        var gridPerClass = new Option<int>("--grid-per-class") { Description = "images per class in that grid (0: no grids)", DefaultValueFactory = _ => 8 };
        var gridGuidance = new Option<double>("--grid-guidance") { Description = "guidance scale of that grid", DefaultValueFactory = _ => 2.0 };
        var evalEvery = new Option<long?>("--eval-every") { Description = "validation loss and a sample grid every N steps (default: a tenth of the run; 0: only at the end)" };
        var ckEvery = new Option<long?>("--checkpoint-every") { Description = "checkpoint every N steps (default: as --eval-every; 0: only at the end)" };
        var logEvery = new Option<long>("--log-every") { Description = "a log.jsonl line every N steps", DefaultValueFactory = _ => 50 };
        var limit = new Option<int?>("--train-limit") { Description = "use only the first N training images (quick trials)" };
        var valLimit = new Option<int>("--val-limit")
        {
            Description = "validation loss on the first N images of the val split (fixed t and noise; 0: none, e.g. for quick CPU trials)",
            DefaultValueFactory = _ => 1000,
        };
        var seed = SeedOption("seed of the initialisation, data order, noise and label dropout");
        var resume = new Option<bool>("--resume") { Description = "continue from the newest checkpoint in --out (same settings and seed); Ctrl+C checkpoints and stops" };
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption("fp32 SSM parameters, master weights and EMA");
        var json = Cli.JsonOption("the final summary");
        var cmd = new Command("train", "Train a class-conditional denoiser (DDPM loss, label dropout for guidance, EMA) on a prepared data folder; Ctrl+C checkpoints, --resume continues.")
        {
            data, output, type, preset, set, steps, batch, lr, wd, warmup, clip, timesteps, schedule, prediction, dropout, ema, hflip,
            gridSteps, gridPerClass, gridGuidance, evalEvery, ckEvery, logEvery, limit, valLimit, seed, resume, device, precision, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            long total = pr.GetValue(steps);
            int batchSize = pr.GetValue(batch);
            double rate = pr.GetValue(lr), decay = pr.GetValue(wd), emaDecay = pr.GetValue(ema), drop = pr.GetValue(dropout), gg = pr.GetValue(gridGuidance);
            int T = pr.GetValue(timesteps), gs = pr.GetValue(gridSteps), perClass = pr.GetValue(gridPerClass);
            if (total < 1) throw new UsageException($"--steps must be at least 1, got {total}");
            if (batchSize < 1) throw new UsageException($"--batch-size must be at least 1, got {batchSize}");
            if (!double.IsFinite(rate) || rate <= 0) throw new UsageException("--lr must be positive");
            if (!double.IsFinite(decay) || decay < 0) throw new UsageException("--weight-decay must be >= 0");
            if (!(emaDecay is >= 0 and < 1)) throw new UsageException($"--ema must be in [0, 1), got {emaDecay.ToString(Inv)}");
            if (!(drop is >= 0 and < 1)) throw new UsageException($"--class-dropout must be in [0, 1), got {drop.ToString(Inv)}");
            if (T < 2) throw new UsageException($"--timesteps must be at least 2, got {T}");
            if (perClass < 0) throw new UsageException("--grid-per-class must be >= 0");
            if (perClass > 0) { CheckSteps(gs, T, "--grid-steps"); CheckGuidance(gg, "--grid-guidance"); }
            if (pr.GetValue(warmup) is long w && (w < 0 || w > total)) throw new UsageException($"--warmup-steps must be in 0..{total}, got {w}");
            if (pr.GetValue(limit) is < 1) throw new UsageException("--train-limit must be at least 1");
            int valCount = pr.GetValue(valLimit);
            if (valCount < 0) throw new UsageException("--val-limit must be >= 0");
            foreach (var (name, v) in new[] { ("--eval-every", pr.GetValue(evalEvery)), ("--checkpoint-every", pr.GetValue(ckEvery)) })
                if (v is < 0) throw new UsageException($"{name} must be >= 0");
            var mixed = Cli.ParsePrecision(pr.GetValue(precision));
            string outDir = pr.GetValue(output)!;
            bool resuming = pr.GetValue(resume);
            bool existing = Directory.Exists(outDir) && (File.Exists(Path.Combine(outDir, ModelFolder.ConfigFile)) || Trainer.LatestCheckpoint(outDir) is not null);
            if (existing && !resuming)
                throw new UsageException($"{outDir}: already holds a training run; pass --resume to continue it, or choose another --out");

            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            var folder = DataFolder.Open(ResolveData(pr.GetValue(data)));
            var train = folder.Load("train");
            if (pr.GetValue(limit) is int lim) train = train.Take(lim);
            if (train.Height != train.Width) throw new InvalidDataException($"{train.Name}: images are {train.Height}x{train.Width}; the denoisers take square images");
            var val = folder.HasSplit("val") && valCount > 0 ? folder.Load("val").Take(valCount) : null;
            long warm = pr.GetValue(warmup) ?? (long)Math.Round(0.05 * total);
            long every = pr.GetValue(evalEvery) ?? Math.Max(1, total / 10);
            var settings = new DiffusionSettings(T, Enum.Parse<NoiseSchedule>(pr.GetValue(schedule)!, ignoreCase: true),
                pr.GetValue(prediction) == "v" ? PredictionType.V : PredictionType.Epsilon, drop);

            torch.manual_seed(pr.GetValue(seed));
            using var gen = ImageDiffusion.Create(pr.GetValue(type)!, pr.GetValue(preset), folder.Labels, train.Channels, train.Height,
                train.DarkBackground(), settings, ParseSets(pr.GetValue(set)).ToList()).To(dev);
            string flip = pr.GetValue(hflip)!;
            bool flips = flip == "auto" ? folder.HFlip : flip == "on";
            Console.Error.WriteLine(string.Create(Inv,
                $"{gen.ModelType} ({gen.ParameterCount:N0} parameters) on {dev}; {folder.Name}: {train.Count} train{(val is null ? "" : $", {val.Count} val")} images " +
                $"{train.Channels}x{train.Height}x{train.Width}, {folder.Labels.Count} classes; {total} steps of {batchSize} " +
                $"({(double)total * batchSize / train.Count:0.##} epochs), warm-up {warm}, T {T} {settings.Schedule.ToString().ToLowerInvariant()}, " +
                $"{settings.Prediction.ToString().ToLowerInvariant()} prediction{(flips ? ", flips" : "")}{(mixed == Precision.Bf16 ? ", bf16 mixed precision" : "")}"));

            var options = new TrainOptions
            {
                Steps = total, LearningRate = rate, WeightDecay = decay,
                // DiT's AdamW betas (0.9, 0.999); a cosine down to 10% of the peak after the warm-up.
                Beta1 = 0.9, Beta2 = 0.999, WarmupSteps = warm, MinLrRatio = 0.1, GradClip = pr.GetValue(clip),
                EvalEvery = every, CheckpointEvery = pr.GetValue(ckEvery) ?? every, LogEvery = pr.GetValue(logEvery),
                Seed = pr.GetValue(seed), OutputDir = outDir, Resume = resuming, Unit = "img",
            };
            var diffusionOptions = new DiffusionTrainOptions
            {
                BatchSize = batchSize, EmaDecay = emaDecay, GridPerClass = perClass, GridSteps = gs, GridGuidance = gg, HFlip = flips,
                Precision = mixed,
            };
            var result = ImageDiffusion.Train(gen, train, val, options, diffusionOptions, Cli.Interrupt);
            bool completed = result.Steps >= total;
            double? valLoss = result.LastEval.TryGetValue("val_loss", out double vl) ? vl : null;
            if (pr.GetValue(json))
            {
                var doc = new JsonObject
                {
                    ["out"] = outDir, ["completed"] = completed, ["steps"] = result.Steps, ["total_steps"] = total,
                    ["model_type"] = gen.ModelType, ["parameters"] = gen.ParameterCount,
                    ["last_loss"] = double.IsFinite(result.LastLoss) ? result.LastLoss : null, ["val_loss"] = valLoss,
                    ["resumed_from"] = result.ResumedFrom,
                };
                Console.WriteLine(doc.ToJsonString(Indented));
            }
            else if (!completed)
                Console.WriteLine($"stopped at step {result.Steps} of {total}; continue with the same command and --resume");
            else
            {
                if (valLoss is double v) Console.WriteLine($"val: loss {Num(v, "0.0000")}");
                Console.WriteLine($"model: {outDir} (EMA weights{(perClass > 0 ? $"; sample grids in {Path.Combine(outDir, "samples")}" : "")})");
            }
            return completed ? Cli.Ok : Cli.Interrupted;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ eval

    static Command EvalCommand(Defaults defaults)
    {
        var model = ModelOption();
        var data = DataOption();
        var split = new Option<string>("--split") { Description = "reference split the samples are compared with", DefaultValueFactory = _ => "test" };
        var floorSplit = new Option<string>("--floor-split")
        {
            Description = "real images scored against the reference as the floor (a perfect generator's score at this sample count: the first --samples images of the split); none: skip",
            DefaultValueFactory = _ => "train",
        };
        var classifier = new Option<string?>("--classifier")
        {
            Description = $"judge classifier folder (ssm-vision; vim or cnn); its features give the Frechet distance, its predictions the class fidelity; default: the embedded {DefaultJudgeName}",
            HelpName = "DIR",
        };
        var refLimit = new Option<int?>("--reference-limit") { Description = "use only the first N images of the reference split (default: all; quick trials)" };
        var samples = new Option<int>("--samples") { Description = "generated images per setting, classes in equal shares", DefaultValueFactory = _ => 1000 };
        var steps = new Option<string>("--steps") { Description = "DDIM step counts to try, a comma list", DefaultValueFactory = _ => "25,50" };
        var guidance = new Option<string>("--guidance", "-g") { Description = "guidance scales to try, a comma list (1: none, 0: unconditional)", DefaultValueFactory = _ => "1,2,4" };
        var seed = SeedOption("seed of the initial noise (every setting starts from the same noise)");
        var batch = new Option<int>("--batch-size", "--batch") { Description = "images denoised together", DefaultValueFactory = _ => 250 };
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption("the results");
        var cmd = new Command("eval",
            "Quality of generated images: Frechet distance on the judge classifier's features (generated vs the reference split; " +
            "real images vs the reference as the floor), class fidelity (share the judge assigns to the requested class), inception score and images/s, " +
            "for every combination of --steps and --guidance.")
        {
            model, data, split, floorSplit, refLimit, classifier, samples, steps, guidance, seed, batch, device, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            int n = pr.GetValue(samples), batchSize = pr.GetValue(batch);
            if (n < 2) throw new UsageException($"--samples must be at least 2, got {n}");
            if (batchSize < 1) throw new UsageException($"--batch-size must be at least 1, got {batchSize}");
            if (pr.GetValue(refLimit) is < 2) throw new UsageException("--reference-limit must be at least 2");
            var stepList = ParseList<int>(pr.GetValue(steps)!, "--steps", s => int.TryParse(s, NumberStyles.None, Inv, out int v) ? v : null);
            var guidanceList = ParseList<double>(pr.GetValue(guidance)!, "--guidance", s => double.TryParse(s, NumberStyles.Float, Inv, out double v) ? v : null);
            foreach (var g in guidanceList) CheckGuidance(g, "--guidance");
            string refSplit = pr.GetValue(split)!, floor = pr.GetValue(floorSplit)!;
            if (floor == refSplit) throw new UsageException($"--floor-split must differ from --split ({refSplit}): a split against itself has distance 0");

            var dev = Devices.Resolve(pr.GetValue(device), Console.Error);
            string dir = ResolveModel(pr.GetValue(model), defaults.Model);
            string judgeDir = ResolveJudge(pr.GetValue(classifier), defaults.Judge);
            using var gen = ImageDiffusion.Load(dir, dev);
            foreach (int s in stepList) CheckSteps(s, gen.Settings.Timesteps, "--steps");
            using var clf = ImageClassifier.Load(judgeDir, dev);
            CheckJudge(gen, clf, judgeDir);
            var folder = DataFolder.Open(ResolveData(pr.GetValue(data)));
            if (folder.Labels.Count != gen.Labels.Count)
                throw new InvalidDataException($"{folder.Dir}: the data has {folder.Labels.Count} classes, the model {gen.Labels.Count}");
            if (!folder.Labels.SequenceEqual(gen.Labels))
                Console.Error.WriteLine("warning: the data's class names differ from the model's; classes are matched by id");
            var reference = folder.Load(refSplit);
            if (pr.GetValue(refLimit) is int rl) reference = reference.Take(rl);
            if (reference.Channels != gen.Channels || reference.Height != gen.Size || reference.Width != gen.Size)
                throw new InvalidDataException($"{reference.Name}: images are {reference.Channels}x{reference.Height}x{reference.Width}, the model makes {gen.Channels}x{gen.Size}x{gen.Size}");

            // The judge's features of the reference split, once for the floor and every row.
            using var referenceFeatures = ImageDiffusion.ReferenceFeatures(clf, reference);
            double? floorFid = null;
            int floorCount = 0;
            if (floor != "none")
            {
                // As many real images as generated ones: the Frechet distance is biased upwards by small samples, so the
                // floor is only comparable at the same count.
                var real = folder.Load(floor).Take(n);
                floorCount = real.Count;
                Console.Error.WriteLine($"floor: {floorCount} real {floor} images vs {reference.Count} {refSplit} images");
                floorFid = ImageDiffusion.RealFid(clf, real, referenceFeatures);
            }
            // The simplest class-conditional generator on the same footing: per-class pixel means and variances of the
            // training split, sampled independently per pixel (ImageDiffusion.PixelGaussianSamples).
            var baselineClasses = Enumerable.Range(0, n).Select(i => i % gen.Labels.Count).ToArray();
            (double Fid, double ClassFidelity, double InceptionScore) baseline;
            using (var baseImages = ImageDiffusion.PixelGaussianSamples(folder.Load("train"), baselineClasses, pr.GetValue(seed)))
                baseline = ImageDiffusion.Score(clf, baseImages, baselineClasses, referenceFeatures);
            var rows = new List<DiffusionQuality>();
            foreach (int s in stepList)
                foreach (double g in guidanceList)
                    rows.Add(gen.Evaluate(clf, referenceFeatures, n, s, g, pr.GetValue(seed), batchSize, progress: true));

            if (pr.GetValue(json))
            {
                var doc = new JsonObject
                {
                    ["model"] = dir, ["model_type"] = gen.ModelType, ["classifier"] = judgeDir, ["classifier_type"] = clf.ModelType,
                    ["data"] = folder.Dir, ["reference"] = new JsonObject { ["split"] = refSplit, ["count"] = reference.Count },
                    ["floor"] = floorFid is double f ? new JsonObject { ["split"] = floor, ["count"] = floorCount, ["fid"] = f } : null,
                    ["baseline"] = new JsonObject
                    {
                        ["name"] = "per-class pixel Gaussian (train)", ["samples"] = n, ["fid"] = baseline.Fid,
                        ["class_fidelity"] = baseline.ClassFidelity, ["inception_score"] = baseline.InceptionScore,
                    },
                    ["seed"] = pr.GetValue(seed), ["device"] = dev.ToString(),
                    ["results"] = new JsonArray(rows.Select(r => (JsonNode?)r.ToJson()).ToArray()),
                };
                Console.WriteLine(doc.ToJsonString(Indented));
                return Cli.Ok;
            }
            Console.WriteLine($"model {dir} ({gen.ModelType}); judge {judgeDir} ({clf.ModelType}); reference {reference.Name} ({reference.Count} images); {n} samples per row, seed {pr.GetValue(seed)}");
            Console.WriteLine($"{"steps",6} {"guidance",8} {"FID",9} {"class fidelity",14} {"IS",7} {"images/s",9}");
            foreach (var r in rows)
                Console.WriteLine(string.Create(Inv, $"{r.Steps,6} {r.Guidance,8:0.##} {r.Fid,9:0.000} {r.ClassFidelity * 100,13:0.0}% {r.InceptionScore,7:0.00} {r.ImagesPerSecond,9:0.0}"));
            Console.WriteLine(string.Create(Inv, $"{"pixel Gaussian",-15} {baseline.Fid,9:0.000} {baseline.ClassFidelity * 100,13:0.0}% {baseline.InceptionScore,7:0.00}   (baseline: per-class pixel mean and variance of train)"));
            if (floorFid is double ff)
                Console.WriteLine(string.Create(Inv, $"{"real " + floor + " vs " + refSplit,-15} {ff,9:0.000}   (floor: {floorCount} real images)"));
            return Cli.Ok;
        }));
        return cmd;
    }

    /// <summary>The judge must see the images the model makes and know the same classes (checked before any work).</summary>
    static void CheckJudge(ImageDiffusion gen, ImageClassifier clf, string judgeDir)
    {
        if (clf.Model is not IImageFeatures)
            throw new InvalidDataException($"{judgeDir}: a {clf.ModelType} classifier exposes no features for the Frechet distance; use a vim or cnn classifier");
        try { gen.CheckJudge(clf); }
        catch (ArgumentException e) { throw new InvalidDataException($"{judgeDir}: {e.Message}"); }
        if (!clf.Labels.SequenceEqual(gen.Labels))
            Console.Error.WriteLine("warning: the classifier's class names differ from the model's; classes are matched by id");
    }

    // ------------------------------------------------------------------ info

    static Command InfoCommand(Defaults defaults)
    {
        var model = ModelOption();
        var type = new Option<string?>("--model-type") { Description = "show a fresh model of this architecture instead of a folder" }
            .AcceptOnlyFromAmong(ImageDiffusion.Architectures.Select(a => a.Name).ToArray());
        var preset = new Option<string?>("--preset") { Description = "with --model-type: the preset (default small28)" };
        var set = new Option<string[]>("--set") { Description = "with --model-type: change a config field, FIELD=VALUE", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var json = Cli.JsonOption("the information");
        var cmd = new Command("info", "Show a diffusion model's type, parameter count, config, labels and diffusion settings (a model folder, or an architecture's preset).")
        {
            model, type, preset, set, json,
        };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            ImageDiffusion gen;
            string source;
            if (pr.GetValue(type) is { } t)
            {
                if (pr.GetValue(model) is not null) throw new UsageException("give either --model or --model-type, not both");
                var arch = ImageDiffusion.Architecture(t);
                string p = pr.GetValue(preset) ?? arch.DefaultPreset;
                if (!arch.Presets.TryGetValue(p, out var cfg))
                    throw new UsageException($"unknown preset '{p}' for {arch.Name} (presets: {string.Join(", ", arch.Presets.Keys.Order())})");
                // The preset's own image size, channels and classes (names "0".."k-1").
                var fields = ConfigRecords.Fields(cfg, arch.ConfigType);
                int c = fields[ConfigRecords.Key("InChans")]!.GetValue<int>(), s = fields[ConfigRecords.Key("ImgSize")]!.GetValue<int>();
                int k = fields[ConfigRecords.Key("NumClasses")]!.GetValue<int>();
                gen = ImageDiffusion.Create(t, p, Enumerable.Range(0, k).Select(i => i.ToString(Inv)).ToArray(), c, s, overrides: ParseSets(pr.GetValue(set)).ToList());
                source = $"{arch.Name} preset {p}";
            }
            else
            {
                if (pr.GetValue(preset) is not null || pr.GetValue(set) is { Length: > 0 }) throw new UsageException("--preset and --set go with --model-type");
                source = ResolveModel(pr.GetValue(model), defaults.Model);
                gen = ImageDiffusion.Load(source);
            }
            using (gen)
            {
                var cfgJson = gen.ConfigJson();
                var presets = gen.Arch.Presets.Keys.Order().ToArray();
                if (pr.GetValue(json))
                {
                    var doc = new JsonObject
                    {
                        ["source"] = source, ["model_type"] = gen.ModelType, ["parameters"] = gen.ParameterCount,
                        ["presets"] = new JsonArray(presets.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray()),
                        ["config"] = cfgJson,
                    };
                    Console.WriteLine(doc.ToJsonString(Indented));
                    return Cli.Ok;
                }
                var st = gen.Settings;
                Console.WriteLine($"model:      {source}");
                Console.WriteLine($"type:       {gen.ModelType} ({gen.Arch.Description})");
                Console.WriteLine($"parameters: {gen.ParameterCount.ToString("N0", Inv)}");
                Console.WriteLine($"images:     {gen.Channels} x {gen.Size} x {gen.Size}, {(gen.DarkBackground ? "dark" : "light")} background");
                var shown = gen.Labels.Take(20).Select((l, i) => $"{i} {l}");
                Console.WriteLine($"labels:     {string.Join(", ", shown)}" + (gen.Labels.Count > 20 ? $", ... ({gen.Labels.Count} classes)" : ""));
                Console.WriteLine($"diffusion:  T {st.Timesteps}, {st.Schedule.ToString().ToLowerInvariant()} schedule, {st.Prediction.ToString().ToLowerInvariant()} prediction, class dropout {Num(st.ClassDropout, "0.###")}");
                Console.WriteLine($"presets:    {string.Join(", ", presets)}");
                Console.WriteLine("config:");
                foreach (var (key, v) in cfgJson)
                    if (key is not ("labels" or "model_type" or "diffusion" or "class_dropout" or "image_size" or "background"))
                        Console.WriteLine($"  {key} = {v?.ToJsonString()}");
                return Cli.Ok;
            }
        }));
        return cmd;
    }
}
