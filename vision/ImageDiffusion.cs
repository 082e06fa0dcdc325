// Class-conditional image diffusion for every denoiser of the suite (DiffuSSM, DiS) behind one type: the model
// folder, training (DDPM loss, classifier-free-guidance label dropout, EMA, sample grids), sampling (DDIM with
// guidance) and the quality numbers (Frechet distance on a suite classifier's features, class fidelity).
//
// Model folder (Hugging Face layout, through Ssm.Backbone.IO.ModelFolder):
//   config.json         {"model_type": "diffussm" | "dis", ...the architecture's config (snake_case)...,
//                        "labels": [class names], "image_size": s, "in_chans": c, "background": "dark" | "light",
//                        "diffusion": {"timesteps": T, "schedule": "linear" | "cosine", "prediction": "epsilon" | "v"},
//                        "class_dropout": p}
//   model.safetensors   the EMA weights (what sampling uses); training checkpoints also keep the raw weights, the
//                       optimizer state and the EMA (extra.safetensors) for an exact resume
// Pixels: a byte v is the model value v / 127.5 - 1 in [-1, 1] (DDPM's scaling); samples map back and round.
//
// Shapes: n images, c channels, s side, k classes.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.Generation;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>One denoiser architecture: its model_type, config record type, default preset and constructor.</summary>
public sealed record DenoiserArchitecture(string Name, Type ConfigType, string DefaultPreset,
    Func<object, nn.Module<Tensor, Tensor, Tensor, Tensor>> Build, string Description)
{
    public IReadOnlyDictionary<string, object> Presets => ConfigRecords.Presets(ConfigType);
}

/// <summary>The diffusion process settings stored with a model.</summary>
public sealed record DiffusionSettings(int Timesteps = 1000, NoiseSchedule Schedule = NoiseSchedule.Linear,
    PredictionType Prediction = PredictionType.Epsilon, double ClassDropout = 0.1)
{
    public void Validate()
    {
        if (Timesteps < 2) throw new ArgumentException($"diffusion timesteps must be at least 2, got {Timesteps}");
        if (ClassDropout is < 0 or >= 1) throw new ArgumentException($"class dropout must be in [0, 1), got {ClassDropout}");
    }
}

/// <summary>Training settings beyond the Trainer's (batch, EMA, sample grids).</summary>
public sealed record DiffusionTrainOptions
{
    public int BatchSize { get; init; } = 128;
    public double EmaDecay { get; init; } = 0.999;
    /// <summary>Images per class in the sample grid written at each evaluation (0: none).</summary>
    public int GridPerClass { get; init; } = 8;
    public int GridSteps { get; init; } = 50;
    public double GridGuidance { get; init; } = 2.0;
    /// <summary>Horizontal flips as augmentation (only where classes are mirror-symmetric).</summary>
    public bool HFlip { get; init; }
    /// <summary>
    /// Bf16: the denoiser computes in bf16 while the SSM parameters (A, D, dt bias), AdamW's master weights and the
    /// EMA stay float32 (MixedPrecision.Apply, applied by Train before the optimizer and the EMA are made); the loss
    /// is float32, and the published model is the float32 EMA. Fp32 leaves the model as it is.
    /// </summary>
    public Precision Precision { get; init; } = Precision.Fp32;
}

/// <summary>Quality of generated images against real ones, from a suite classifier.</summary>
public sealed record DiffusionQuality(int Samples, int Steps, double Guidance, double Fid, double ClassFidelity,
    double InceptionScore, double ImagesPerSecond)
{
    public JsonObject ToJson() => new()
    {
        ["samples"] = Samples, ["steps"] = Steps, ["guidance"] = Guidance, ["fid"] = Fid,
        ["class_fidelity"] = ClassFidelity, ["inception_score"] = InceptionScore, ["images_per_second"] = ImagesPerSecond,
    };
}

public sealed class ImageDiffusion : IDisposable
{
    public static IReadOnlyList<DenoiserArchitecture> Architectures { get; } =
    [
        new("diffussm", typeof(DiffuSSMConfig), "small28", c => new DiffuSSM((DiffuSSMConfig)c),
            "DiffuSSM: pixels as a sequence, hourglass dense layers around a gated bidirectional Mamba, adaLN-Zero"),
        new("dis", typeof(DiSConfig), "small28", c => new DiS((DiSConfig)c),
            "DiS: Vim blocks over patches, time and class as tokens, U-ViT long skips"),
    ];

