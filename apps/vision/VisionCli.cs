// ssm-vision: the image-classification CLI (thin: parse the command line, call Ssm.Vision, print).
//   classify IMAGE|DIR|GLOB...   top-k labels with probabilities (--json), batched; bad files are reported by name,
//                                the others are still classified, and the exit code is 1 if any failed
//   train                        trains a vim / vmamba / cnn classifier on a prepared data folder (data/README.md)
//   eval                         accuracy, per-class table, confusion matrix (text and --confusion-png heat map)
//   info                         a model's (or a preset's) config and parameter count
//   prepare-digits               OpenCV's digits.png -> a 28x28 IDX data folder (used by data/mnist-digits.sh)
// Results go to stdout, diagnostics and progress to stderr; user errors are one line "error: ..." and exit code 1.
// --device (Ssm.Apps.Cli.DeviceOption) defaults to auto: CUDA when available, with a one-line notice on stderr, else
// the CPU; Devices.Resolve's ArgumentException for a bad name or a missing GPU is one of those one-line errors.
using System.CommandLine;
using System.Globalization;
using System.IO.Enumeration;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone;
using Ssm.Backbone.IO;
using static TorchSharp.torch;

namespace Ssm.Vision.Cli;

public static class VisionCli
{
    /// <summary>Where the embedded default model is copied at build and publish (see ssm-vision.csproj).</summary>
    public static string DefaultModelDir => Path.Combine(AppContext.BaseDirectory, "models", "fashion-mnist-vim");

    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Runs the CLI with the given output streams (in-process use and tests); returns the exit code.</summary>
    /// <param name="defaultModelDir">The default model folder (null: <see cref="DefaultModelDir"/>).</param>
    public static Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, string? defaultModelDir = null)
    {
        var root = Build(stdout, stderr, defaultModelDir ?? DefaultModelDir);
        var config = new InvocationConfiguration
        {
            Output = stdout, Error = stderr,
            // Ctrl+C during training: the trainer checkpoints at the next step and returns; give it time to do so.
            ProcessTerminationTimeout = TimeSpan.FromSeconds(60),
        };
        return Ssm.Apps.Cli.InvokeAsync(root, args, config);
    }

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, string? defaultModelDir = null) =>
        RunAsync(args, stdout, stderr, defaultModelDir).GetAwaiter().GetResult();

    /// <summary>An error in what the user asked for: printed as one line, exit code 1.</summary>
    sealed class UserError(string message) : Exception(message);

    static RootCommand Build(TextWriter o, TextWriter e, string defaultModel)
    {
        var root = new RootCommand("Image classification with state-space models (Vision Mamba, VMamba) and a CNN baseline.");
        root.Subcommands.Add(ClassifyCommand(o, e, defaultModel));
        root.Subcommands.Add(TrainCommand(o, e));
        root.Subcommands.Add(EvalCommand(o, e, defaultModel));
        root.Subcommands.Add(InfoCommand(o, e, defaultModel));
        root.Subcommands.Add(PrepareDigitsCommand(o, e));
        root.Subcommands.Add(Ssm.Apps.Doctor.Create());
        return root;
    }

    // ------------------------------------------------------------------ shared options

    static Option<string?> ModelOption() => new("--model", "-m")
    {
        Description = "model folder (config.json + model.safetensors); default: the embedded Fashion-MNIST Vim",
        HelpName = "DIR",
    };

    static Option<bool> JsonOption(string what) => new("--json") { Description = $"print {what} as JSON on stdout" };

    static Option<int> PositiveInt(string name, string description, int defaultValue)
    {
        var opt = new Option<int>(name) { Description = description, DefaultValueFactory = _ => defaultValue };
        opt.Validators.Add(r => { if (r.GetValueOrDefault<int>() < 1) r.AddError($"{name} must be at least 1"); });
        return opt;
    }

    static string ResolveModel(string? given, string defaultModel)
    {
        if (given is not null) return given;
        if (File.Exists(Path.Combine(defaultModel, ModelFolder.ConfigFile)) && File.Exists(Path.Combine(defaultModel, ModelFolder.WeightsFile)))
            return defaultModel;
        throw new UserError($"no default model is installed (looked in {defaultModel}); pass --model DIR, or train one: " +
            "data/fashion-mnist.sh && ssm-vision train --data data/cache/fashion-mnist --model-type vim --out models/fashion-mnist-vim " +
            "(see data/README.md; a build copies models/fashion-mnist-vim next to the app)");
    }

    /// <summary>Runs a command body; every exception becomes one "error:" line (a stack trace only with SSM_DEBUG=1).</summary>
    static int Guard(TextWriter err, Func<int> body)
    {
        try { return body(); }
        catch (Exception ex) when (ex is UserError or InvalidDataException or ArgumentException or IOException or UnauthorizedAccessException
            or JsonException or InvalidOperationException or OperationCanceledException or NotSupportedException)
        {
            err.WriteLine("error: " + OneLine(ex.Message));
            Debug(err, ex);
            return 1;
        }
        catch (Exception ex)
        {
            // libtorch failures (out of memory, a CUDA error) arrive as ExternalException with a C++ trace appended.
            err.WriteLine($"error: {OneLine(ex.Message)} ({ex.GetType().Name})");
            Debug(err, ex);
            return 70;
        }
    }

    static void Debug(TextWriter err, Exception ex)
    {
        if (Environment.GetEnvironmentVariable("SSM_DEBUG") == "1") err.WriteLine(ex);
    }

    static string OneLine(string message)
    {
        string first = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? "";
        return first.Length > 0 ? first : "unknown error";
    }

    static IEnumerable<KeyValuePair<string, string>> ParseSets(string[]? sets)
    {
        foreach (var s in sets ?? [])
        {
            int eq = s.IndexOf('=');
            if (eq <= 0) throw new UserError($"--set '{s}': expected FIELD=VALUE (e.g. --set depth=12)");
            yield return new(s[..eq].Trim().Replace('-', '_'), s[(eq + 1)..].Trim());
        }
    }

    // ------------------------------------------------------------------ classify

    static Command ClassifyCommand(TextWriter o, TextWriter e, string defaultModel)
    {
        var inputs = new Argument<string[]>("inputs")
        {
            Description = "image files (PNG, JPEG, BMP, GIF, TGA), directories (their images) or quoted globs ('shots/*.jpg', 'data/**/*.png')",
            Arity = ArgumentArity.OneOrMore,
        };
        var model = ModelOption();
        var topK = PositiveInt("--top-k", "how many labels to show per image", 3);
        var json = JsonOption("the predictions");
        var batch = PositiveInt("--batch-size", "images per forward pass", 64);
        var device = Ssm.Apps.Cli.DeviceOption();
        var invert = new Option<string>("--invert")
        {
            Description = "invert intensities: auto (for models trained on light-on-dark images, invert inputs with a light border), always, never",
            DefaultValueFactory = _ => "auto",
        }.AcceptOnlyFromAmong("auto", "always", "never");
        var cmd = new Command("classify", "Classify images: top-k labels with probabilities.") { inputs, model, topK, json, batch, device, invert };
        cmd.SetAction(pr => Guard(e, () => Classify(o, e, defaultModel, pr.GetValue(inputs)!, pr.GetValue(model), pr.GetValue(topK),
            pr.GetValue(json), pr.GetValue(batch), pr.GetValue(device)!, Enum.Parse<InvertMode>(pr.GetValue(invert)!, ignoreCase: true))));
        return cmd;
    }

    static int Classify(TextWriter o, TextWriter e, string defaultModel, string[] inputs, string? modelDir, int topK, bool json,
        int batchSize, string device, InvertMode invert)
    {
        var dev = Devices.Resolve(device, e);
        string dir = ResolveModel(modelDir, defaultModel);
        using var clf = ImageClassifier.Load(dir, dev);
        var errors = new List<(string File, string Error)>();
        void Fail(string file, string message)
        {
            errors.Add((file, message));
            e.WriteLine("error: " + OneLine(message));
        }
        var files = ExpandInputs(inputs, Fail);
        var results = new JsonArray();
        for (int start = 0; start < files.Count; start += batchSize)
        {
            var chunk = files.Skip(start).Take(batchSize).ToList();
            var ok = new List<string>();
            var tensors = new List<Tensor>();
            try
            {
                foreach (var f in chunk)
                {
                    try
                    {
                        tensors.Add(clf.Prepare(ImageIO.Load(f), invert));
                        ok.Add(f);
                    }
                    catch (InvalidDataException ex) { Fail(f, ex.Message); }
                }
                var preds = clf.Classify(tensors, topK, batchSize);
                for (int i = 0; i < ok.Count; i++)
                {
                    if (json)
                        results.Add(new JsonObject
                        {
                            ["file"] = ok[i],
                            ["predictions"] = new JsonArray(preds[i].Select(p => (JsonNode)new JsonObject
                            {
                                ["label"] = p.Label, ["index"] = p.Index, ["probability"] = Math.Round(p.Probability, 6),
                            }).ToArray()),
                        });
                    else
                        o.WriteLine($"{ok[i]}: " + string.Join(", ", preds[i].Select(p => $"{p.Label} {(p.Probability * 100).ToString("0.0", Inv)}%")));
                }
            }
            finally { foreach (var t in tensors) t.Dispose(); }
        }
        if (json)
        {
            var doc = new JsonObject
            {
                ["model"] = dir, ["model_type"] = clf.ModelType, ["results"] = results,
                ["errors"] = new JsonArray(errors.Select(x => (JsonNode)new JsonObject { ["file"] = x.File, ["error"] = x.Error }).ToArray()),
            };
            o.WriteLine(doc.ToJsonString(Indented));
        }
        return errors.Count > 0 ? 1 : 0;
    }

    /// <summary>
    /// Files named by the inputs: a file as given (a missing one is reported when it is read), a directory's image files
    /// (sorted), or a glob's matches (* and ? within a name, ** for any depth; sorted). Inputs that name nothing are
    /// reported through <paramref name="fail"/>.
    /// </summary>
    public static List<string> ExpandInputs(IEnumerable<string> inputs, Action<string, string> fail)
    {
        var files = new List<string>();
        foreach (var input in inputs)
        {
            if (Directory.Exists(input))
            {
                var found = Directory.EnumerateFiles(input).Where(ImageIO.HasImageExtension).Order(StringComparer.Ordinal).ToList();
                if (found.Count == 0) fail(input, $"{input}: no image files ({string.Join(", ", ImageIO.Extensions)}) in this directory");
                files.AddRange(found);
            }
            else if (input.IndexOfAny(['*', '?']) >= 0)
            {
                var found = Glob(input);
                if (found.Count == 0) fail(input, $"{input}: no files match");
                files.AddRange(found);
            }
            else files.Add(input);
        }
        return files;
    }

    /// <summary>Expands a glob pattern (segments separated by '/'; '*', '?' within a segment; '**' any number of directories).</summary>
    public static List<string> Glob(string pattern)
    {
        string p = pattern.Replace('\\', '/');
        bool rooted = p.StartsWith('/');
        var parts = p.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var found = new SortedSet<string>(StringComparer.Ordinal);
        GlobFrom(rooted ? "/" : "", parts, 0, found);
        return found.ToList();
    }

    static void GlobFrom(string dir, string[] parts, int i, SortedSet<string> found)
    {
        if (i >= parts.Length) return;
        string real = dir.Length == 0 ? "." : dir;
        if (!Directory.Exists(real)) return;
        string seg = parts[i];
        bool last = i == parts.Length - 1;
        static string Join(string d, string name) => d.Length == 0 ? name : d.EndsWith('/') ? d + name : d + "/" + name;
        if (seg == "**")
        {
            if (last) { foreach (var f in Directory.EnumerateFiles(real, "*", SearchOption.AllDirectories)) found.Add(Join(dir, Path.GetRelativePath(real, f))); return; }
            GlobFrom(dir, parts, i + 1, found);
            foreach (var sub in Directory.EnumerateDirectories(real))
                if (!Path.GetFileName(sub).StartsWith('.')) GlobFrom(Join(dir, Path.GetFileName(sub)), parts, i, found);
            return;
        }
        if (seg.IndexOfAny(['*', '?']) < 0)
        {
            string next = Join(dir, seg);
            if (last) { if (File.Exists(next)) found.Add(next); }
            else GlobFrom(next, parts, i + 1, found);
            return;
        }
        // Like a shell, a wildcard does not match a leading dot unless the pattern starts with one.
        bool Matches(string name) => (!name.StartsWith('.') || seg.StartsWith('.')) && FileSystemName.MatchesSimpleExpression(seg, name, ignoreCase: false);
        if (last)
        {
            foreach (var f in Directory.EnumerateFiles(real)) if (Matches(Path.GetFileName(f))) found.Add(Join(dir, Path.GetFileName(f)));
        }
        else
        {
            foreach (var d in Directory.EnumerateDirectories(real)) if (Matches(Path.GetFileName(d))) GlobFrom(Join(dir, Path.GetFileName(d)), parts, i + 1, found);
        }
    }

    // ------------------------------------------------------------------ train

    static Command TrainCommand(TextWriter o, TextWriter e)
    {
        var data = new Option<string>("--data") { Description = "prepared data folder (data/fashion-mnist.sh, data/mnist-digits.sh)", Required = true, HelpName = "DIR" };
        var output = new Option<string>("--out") { Description = "output folder: checkpoints, log.jsonl, the final model, eval.json, confusion.png", Required = true, HelpName = "DIR" };
        var type = new Option<string>("--model-type") { Description = "architecture", DefaultValueFactory = _ => "vim" }
            .AcceptOnlyFromAmong(ImageClassifier.Architectures.Select(a => a.Name).ToArray());
        var preset = new Option<string?>("--preset")
        {
            Description = "config preset of the architecture (" + string.Join("; ", ImageClassifier.Architectures.Select(a =>
                $"{a.Name}: {string.Join(", ", a.Presets.Keys.Order())}")) + "); default " + ImageClassifier.Architectures[0].DefaultPreset,
        };
        var set = new Option<string[]>("--set")
        {
            Description = "change a config field, FIELD=VALUE, repeatable (e.g. --set depth=12 --set embed_dim=192)",
            Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE",
        };
        var epochs = new Option<double>("--epochs") { Description = "training length in epochs", DefaultValueFactory = _ => 10 };
        var steps = new Option<long?>("--steps") { Description = "training length in optimizer steps (overrides --epochs)" };
        var batch = PositiveInt("--batch-size", "images per step", 128);
        var lr = new Option<double>("--lr") { Description = "peak learning rate (AdamW; linear warm-up, then cosine to 1%)", DefaultValueFactory = _ => 1e-3 };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW decoupled weight decay (matrices only)", DefaultValueFactory = _ => 0.05 };
        var warmup = new Option<long?>("--warmup-steps") { Description = "linear warm-up steps (default: 5% of the run)" };
        var smoothing = new Option<double>("--label-smoothing") { Description = "label smoothing of the cross entropy", DefaultValueFactory = _ => 0.1 };
        var crop = new Option<int>("--crop-padding") { Description = "random-crop augmentation: pad by this many pixels, crop back (0: off)", DefaultValueFactory = _ => 2 };
        var hflip = new Option<string>("--hflip") { Description = "random horizontal flips: auto (as the data folder says: Fashion-MNIST yes, digits no), on, off", DefaultValueFactory = _ => "auto" }
            .AcceptOnlyFromAmong("auto", "on", "off");
        var seed = new Option<long>("--seed") { Description = "seed of the initialisation, data order and augmentation", DefaultValueFactory = _ => 0 };
        var resume = new Option<bool>("--resume") { Description = "continue from the newest checkpoint in --out (same settings and seed)" };
        var device = Ssm.Apps.Cli.DeviceOption();
        var evalEvery = new Option<long?>("--eval-every") { Description = "validate every N steps (default: every epoch; 0: only at the end)" };
        var ckEvery = new Option<long?>("--checkpoint-every") { Description = "checkpoint every N steps (default: every epoch; 0: only at the end)" };
        var logEvery = new Option<long>("--log-every") { Description = "a log.jsonl line every N steps", DefaultValueFactory = _ => 50 };
        var limit = new Option<int?>("--train-limit") { Description = "use only the first N training images (quick trials)" };
        var precision = Ssm.Apps.Cli.PrecisionOption();
        var json = JsonOption("the final summary");
        var cmd = new Command("train", "Train a classifier on a prepared data folder; evaluates the final model on the test split.")
        {
            data, output, type, preset, set, epochs, steps, batch, lr, wd, warmup, smoothing, crop, hflip, seed, resume, device,
            evalEvery, ckEvery, logEvery, limit, precision, json,
        };
        cmd.SetAction((pr, cancel) => Task.Run(() => Guard(e, () =>
        {
            string flip = pr.GetValue(hflip)!;
            var mixed = Ssm.Backbone.Training.MixedPrecision.Parse(pr.GetValue(precision));
            var job = new TrainJob
            {
                DataDir = pr.GetValue(data)!, OutputDir = pr.GetValue(output)!, ModelType = pr.GetValue(type)!,
                Preset = pr.GetValue(preset), Overrides = ParseSets(pr.GetValue(set)).ToList(), Epochs = pr.GetValue(epochs),
                Steps = pr.GetValue(steps), BatchSize = pr.GetValue(batch), LearningRate = pr.GetValue(lr), WeightDecay = pr.GetValue(wd),
                WarmupSteps = pr.GetValue(warmup), LabelSmoothing = pr.GetValue(smoothing), CropPadding = pr.GetValue(crop),
                HFlip = flip == "auto" ? null : flip == "on", Seed = pr.GetValue(seed), Resume = pr.GetValue(resume),
                Device = Devices.Resolve(pr.GetValue(device), e), EvalEvery = pr.GetValue(evalEvery), CheckpointEvery = pr.GetValue(ckEvery),
                LogEvery = pr.GetValue(logEvery), TrainLimit = pr.GetValue(limit), Precision = mixed,
            };
            var s = ClassificationJob.Run(job, e, cancel);
            if (pr.GetValue(json))
            {
                var doc = new JsonObject
                {
                    ["out"] = job.OutputDir, ["completed"] = s.Completed, ["steps"] = s.Result.Steps, ["total_steps"] = s.TotalSteps,
                    ["parameters"] = s.Parameters, ["last_loss"] = double.IsFinite(s.Result.LastLoss) ? s.Result.LastLoss : null,
                    ["val_accuracy"] = s.ValAccuracy, ["test"] = s.Test?.ToJson(),
                };
                o.WriteLine(doc.ToJsonString(Indented));
            }
            else if (!s.Completed)
                o.WriteLine($"stopped at step {s.Result.Steps} of {s.TotalSteps}; continue with the same command and --resume");
            else
            {
                if (s.ValAccuracy is double va) o.WriteLine($"val: accuracy {(va * 100).ToString("0.00", Inv)}%");
                if (s.Test is not null) o.Write(s.Test.Format());
                o.WriteLine($"model: {job.OutputDir}" + (s.Test is not null ? $" (eval.json, confusion.png beside it)" : ""));
            }
            return s.Completed ? 0 : 130;
        }), CancellationToken.None));
        return cmd;
    }

    // ------------------------------------------------------------------ eval

    static Command EvalCommand(TextWriter o, TextWriter e, string defaultModel)
    {
        var model = ModelOption();
        var data = new Option<string>("--data") { Description = "prepared data folder", Required = true, HelpName = "DIR" };
        var split = new Option<string>("--split") { Description = "which split: test, val or train", DefaultValueFactory = _ => "test" };
        var batch = PositiveInt("--batch-size", "images per forward pass", 500);
        var device = Ssm.Apps.Cli.DeviceOption();
        var png = new Option<string?>("--confusion-png") { Description = "write the confusion matrix as a PNG heat map", HelpName = "FILE" };
        var errorsPng = new Option<string?>("--errors-png") { Description = "write a grid of up to 64 misclassified images", HelpName = "FILE" };
        var limit = new Option<int?>("--limit") { Description = "evaluate only the first N images of the split" };
        var json = JsonOption("the results");
        var cmd = new Command("eval", "Evaluate a model on a data split: accuracy, per-class accuracy and the confusion matrix.")
        {
            model, data, split, batch, device, png, errorsPng, limit, json,
        };
        cmd.SetAction(pr => Guard(e, () =>
        {
            var dev = Devices.Resolve(pr.GetValue(device), e);
            string dir = ResolveModel(pr.GetValue(model), defaultModel);
            using var clf = ImageClassifier.Load(dir, dev);
            var folder = DataFolder.Open(pr.GetValue(data)!);
            if (folder.Labels.Count != clf.Labels.Count)
                throw new UserError($"{folder.Dir}: the data has {folder.Labels.Count} classes, the model {clf.Labels.Count}");
            if (!folder.Labels.SequenceEqual(clf.Labels))
                e.WriteLine($"warning: the data's class names differ from the model's; the model's are shown");
            string name = pr.GetValue(split)!;
            var ds = folder.Load(name);
            if (pr.GetValue(limit) is int n) ds = ds.Take(n);
            var r = Classification.Evaluate(clf, ds, pr.GetValue(batch), name, progress: true);
            if (pr.GetValue(png) is { } pngPath) ImageIO.SavePng(pngPath, ImageIO.ConfusionHeatMap(r.Confusion));
            if (pr.GetValue(errorsPng) is { } ePath)
            {
                var wrong = Classification.Mistakes(clf, ds, 64, pr.GetValue(batch));
                if (wrong.Count > 0)
                {
                    using var imgs = torch.tensor(wrong.SelectMany(w => ds.Pixels.AsSpan((int)(w.Index * ds.ImageBytes), (int)ds.ImageBytes).ToArray()).ToArray(),
                        [wrong.Count, ds.Channels, ds.Height, ds.Width]);
                    using var unit = Classification.ToUnit(imgs);
                    ImageIO.SavePng(ePath, ImageIO.Grid(unit, 8, 2, 2));
                    e.WriteLine($"{ePath}: {wrong.Count} misclassified images, row-major; " + string.Join(", ", wrong.Take(16).Select(w => $"{clf.Labels[ds.Labels[w.Index]]}->{clf.Labels[w.Predicted]}")) + (wrong.Count > 16 ? ", ..." : ""));
                }
                else e.WriteLine($"{ePath}: not written, no image was misclassified");
            }
            if (pr.GetValue(json))
            {
                var doc = r.ToJson();
                doc["model"] = dir;
                doc["model_type"] = clf.ModelType;
                o.WriteLine(doc.ToJsonString(Indented));
            }
            else o.Write(r.Format());
            return 0;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ info

    static Command InfoCommand(TextWriter o, TextWriter e, string defaultModel)
    {
        var model = ModelOption();
        var type = new Option<string?>("--model-type") { Description = "show a fresh model of this architecture instead of a folder" }
            .AcceptOnlyFromAmong(ImageClassifier.Architectures.Select(a => a.Name).ToArray());
        var preset = new Option<string?>("--preset") { Description = "with --model-type: the preset (default small28)" };
        var set = new Option<string[]>("--set") { Description = "with --model-type: change a config field, FIELD=VALUE", Arity = ArgumentArity.ZeroOrMore, HelpName = "FIELD=VALUE" };
        var json = JsonOption("the information");
        var cmd = new Command("info", "Show a model's config and parameter count (a model folder, or an architecture's preset).") { model, type, preset, set, json };
        cmd.SetAction(pr => Guard(e, () =>
        {
            ImageClassifier clf;
            string source;
            if (pr.GetValue(type) is { } t)
            {
                if (pr.GetValue(model) is not null) throw new UserError("give either --model or --model-type, not both");
                var arch = ImageClassifier.Architecture(t);
                string p = pr.GetValue(preset) ?? arch.DefaultPreset;
                if (!arch.Presets.TryGetValue(p, out var cfg))
                    throw new UserError($"unknown preset '{p}' for {arch.Name} (presets: {string.Join(", ", arch.Presets.Keys.Order())})");
                // The preset's own input size and classes; normalisation as for data in [0, 1] centred at 0.5.
                var fields = (JsonObject)JsonSerializer.SerializeToNode(cfg, arch.ConfigType, ImageClassifier.ConfigJsonOptions)!;
                int c = fields["in_chans"]!.GetValue<int>(), s = fields["img_size"]!.GetValue<int>(), k = fields["num_classes"]!.GetValue<int>();
                var spec = new ImageSpec(c, s, Enumerable.Repeat(0.5f, c).ToArray(), Enumerable.Repeat(0.5f, c).ToArray());
                clf = ImageClassifier.Create(t, p, Enumerable.Range(0, k).Select(i => i.ToString(Inv)).ToArray(), spec, ParseSets(pr.GetValue(set)).ToList());
                source = $"{arch.Name} preset {p}";
            }
            else
            {
                source = ResolveModel(pr.GetValue(model), defaultModel);
                clf = ImageClassifier.Load(source);
            }
            using (clf)
            {
                var cfgJson = clf.ConfigJson();
                if (pr.GetValue(json))
                {
                    var doc = new JsonObject
                    {
                        ["source"] = source, ["model_type"] = clf.ModelType, ["parameters"] = clf.ParameterCount,
                        ["presets"] = new JsonArray(clf.Arch.Presets.Keys.Order().Select(x => (JsonNode?)JsonValue.Create(x)).ToArray()),
                        ["config"] = cfgJson,
                    };
                    o.WriteLine(doc.ToJsonString(Indented));
                    return 0;
                }
                o.WriteLine($"model:      {source}");
                o.WriteLine($"type:       {clf.ModelType} ({clf.Arch.Description})");
                o.WriteLine($"parameters: {clf.ParameterCount.ToString("N0", Inv)}");
                o.WriteLine($"input:      {clf.Spec.Channels} x {clf.Spec.Size} x {clf.Spec.Size}, mean [{string.Join(", ", clf.Spec.Mean.Select(v => v.ToString("0.####", Inv)))}], " +
                    $"std [{string.Join(", ", clf.Spec.Std.Select(v => v.ToString("0.####", Inv)))}], {(clf.Spec.DarkBackground ? "dark" : "light")} background");
                var shown = clf.Labels.Take(20).Select((l, i) => $"{i} {l}");
                o.WriteLine($"labels:     {string.Join(", ", shown)}" + (clf.Labels.Count > 20 ? $", ... ({clf.Labels.Count} classes)" : ""));
                o.WriteLine($"presets:    {string.Join(", ", clf.Arch.Presets.Keys.Order())}");
                o.WriteLine("config:");
                foreach (var (k, v) in cfgJson)
                    if (k is not ("labels" or "model_type")) o.WriteLine($"  {k} = {v?.ToJsonString()}");
                return 0;
            }
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ prepare-digits

    static Command PrepareDigitsCommand(TextWriter o, TextWriter e)
    {
        var png = new Option<string>("--png")
        {
            Description = "OpenCV's digits.png (Debian opencv-doc)", HelpName = "FILE",
            DefaultValueFactory = _ => "/usr/share/doc/opencv-doc/examples/data/digits.png",
        };
        var output = new Option<string>("--out") { Description = "output data folder", Required = true, HelpName = "DIR" };
        var cmd = new Command("prepare-digits", "Cut OpenCV's digits.png (5,000 MNIST digits, 20x20) into a 28x28 IDX data folder: train 3,600 / val 400 / test 1,000.")
        {
            png, output,
        };
        cmd.SetAction(pr => Guard(e, () =>
        {
            string dir = pr.GetValue(output)!;
            OpenCvDigits.Prepare(pr.GetValue(png)!, dir);
            o.WriteLine($"{dir}: train 3600, val 400, test 1000 images (28x28), dataset.json");
            return 0;
        }));
        return cmd;
    }
}