    public static DenoiserArchitecture Architecture(string modelType) =>
        Architectures.FirstOrDefault(a => a.Name.Equals(modelType, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"unknown model type '{modelType}' (expected {string.Join(", ", Architectures.Select(a => a.Name))})");

    static readonly string[] ReservedKeys = ["model_type", "labels", "image_size", "background", "diffusion", "class_dropout"];

    public DenoiserArchitecture Arch { get; }
    public string ModelType => Arch.Name;
    public object Config { get; }
    public nn.Module<Tensor, Tensor, Tensor, Tensor> Model { get; }
    public IReadOnlyList<string> Labels { get; }
    public int Channels { get; }
    public int Size { get; }
    public bool DarkBackground { get; }
    public DiffusionSettings Settings { get; }
    public GaussianDiffusion Process { get; }

    /// <summary>The class id of the unconditional branch (= the number of classes).</summary>
    public long NullClass => Labels.Count;

    public Device Device { get; private set; } = torch.CPU;

    ImageDiffusion(DenoiserArchitecture arch, object config, IReadOnlyList<string> labels, int channels, int size, bool dark, DiffusionSettings settings)
    {
        settings.Validate();
        Arch = arch; Config = config; Labels = labels; Channels = channels; Size = size; DarkBackground = dark; Settings = settings;
        Process = new GaussianDiffusion(settings.Timesteps, settings.Schedule, settings.Prediction);
        Model = arch.Build(config);
    }

    public long ParameterCount => Model.parameters().DistinctBy(p => p.Handle).Sum(p => p.numel());

    public ImageDiffusion To(Device device)
    {
        Model.to(device);
        Device = device;
        return this;
    }

    /// <summary>A new, randomly initialised model: the preset with in_chans, num_classes and img_size from the data, then overrides.</summary>
    public static ImageDiffusion Create(string modelType, string? preset, IReadOnlyList<string> labels, int channels, int size,
        bool darkBackground = true, DiffusionSettings? settings = null, IEnumerable<KeyValuePair<string, string>>? overrides = null)
    {
        if (labels.Count < 1) throw new ArgumentException("a class-conditional model needs at least one class");
        if (channels <= 0 || size <= 0) throw new ArgumentException("image channels and size must be positive");
        var arch = Architecture(modelType);
        var fixedFields = new Dictionary<string, JsonNode?>
        {
            [ConfigRecords.Key("InChans")] = channels, [ConfigRecords.Key("NumClasses")] = labels.Count, [ConfigRecords.Key("ImgSize")] = size,
        };
        object config = ConfigRecords.Build(arch.Name, arch.ConfigType, preset ?? arch.DefaultPreset, fixedFields, overrides);
        return new ImageDiffusion(arch, config, labels.ToArray(), channels, size, darkBackground, settings ?? new DiffusionSettings());
    }

    /// <summary>config.json's content.</summary>
    public JsonObject ConfigJson()
    {
        var o = new JsonObject { ["model_type"] = ModelType };
        foreach (var (k, v) in ConfigRecords.Fields(Config, Arch.ConfigType)) o[k] = v?.DeepClone();
        o["labels"] = new JsonArray(Labels.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray());
        o["image_size"] = Size;
        o["background"] = DarkBackground ? "dark" : "light";
        o["diffusion"] = new JsonObject
        {
            ["timesteps"] = Settings.Timesteps,
            ["schedule"] = Settings.Schedule.ToString().ToLowerInvariant(),
            ["prediction"] = Settings.Prediction.ToString().ToLowerInvariant(),
        };
        o["class_dropout"] = Settings.ClassDropout;
        return o;
    }

    public void Save(string dir) => ModelFolder.Save(dir, Model, ConfigJson());

    /// <summary>Reads a model folder; every problem is an InvalidDataException naming the file.</summary>
    public static ImageDiffusion Load(string dir, Device? device = null)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: model folder not found");
        var json = ModelFolder.ReadConfig(dir);
        string path = Path.Combine(dir, ModelFolder.ConfigFile);
        var gen = FromConfig(json, path);
        return ModelFolder.LoadOwned(dir, gen, gen.Model, m =>
        {
            if (device is not null) m.To(device);
            m.Model.eval();
        });
    }

    static ImageDiffusion FromConfig(JsonObject json, string path)
    {
        T Get<T>(JsonNode? n, string key)
        {
            if (n is null) throw new InvalidDataException($"{path}: missing \"{key}\"");
            try { return n.Deserialize<T>(ConfigRecords.Json) ?? throw new InvalidDataException($"{path}: \"{key}\" is null"); }
            catch (JsonException e) { throw new InvalidDataException($"{path}: \"{key}\" has the wrong type ({e.Message})"); }
        }
        string type = Get<string>(json["model_type"], "model_type");
        var arch = Architectures.FirstOrDefault(a => a.Name == type)
            ?? throw new InvalidDataException($"{path}: unknown model_type '{type}' (expected {string.Join(", ", Architectures.Select(a => a.Name))})");
        var fields = new JsonObject();
        foreach (var (k, v) in json)
            if (!ReservedKeys.Contains(k)) fields[k] = v?.DeepClone();
        object config;
        try { config = ConfigRecords.Deserialize(fields, arch.ConfigType, arch.Name, path); }
        catch (ArgumentException e) { throw new InvalidDataException(e.Message, e); }
        var back = ConfigRecords.Fields(config, arch.ConfigType);
        int channels = back[ConfigRecords.Key("InChans")]!.GetValue<int>(), classes = back[ConfigRecords.Key("NumClasses")]!.GetValue<int>();
        int size = back[ConfigRecords.Key("ImgSize")]!.GetValue<int>();
        string[] labels = Get<string[]>(json["labels"], "labels");
        if (labels.Length != classes) throw new InvalidDataException($"{path}: {labels.Length} labels for num_classes {classes}");
        if (Get<int>(json["image_size"], "image_size") != size) throw new InvalidDataException($"{path}: image_size differs from img_size {size}");
        string background = json["background"]?.GetValue<string>() ?? "dark";
        if (background is not ("dark" or "light")) throw new InvalidDataException($"{path}: background must be \"dark\" or \"light\", not \"{background}\"");
        var d = json["diffusion"] as JsonObject ?? throw new InvalidDataException($"{path}: missing \"diffusion\"");
        var settings = new DiffusionSettings(
            Get<int>(d["timesteps"], "diffusion.timesteps"),
            Get<NoiseSchedule>(d["schedule"], "diffusion.schedule"),
            Get<PredictionType>(d["prediction"], "diffusion.prediction"),
            json["class_dropout"] is { } cd ? Get<double>(cd, "class_dropout") : 0.1);
        try { settings.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"{path}: {e.Message}"); }
        return new ImageDiffusion(arch, config, labels, channels, size, background == "dark", settings);
    }

    /// <summary>The class id of a name or a number (0-based); an unknown one lists the valid names.</summary>
    public int ClassId(string nameOrId)
    {
        for (int i = 0; i < Labels.Count; i++)
            if (string.Equals(Labels[i], nameOrId, StringComparison.OrdinalIgnoreCase)) return i;
        if (int.TryParse(nameOrId, NumberStyles.None, CultureInfo.InvariantCulture, out int id) && id < Labels.Count) return id;
        throw new ArgumentException($"unknown class '{nameOrId}' (classes: {string.Join(", ", Labels.Select((l, i) => $"{i} {l}"))})");
    }

    /// <summary>The network as the diffusion process calls it; a null y is the unconditional model.</summary>
    public Denoiser Denoiser => (x, t, y) =>
    {
        if (y is not null) return Model.call(x, t, y);
        using var none = torch.full(new long[] { x.shape[0] }, NullClass, dtype: ScalarType.Int64, device: x.device);
        return Model.call(x, t, none);
    };

    /// <summary>Bytes (n, c, s, s) -> model values in [-1, 1] (float32).</summary>
    public static Tensor ToModel(Tensor bytes) => bytes.to_type(ScalarType.Float32).div(127.5).sub(1);

    /// <summary>Model values -> unit range [0, 1] (clipped), for PNG writing.</summary>
    public static Tensor ToUnit(Tensor x) => x.add(1).div(2).clamp(0, 1);

    /// <summary>
    /// Generates one image per entry of <paramref name="classes"/> (-1 = unconditional) with DDIM: returns model values
    /// (n, c, s, s) in [-1, 1] on the CPU. The initial noise comes from a generator seeded with <paramref name="seed"/>
    /// on the CPU, so a seed gives the same images on every device (up to float rounding).
    /// </summary>
    public Tensor Sample(IReadOnlyList<int> classes, int steps = 50, double guidance = 2.0, long seed = 0, double eta = 0,
        int batchSize = 64, Action<int>? progress = null)
    {
        if (classes.Count == 0) throw new ArgumentException("nothing to sample: no classes given");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize));
        foreach (int c in classes)
            if (c < -1 || c >= Labels.Count) throw new ArgumentException($"class id {c} is out of range 0..{Labels.Count - 1}");
        bool wasTraining = Model.training;
        Model.eval();
        var gen = new Generator((ulong)seed);
        var outputs = new List<Tensor>();
        int done = 0;
        try
        {
            using var noGrad = torch.no_grad();
            for (int start = 0; start < classes.Count; start += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                int n = Math.Min(batchSize, classes.Count - start);
                var noise = torch.randn(new long[] { n, Channels, Size, Size }, generator: gen).to(Device);
                var ids = classes.Skip(start).Take(n).Select(c => c < 0 ? NullClass : c).ToArray();
                var y = torch.tensor(ids, dtype: ScalarType.Int64, device: Device);
                // Unconditional rows are guided against themselves: cond == uncond, so guidance leaves them unchanged.
                // The same generator then supplies the DDIM noise for eta > 0, so the seed fixes every draw.
                var x = Process.SampleDdim(Denoiser, noise, y, NullClass, steps, guidance, eta, clip: 1, generator: gen,
                    progress: i => progress?.Invoke(done + (int)((long)i * n / steps)));
                outputs.Add(x.cpu().MoveToOuterDisposeScope());
                done += n;
            }
            var all = torch.cat(outputs);
            return all;
        }
        finally
        {
            foreach (var t in outputs) t.Dispose();
            if (wasTraining) Model.train();
        }
    }

    /// <summary>Classes for a grid: each class id repeated <paramref name="perClass"/> times (rows of a grid).</summary>
    public int[] GridClasses(int perClass) => Enumerable.Range(0, Labels.Count).SelectMany(c => Enumerable.Repeat(c, perClass)).ToArray();

    /// <summary>
    /// Trains on <paramref name="train"/> through the backbone Trainer (model already on its device): uniform t, the
    /// simple loss, labels dropped to the null class with probability ClassDropout, an EMA of the weights (saved in
    /// every checkpoint, restored on resume, and written as the final model), and at every evaluation a validation
    /// loss on a fixed batch with fixed noise plus a sample grid OUT/samples/step-N.png (EMA weights).
    /// </summary>
    public static TrainResult Train(ImageDiffusion gen, ImageDataset train, ImageDataset? val, TrainOptions options,
        DiffusionTrainOptions o, CancellationToken cancel = default, Action<long>? afterStep = null)
    {
        if (train.Channels != gen.Channels || train.Height != gen.Size || train.Width != gen.Size)
            throw new ArgumentException($"{train.Name}: images are {train.Channels}x{train.Height}x{train.Width}, the model takes {gen.Channels}x{gen.Size}x{gen.Size}");
        if (o.BatchSize <= 0) throw new ArgumentException("batch size must be positive");
        var device = gen.Device;
        // Before the EMA and the Trainer's AdamW take the parameters: the cast replaces the float32 exceptions' objects.
        MixedPrecision.CheckResume(options.OutputDir, options.Resume, o.Precision);
        if (o.Precision != Precision.Fp32) MixedPrecision.Apply(gen.Model, o.Precision);
        using var data = new Classification.DeviceSplit(train, device);
        var sampler = new EpochSampler(train.Count, o.BatchSize, options.Seed);
        using var ema = new Ema(gen.Model, o.EmaDecay);
        var labelEmbedder = gen.Model.modules().OfType<LabelEmbedder>().First();

        // A fixed validation batch with fixed t and noise: its loss is comparable across steps and runs.
        Tensor? vx = null, vy = null, vt = null, vn = null;
        if (val is not null && val.Count > 0)
        {
            int n = Math.Min(val.Count, 1000);
            var g = new Generator(12345);
            using var vs = new Classification.DeviceSplit(val.Take(n), device);
            vx = ToModel(vs.Images); vy = vs.Labels.clone();
            vt = torch.randint(0, gen.Settings.Timesteps, [n], dtype: ScalarType.Int64, generator: g).to(device);
            vn = torch.randn(vx.shape, generator: g).to(device);
        }
        try
        {
            var trainer = new Trainer(gen.Model, options, (step, micro, rng) =>
            {
                var idx = torch.tensor(sampler.Batch(step * options.Accumulation + micro).Select(i => (long)i).ToArray(), device: device);
                var x0 = ToModel(data.Images.index_select(0, idx));
                if (o.HFlip)
                {
                    var flip = torch.tensor(Enumerable.Range(0, (int)idx.shape[0]).Select(_ => rng.Next(2) == 1).ToArray(), device: device).view(-1, 1, 1, 1);
                    x0 = torch.where(flip, x0.flip(3), x0);
                }
                var y = labelEmbedder.Drop(data.Labels.index_select(0, idx), gen.Settings.ClassDropout);
                return (gen.Process.TrainingLoss(gen.Denoiser, x0, y), idx.shape[0]);
            }, gen.ConfigJson)
            {
                Evaluate = step =>
                {
                    var r = new Dictionary<string, double>();
                    if (vx is not null) r["val_loss"] = ValidationLoss(gen, vx, vy!, vt!, vn!);
                    if (o.GridPerClass > 0 && options.OutputDir is not null)
                    {
                        using var avg = Clone(gen, ema);
                        using var imgs = avg.Sample(avg.GridClasses(o.GridPerClass), o.GridSteps, o.GridGuidance, seed: 0);
                        using var unit = ToUnit(imgs);
                        Directory.CreateDirectory(Path.Combine(options.OutputDir, "samples"));
                        ImageIO.SavePng(Path.Combine(options.OutputDir, "samples", $"step-{step:D8}.png"), ImageIO.Grid(unit, o.GridPerClass, scale: 2));
                    }
                    return r;
                },
                AfterStep = s => { ema.Update(s); afterStep?.Invoke(s); },
                ExtraState = ema.State,
                LoadExtraState = ema.LoadState,
            };
            var result = trainer.Run(cancel);
            if (options.OutputDir is not null && result.Steps == options.Steps)
            {
                // The published model is the average: copy it in, save, and drop the duplicate extra state. The
                // average is float32 whatever the compute dtype, so a bf16 run's model goes back to float32 first
                // (sampling and eval then run in float32, as for a float32 run).
                if (o.Precision != Precision.Fp32) MixedPrecision.Apply(gen.Model, Precision.Fp32);
                ema.CopyTo(gen.Model);
                gen.Save(options.OutputDir);
                File.Delete(Path.Combine(options.OutputDir, "extra.safetensors"));
            }
            return result;
        }
        finally
        {
            vx?.Dispose(); vy?.Dispose(); vt?.Dispose(); vn?.Dispose();
        }
    }

    /// <summary>A copy of <paramref name="gen"/> carrying the EMA weights (for sampling during training).</summary>
    static ImageDiffusion Clone(ImageDiffusion gen, Ema ema)
    {
        var c = new ImageDiffusion(gen.Arch, gen.Config, gen.Labels, gen.Channels, gen.Size, gen.DarkBackground, gen.Settings).To(gen.Device);
        ema.CopyTo(c.Model);
        c.Model.eval();
        return c;
    }

    /// <summary>The simple loss on fixed (x_0, y, t, noise), no label dropout, in batches of 250.</summary>
    public static double ValidationLoss(ImageDiffusion gen, Tensor x0, Tensor y, Tensor t, Tensor noise)
    {
        using var noGrad = torch.no_grad();
        double sum = 0;
        long n = x0.shape[0];
        for (long s = 0; s < n; s += 250)
        {
            using var scope = torch.NewDisposeScope();
            long m = Math.Min(250, n - s);
            var (xs, ys, ts, ns) = (x0.narrow(0, s, m), y.narrow(0, s, m), t.narrow(0, s, m), noise.narrow(0, s, m));
            var pred = gen.Denoiser(gen.Process.QSample(xs, ts, ns), ts, ys);
            sum += nn.functional.mse_loss(pred.to_type(ScalarType.Float32), gen.Process.Target(xs, ns, ts).to_type(ScalarType.Float32), reduction: nn.Reduction.Sum).item<float>();
        }
        return sum / x0.numel();
    }

    /// <summary>Classifier features (n, f) and probabilities (n, k) of images given as model values in [-1, 1] (quantised to bytes first, as a PNG would store them).</summary>
    public static (Tensor Features, Tensor Probs) Judge(ImageClassifier clf, Tensor images, int batchSize = 500)
    {
        using var bytes = ToUnit(images).mul(255).round().to_type(ScalarType.Byte);
        return JudgeBytes(clf, bytes, batchSize);
    }

    /// <summary>Classifier features and probabilities of byte images (n, c, s, s) (a real split).</summary>
    public static (Tensor Features, Tensor Probs) JudgeBytes(ImageClassifier clf, Tensor bytes, int batchSize = 500)
    {
        var feats = new List<Tensor>();
        var probs = new List<Tensor>();
        var (mean, std) = Classification.NormalizationTensors(clf.Spec, clf.Device);
        try
        {
            for (long s = 0; s < bytes.shape[0]; s += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                long m = Math.Min(batchSize, bytes.shape[0] - s);
                var x = Classification.Normalize(Classification.ToUnit(bytes.narrow(0, s, m).to(clf.Device)), (mean, std));
                var (f, logits) = clf.FeaturesAndLogits(x);
                feats.Add(f.to_type(ScalarType.Float64).cpu().MoveToOuterDisposeScope());
                probs.Add(nn.functional.softmax(logits.to_type(ScalarType.Float64), 1).cpu().MoveToOuterDisposeScope());
            }
            return (torch.cat(feats), torch.cat(probs));
        }
        finally
        {
            mean.Dispose(); std.Dispose();
            foreach (var t in feats.Concat(probs)) t.Dispose();
        }
    }

    /// <summary>
    /// Generates <paramref name="samples"/> images, classes in equal shares (0, 1, ..., k-1, 0, ...), and scores them
    /// against <paramref name="reference"/> (e.g. the test split): Frechet distance of the classifier's features, the
    /// share the classifier assigns to the requested class, the inception score, and images per second.
    /// </summary>
    public DiffusionQuality Evaluate(ImageClassifier clf, ImageDataset reference, int samples, int steps, double guidance,
        long seed = 0, int batchSize = 250, bool progress = false)
    {
        using var rf = ReferenceFeatures(clf, reference);
        return Evaluate(clf, rf, samples, steps, guidance, seed, batchSize, progress);
    }

    /// <summary>The judge's features (n, f) of a real split, computed once for any number of <see cref="Evaluate"/> rows.</summary>
    public static Tensor ReferenceFeatures(ImageClassifier clf, ImageDataset reference)
    {
        if (reference.Channels != clf.Spec.Channels || reference.Height != clf.Spec.Size || reference.Width != clf.Spec.Size)
            throw new ArgumentException($"{reference.Name}: images are {reference.Channels}x{reference.Height}x{reference.Width}, the classifier takes {clf.Spec.Channels}x{clf.Spec.Size}x{clf.Spec.Size}");
        if (reference.Count < 2) throw new ArgumentException($"{reference.Name}: a Frechet distance needs at least 2 images");
        using var bytes = torch.tensor(reference.Pixels, [reference.Count, reference.Channels, reference.Height, reference.Width], dtype: ScalarType.Byte);
        var (f, p) = JudgeBytes(clf, bytes);
        p.Dispose();
        return f;
    }

    /// <summary>As <see cref="Evaluate(ImageClassifier, ImageDataset, int, int, double, long, int, bool)"/> against precomputed reference features.</summary>
    public DiffusionQuality Evaluate(ImageClassifier clf, Tensor referenceFeatures, int samples, int steps, double guidance,
        long seed = 0, int batchSize = 250, bool progress = false)
    {
        CheckJudge(clf);
        if (samples < 2) throw new ArgumentException($"a Frechet distance needs at least 2 samples, got {samples}");
        var classes = Enumerable.Range(0, samples).Select(i => i % Labels.Count).ToArray();
        using var bar = progress ? new ProgressBar($"sample g={guidance:0.##} s={steps}", samples, "img") : null;
        var sw = Stopwatch.StartNew();
        using var imgs = Sample(classes, steps, guidance, seed, batchSize: batchSize, progress: i => bar?.Report(i));
        double ips = samples / sw.Elapsed.TotalSeconds;
        var (fid, fidelity, inception) = Score(clf, imgs, classes, referenceFeatures);
        return new DiffusionQuality(samples, steps, guidance, fid, fidelity, inception, ips);
    }

    /// <summary>
    /// The scores of generated images (model values (n, c, s, s)) requested as <paramref name="classes"/>: Frechet
    /// distance of the judge's features to the reference features, class fidelity, inception score.
    /// </summary>
    public static (double Fid, double ClassFidelity, double InceptionScore) Score(ImageClassifier clf, Tensor images,
        IReadOnlyList<int> classes, Tensor referenceFeatures)
    {
        if (images.shape[0] != classes.Count) throw new ArgumentException($"{images.shape[0]} images for {classes.Count} requested classes");
        var (gf, gp) = Judge(clf, images);
        using (gf) using (gp)
        {
            double fid = SampleQuality.FrechetDistance(gf, referenceFeatures);
            using var want = torch.tensor(classes.Select(c => (long)c).ToArray());
            using var hit = gp.argmax(1).eq(want).to_type(ScalarType.Float64).mean();
            return (fid, hit.item<double>(), SampleQuality.InceptionScore(gp));
        }
    }

    /// <summary>
    /// The simplest class-conditional generator, as a baseline for the scores: per class, an independent Gaussian per
    /// pixel with the class's mean and variance on <paramref name="train"/>, sampled and clipped to [-1, 1]. It
    /// knows each class's average silhouette but nothing of how pixels vary together.
    /// </summary>
    public static Tensor PixelGaussianSamples(ImageDataset train, IReadOnlyList<int> classes, long seed = 0)
    {
        using var scope = torch.NewDisposeScope();
        var x = ToModel(torch.tensor(train.Pixels, [train.Count, train.Channels, train.Height, train.Width], dtype: ScalarType.Byte));
        var y = torch.tensor(train.Labels.Select(l => (long)l).ToArray());
        int k = classes.Count == 0 ? 0 : classes.Max() + 1;
        var means = new Tensor[k];
        var stds = new Tensor[k];
        for (int c = 0; c < k; c++)
        {
            var xc = x.index_select(0, y.eq(c).nonzero().view(-1));
            if (xc.shape[0] < 2) throw new ArgumentException($"{train.Name}: class {c} has fewer than 2 images");
            means[c] = xc.mean([0]);
            stds[c] = xc.std(0);
        }
        var idx = torch.tensor(classes.Select(c => (long)c).ToArray());
        var mu = torch.stack(means).index_select(0, idx);
        var sd = torch.stack(stds).index_select(0, idx);
        var noise = torch.randn(mu.shape, generator: new Generator((ulong)seed));
        return (mu + sd * noise).clamp(-1, 1).MoveToOuterDisposeScope();
    }

    /// <summary>The floor of the Frechet distance: real images (<paramref name="a"/>, e.g. train) against the reference split.</summary>
    public static double RealFid(ImageClassifier clf, ImageDataset a, ImageDataset reference)
    {
        using var rf = ReferenceFeatures(clf, reference);
        return RealFid(clf, a, rf);
    }

    /// <summary>The floor against precomputed reference features (<see cref="ReferenceFeatures"/>).</summary>
    public static double RealFid(ImageClassifier clf, ImageDataset a, Tensor referenceFeatures)
    {
        using var af = ReferenceFeatures(clf, a);
        return SampleQuality.FrechetDistance(af, referenceFeatures);
    }

    /// <summary>Refuses a judge that does not fit this model (image size, class count).</summary>
    public void CheckJudge(ImageClassifier clf)
    {
        if (clf.Spec.Channels != Channels || clf.Spec.Size != Size)
            throw new ArgumentException($"the classifier takes {clf.Spec.Channels}x{clf.Spec.Size}x{clf.Spec.Size} images, this model makes {Channels}x{Size}x{Size}");
        if (clf.Labels.Count != Labels.Count)
            throw new ArgumentException($"the classifier has {clf.Labels.Count} classes, this model {Labels.Count}");
    }

    public void Dispose() => Model.Dispose();
}
