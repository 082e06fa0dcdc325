// Every autoregressive audio model of the suite behind one type, its model folder, NLL scoring in bits per sample,
// and training through the backbone's Trainer.
//
// Model folder (Hugging Face layout, written through Ssm.Backbone.IO.ModelFolder):
//   config.json        {"model_type": "sashimi" | "lstm",
//                       ...the architecture's config record, field names in snake_case (d_model, n_layers, pool, ...),
//                       "sample_rate": 16000, "quantization": "mu-law" | "linear", "bits": 8}
//   model.safetensors  the weights (Sashimi: sashimi.py's names; LSTM: nn.LSTM's)
// The config record's "classes" always equals 2^bits (checked on load).
//
// Conventions (one set for training, scoring and generation):
//   * waveform -> classes: Quantization.Encode(x, quantization, bits) of the raw samples in [-1, 1], without the
//     reference's per-clip min-max scaling, so that silence (0.0) stays at the zero class q/2 and the loudness of the
//     data is what the model learns and generates.
//   * teacher forcing: logits[:, t] predict sample t + 1 from samples <= t. The first sample of a clip is predicted
//     from a start token, the zero class q/2 (the reference's q_zero; the mu-law/linear code of silence): the input
//     is [q/2, x_0, ..., x_{n-2}] and the targets are [x_0, ..., x_{n-1}], so every sample of a clip is scored (n
//     predictions for n samples) and generation starts from the same token. NLL is in bits per sample,
//     sum_t -log2 p(x_t | x_<t) / n, over all samples of all clips; AudioBaselines' unigram is scored on the same samples.
//   * training crops: the clips with the start token prepended, (n, 1 + l); a crop is L + 1 consecutive entries
//     (inputs the first L, targets the last L) at a uniformly random offset, so a crop that starts at the beginning
//     sees the start token exactly as scoring and generation do.
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Audio;

/// <summary>One architecture: its model_type, config record type, default preset and constructor.</summary>
public sealed record AudioArchitecture(string Name, Type ConfigType, string DefaultPreset,
    Func<object, nn.Module<Tensor, Tensor>> Build, Func<object, long> Classes, Func<object, long, object> WithClasses, string Description)
{
    /// <summary>Preset names (kebab case: "default", "default-mamba", "tiny") and values: the config type's public
    /// static properties of its own type.</summary>
    public IReadOnlyDictionary<string, object> Presets => AudioModel.PresetsOf(ConfigType);
}

/// <summary>The recurrent state of an <see cref="AudioModel"/> for a batch of sequences (constant size while stepping).</summary>
public sealed class AudioModelState : IDisposable
{
    internal AudioModelState(SashimiState? sashimi, LstmBaselineState? lstm, long batch)
    {
        Sashimi = sashimi; Lstm = lstm; Batch = batch;
    }

    internal SashimiState? Sashimi { get; }
    internal LstmBaselineState? Lstm { get; }

    /// <summary>b, the number of sequences.</summary>
    public long Batch { get; }

    /// <summary>Samples consumed so far.</summary>
    public long Steps => Sashimi?.Steps ?? Lstm!.Steps;

    public void Dispose()
    {
        Sashimi?.Dispose();
        Lstm?.Dispose();
    }
}

/// <summary>An autoregressive model over quantised audio samples (SaShiMi or the LSTM baseline) with its data conventions.</summary>
public sealed class AudioModel : IDisposable
{
    /// <summary>The architectures by model_type.</summary>
    public static IReadOnlyList<AudioArchitecture> Architectures { get; } =
    [
        new("sashimi", typeof(SashimiConfig), "default", c => new Sashimi((SashimiConfig)c),
            c => ((SashimiConfig)c).Classes, (c, v) => ((SashimiConfig)c) with { Classes = v },
            "SaShiMi: causal multi-scale U-Net of S4D (or Mamba) blocks over raw samples"),
        new("lstm", typeof(LstmBaselineConfig), "default", c => new LstmBaseline((LstmBaselineConfig)c),
            c => ((LstmBaselineConfig)c).Classes, (c, v) => ((LstmBaselineConfig)c) with { Classes = v },
            "LSTM baseline: embedding, stacked LSTM, linear head over sample classes"),
    ];

    /// <summary>The architecture of <paramref name="modelType"/> (case-insensitive).</summary>
    /// <exception cref="ArgumentException">Unknown model type.</exception>
    public static AudioArchitecture Architecture(string modelType) =>
        Architectures.FirstOrDefault(a => a.Name.Equals(modelType, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"unknown model type '{modelType}' (expected {string.Join(", ", Architectures.Select(a => a.Name))})");

    /// <summary>How config records are written: snake_case names, enums as snake_case strings; unknown fields are errors.</summary>
    public static JsonSerializerOptions ConfigJsonOptions { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    /// <summary>config.json keys that are not fields of the architecture's config record.</summary>
    static readonly string[] ReservedKeys = ["model_type", "sample_rate", "quantization", "bits"];

    /// <summary>Computed properties of config records: written by the serializer, not part of the config.</summary>
    static readonly string[] DerivedKeys = ["stride"];

    public AudioArchitecture Arch { get; }
    public string ModelType => Arch.Name;
    public object Config { get; }
    public nn.Module<Tensor, Tensor> Model { get; }
    public int SampleRate { get; }
    public AudioQuantization Quantization { get; }
    public int Bits { get; }

    /// <summary>V = 2^bits, the number of sample classes.</summary>
    public long Classes => 1L << Bits;

    /// <summary>The class of 0.0, q/2: the start token of scoring and generation.</summary>
    public long ZeroClass => Ssm.Audio.Quantization.ZeroClass(Bits);

    AudioModel(AudioArchitecture arch, object config, int sampleRate, AudioQuantization quantization, int bits)
    {
        Arch = arch; Config = config; SampleRate = sampleRate; Quantization = quantization; Bits = bits;
        Model = arch.Build(config);
    }

    /// <summary>The device of the model's parameters (set by <see cref="To"/>).</summary>
    public Device Device { get; private set; } = torch.CPU;

    /// <summary>Trainable parameters.</summary>
    public long ParameterCount => Model.parameters().Sum(p => p.numel());

    /// <summary>Moves the model to <paramref name="device"/> (in place) and returns this.</summary>
    public AudioModel To(Device device)
    {
        Model.to(device);
        Device = device;
        return this;
    }

    /// <summary>"mu-law" or "linear", as config.json writes it.</summary>
    public static string QuantizationName(AudioQuantization q) => q switch
    {
        AudioQuantization.MuLaw => "mu-law",
        AudioQuantization.Linear => "linear",
        _ => throw new ArgumentOutOfRangeException(nameof(q), q, "unknown quantisation"),
    };

    /// <summary>Parses "mu-law" (also "mulaw", "mu_law") or "linear".</summary>
    /// <exception cref="ArgumentException">Anything else.</exception>
    public static AudioQuantization ParseQuantization(string name) => name.ToLowerInvariant() switch
    {
        "mu-law" or "mulaw" or "mu_law" => AudioQuantization.MuLaw,
        "linear" => AudioQuantization.Linear,
        _ => throw new ArgumentException($"unknown quantization '{name}' (expected mu-law or linear)"),
    };

    /// <summary>
    /// A new, randomly initialised model (seed torch first for a reproducible one): the preset of
    /// <paramref name="modelType"/> with classes = 2^bits, then <paramref name="overrides"/> (snake_case field = JSON
    /// value or plain text, e.g. "d_model" = "32", "pool" = "[4, 4]", "variant" = "mamba").
    /// </summary>
    /// <exception cref="ArgumentException">Unknown model type, preset or field, or a value that does not fit.</exception>
    public static AudioModel Create(string modelType, string? preset = null, int sampleRate = 16000,
        AudioQuantization quantization = AudioQuantization.MuLaw, int bits = Ssm.Audio.Quantization.DefaultBits,
        IEnumerable<KeyValuePair<string, string>>? overrides = null)
    {
        if (sampleRate <= 0) throw new ArgumentException($"sample rate must be positive, got {sampleRate}");
        if (bits is < 1 or > 16) throw new ArgumentException($"bits must be 1 to 16, got {bits}");
        var arch = Architecture(modelType);
        var presets = arch.Presets;
        string name = preset ?? arch.DefaultPreset;
        if (!presets.TryGetValue(name, out var baseConfig))
            throw new ArgumentException($"unknown preset '{name}' for {arch.Name} (presets: {string.Join(", ", presets.Keys.Order())})");
        var fields = Fields(arch.WithClasses(baseConfig, 1L << bits), arch.ConfigType);
        var set = new List<string>();
        foreach (var (k, v) in overrides ?? [])
        {
            if (!fields.ContainsKey(k))
                throw new ArgumentException($"unknown config field '{k}' for {arch.Name} (fields: {string.Join(", ", fields.Select(f => f.Key))})");
            if (k == "classes") throw new ArgumentException("config field 'classes' is fixed by bits (classes = 2^bits)");
            fields[k] = ParseValue(v);
            set.Add(k);
        }
        object config = Deserialize(fields, arch, "config");
        var back = Fields(config, arch.ConfigType);
        foreach (var k in set)
            if (!JsonNode.DeepEquals(back[k], fields[k]))
                throw new ArgumentException($"config field '{k}' cannot be set to {fields[k]?.ToJsonString()}");
        return new AudioModel(arch, config, sampleRate, quantization, bits);
    }

    /// <summary>A command-line value: JSON if it parses (numbers, true/false, arrays), else a string.</summary>
    static JsonNode? ParseValue(string v)
    {
        try { return JsonNode.Parse(v); }
        catch (JsonException) { return JsonValue.Create(v); }
    }

    internal static IReadOnlyDictionary<string, object> PresetsOf(Type configType) => configType
        .GetProperties(BindingFlags.Public | BindingFlags.Static)
        .Where(p => p.PropertyType == configType && p.GetIndexParameters().Length == 0)
        .ToDictionary(p => Kebab(p.Name), p => p.GetValue(null)!, StringComparer.OrdinalIgnoreCase);

    static string Kebab(string pascal) => JsonNamingPolicy.KebabCaseLower.ConvertName(pascal);

    static JsonObject Fields(object config, Type type)
    {
        var o = (JsonObject)JsonSerializer.SerializeToNode(config, type, ConfigJsonOptions)!;
        foreach (var k in DerivedKeys) o.Remove(k);
        return o;
    }

    /// <summary>The record from its fields, validated; problems are ArgumentExceptions naming <paramref name="source"/>.</summary>
    static object Deserialize(JsonObject fields, AudioArchitecture arch, string source)
    {
        object config;
        try
        {
            config = fields.Deserialize(arch.ConfigType, ConfigJsonOptions) ?? throw new ArgumentException($"{source}: empty {arch.Name} config");
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"{source}: invalid {arch.Name} config{(e.Path is { } p ? $" at {p}" : "")}: {e.Message}", e);
        }
        try
        {
            switch (config)
            {
                case SashimiConfig s: s.Validate(); break;
                case LstmBaselineConfig l: l.Validate(); break;
            }
        }
        catch (ArgumentException e) { throw new ArgumentException($"{source}: {e.Message}", e); }
        return config;
    }

    /// <summary>config.json's content.</summary>
    public JsonObject ConfigJson()
    {
        var o = new JsonObject { ["model_type"] = ModelType };
        foreach (var (k, v) in Fields(Config, Arch.ConfigType)) o[k] = v?.DeepClone();
        o["sample_rate"] = SampleRate;
        o["quantization"] = QuantizationName(Quantization);
        o["bits"] = Bits;
        return o;
    }

    /// <summary>Writes config.json and model.safetensors (each atomically).</summary>
    public void Save(string dir) => ModelFolder.Save(dir, Model, ConfigJson());

    /// <summary>Reads a model folder written by <see cref="Save"/> or by training; the model is in eval mode.</summary>
    /// <exception cref="InvalidDataException">Missing files, a bad config or weights that do not fit; names the file.</exception>
    public static AudioModel Load(string dir, Device? device = null)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: model folder not found");
        var json = ModelFolder.ReadConfig(dir);
        var (arch, config, rate, quantization, bits) = ParseConfig(json, Path.Combine(dir, ModelFolder.ConfigFile));
        var model = new AudioModel(arch, config, rate, quantization, bits);
        return ModelFolder.LoadOwned(dir, model, model.Model, m =>
        {
            if (device is not null) m.To(device);
            m.Model.eval();
        });
    }

    /// <summary>Validates a config.json object; every problem is an InvalidDataException naming <paramref name="path"/>.</summary>
    public static (AudioArchitecture Arch, object Config, int SampleRate, AudioQuantization Quantization, int Bits) ParseConfig(JsonObject json, string path)
    {
        T Get<T>(string key)
        {
            if (json[key] is not JsonNode n) throw new InvalidDataException($"{path}: missing \"{key}\"");
            try { return n.Deserialize<T>() ?? throw new InvalidDataException($"{path}: \"{key}\" is null"); }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
            {
                throw new InvalidDataException($"{path}: \"{key}\" has the wrong type ({e.Message})");
            }
        }
        string type = Get<string>("model_type");
        var arch = Architectures.FirstOrDefault(a => a.Name == type)
            ?? throw new InvalidDataException($"{path}: unknown model_type '{type}' (expected {string.Join(", ", Architectures.Select(a => a.Name))})");
        int rate = Get<int>("sample_rate");
        if (rate <= 0) throw new InvalidDataException($"{path}: sample_rate must be positive, got {rate}");
        AudioQuantization quantization;
        try { quantization = ParseQuantization(Get<string>("quantization")); }
        catch (ArgumentException e) { throw new InvalidDataException($"{path}: {e.Message}"); }
        int bits = Get<int>("bits");
        if (bits is < 1 or > 16) throw new InvalidDataException($"{path}: bits must be 1 to 16, got {bits}");
        var fields = new JsonObject();
        foreach (var (k, v) in json)
            if (!ReservedKeys.Contains(k) && !DerivedKeys.Contains(k)) fields[k] = v?.DeepClone();
        object config;
        try { config = Deserialize(fields, arch, path); }
        catch (ArgumentException e) { throw new InvalidDataException(e.Message, e); }
        long classes = arch.Classes(config);
        if (classes != 1L << bits) throw new InvalidDataException($"{path}: classes {classes} does not match bits {bits} (classes must be 2^bits = {1L << bits})");
        return (arch, config, rate, quantization, bits);
    }

    // ------------------------------------------------------------------------------------------ data

    /// <summary>Waveform (any shape, float in [-1, 1]) -> int64 classes on the same device.</summary>
    public Tensor Encode(Tensor waveform) => Ssm.Audio.Quantization.Encode(waveform, Quantization, Bits);

    /// <summary>Classes (any shape) -> float32 waveform in [-1, 1).</summary>
    public Tensor Decode(Tensor classes) => Ssm.Audio.Quantization.Decode(classes, Quantization, Bits);

    /// <summary>The compact dtype classes are kept in for whole data sets: uint8 up to 8 bits, else int32.</summary>
    public ScalarType StorageType => Bits <= 8 ? ScalarType.Byte : ScalarType.Int32;

    /// <summary>
    /// Waveforms (n, l) -> classes (n, l) in <see cref="StorageType"/> on <paramref name="device"/> (default: the
    /// model's), encoded a block of rows at a time so that a whole split never exists as float temporaries or int64.
    /// </summary>
    public Tensor EncodeClips(Tensor audio, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(audio);
        if (audio.dim() != 2) throw new ArgumentException($"expected waveforms (n, l), got [{string.Join(", ", audio.shape)}]", nameof(audio));
        long n = audio.size(0), l = audio.size(1), block = Math.Max(1, (1L << 22) / Math.Max(1, l));
        var dev = device ?? Device;
        var result = torch.empty(new[] { n, l }, StorageType, dev).DetachFromDisposeScope();
        using var noGrad = torch.no_grad();
        for (long r = 0; r < n; r += block)
        {
            using var scope = torch.NewDisposeScope();
            long m = Math.Min(block, n - r);
            result.narrow(0, r, m).copy_(Encode(audio.narrow(0, r, m)).to_type(StorageType).to(dev));
        }
        return result;
    }

    /// <summary>
    /// The teacher-forcing inputs of clips (n, l): [start, x_0, ..., x_{l-2}] as int64 (n, l), start = the zero class.
    /// </summary>
    public Tensor ShiftedInputs(Tensor classes)
    {
        using var scope = torch.NewDisposeScope();
        long n = classes.size(0), l = classes.size(1);
        var start = torch.full(new[] { n, 1L }, ZeroClass, ScalarType.Int64, classes.device);
        var ids = classes.to_type(ScalarType.Int64);
        return torch.cat([start, ids.narrow(1, 0, l - 1)], 1).MoveToOuterDisposeScope();
    }

    // ------------------------------------------------------------------------------------------ scoring

    /// <summary>logits (b, l, V) for ids (b, l) int64, on the model's device, in eval mode without autograd.</summary>
    public Tensor Logits(Tensor ids)
    {
        Model.eval();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        return Model.call(ids.to(Device)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// -log2 softmax(logits)[target] for every target: <paramref name="logits"/> (..., V), <paramref name="targets"/>
    /// (...) int64 -> bits (...) float64.
    /// </summary>
    public static Tensor NllBitsPerTarget(Tensor logits, Tensor targets)
    {
        using var scope = torch.NewDisposeScope();
        long v = logits.size(-1);
        var nats = nn.functional.cross_entropy(logits.reshape(-1, v).to_type(ScalarType.Float32), targets.reshape(-1).to_type(ScalarType.Int64),
            reduction: nn.Reduction.None);                                                    // (N) float32
        return (nats.to_type(ScalarType.Float64) / Math.Log(2)).reshape(targets.shape).MoveToOuterDisposeScope();
    }

    /// <summary>Total negative log-likelihood in bits of <paramref name="targets"/> under <paramref name="logits"/>
    /// (see <see cref="NllBitsPerTarget"/>), summed in float64.</summary>
    public static double NllBits(Tensor logits, Tensor targets)
    {
        using var bits = NllBitsPerTarget(logits, targets);
        using var sum = bits.sum();
        return sum.item<double>();
    }

    /// <summary>Nats per sample shown as bits per sample (the trainer's loss display).</summary>
    public static string FormatBits(double nats) => (nats / Math.Log(2)).ToString("0.000", CultureInfo.InvariantCulture) + " bits/sample";

    /// <summary>
    /// NLL of whole clips (n, l) of classes (any integer dtype, any device): every sample scored, the first from the
    /// start token (see the file header). Rows run in batches of about <paramref name="batchSamples"/> samples.
    /// Returns (total bits, samples scored); bits / samples is the NLL in bits per sample.
    /// </summary>
    public (double Bits, long Count) Score(Tensor classes, long batchSamples = 1 << 18, ProgressBar? progress = null)
    {
        double bits = 0;
        long count = ScoreBatches(classes, batchSamples, (_, b) => { using var s = b.sum(); bits += s.item<double>(); }, progress);
        return (bits, count);
    }

    /// <summary>
    /// Per-sample NLL: bits (n, l) float64 on the CPU, entry [i, t] = -log2 p(x_t | start, x_0 .. x_{t-1}) of clip i.
    /// </summary>
    public Tensor SampleBits(Tensor classes, long batchSamples = 1 << 18)
    {
        var result = torch.zeros(classes.size(0), classes.size(1), dtype: ScalarType.Float64).DetachFromDisposeScope();
        ScoreBatches(classes, batchSamples, (r, b) => { using var dst = result.narrow(0, r, b.size(0)); dst.copy_(b); });
        return result;
    }

    long ScoreBatches(Tensor classes, long batchSamples, Action<long, Tensor> consume, ProgressBar? progress = null)
    {
        ArgumentNullException.ThrowIfNull(classes);
        if (classes.dim() != 2) throw new ArgumentException($"expected classes (n, l), got [{string.Join(", ", classes.shape)}]", nameof(classes));
        if (classes.is_floating_point()) throw new ArgumentException($"expected integer classes, got {classes.dtype} (use ScoreWaveforms for audio)", nameof(classes));
        if (batchSamples <= 0) throw new ArgumentOutOfRangeException(nameof(batchSamples), batchSamples, "must be positive");
        long n = classes.size(0), l = classes.size(1);
        if (n == 0 || l == 0) return 0;
        long rows = Math.Max(1, batchSamples / l);
        Model.eval();
        using var noGrad = torch.no_grad();
        for (long r = 0; r < n; r += rows)
        {
            using var scope = torch.NewDisposeScope();
            var targets = classes.narrow(0, r, Math.Min(rows, n - r)).to(Device).to_type(ScalarType.Int64);   // (b l)
            var logits = Model.call(ShiftedInputs(targets));                                                  // (b l V)
            consume(r, NllBitsPerTarget(logits, targets).cpu());                                              // (b l) bits
            progress?.Advance(targets.size(0));
        }
        return n * l;
    }

    /// <summary><see cref="Score"/> of waveforms (n, l) float in [-1, 1], quantised with this model's settings.</summary>
    public (double Bits, long Count) ScoreWaveforms(Tensor audio, long batchSamples = 1 << 18, ProgressBar? progress = null)
    {
        using var classes = EncodeClips(audio, torch.CPU);
        return Score(classes, batchSamples, progress);
    }

    /// <summary>NLL in bits per sample of clips (n, l) of classes.</summary>
    public double BitsPerSample(Tensor classes, long batchSamples = 1 << 18)
    {
        var (bits, count) = Score(classes, batchSamples);
        return count == 0 ? double.NaN : bits / count;
    }

    // ------------------------------------------------------------------------------------------ recurrent mode

    /// <summary>A zero recurrent state for <paramref name="batch"/> sequences; puts the model in eval mode.</summary>
    public AudioModelState AllocateState(long batch)
    {
        Model.eval();
        return Model switch
        {
            Sashimi s => new AudioModelState(s.AllocateState(batch), null, batch),
            LstmBaseline m => new AudioModelState(null, m.AllocateState(batch), batch),
            _ => throw new InvalidOperationException($"{ModelType} has no recurrent mode"),
        };
    }

    /// <summary>One sample: ids (b) int64 -> logits (b, V) for the next sample; advances <paramref name="state"/>.</summary>
    public Tensor Step(Tensor ids, AudioModelState state)
    {
        if (state.Sashimi is not null) return ((Sashimi)Model).Step(ids, state.Sashimi);
        if (state.Lstm is not null) return ((LstmBaseline)Model).Step(ids, state.Lstm);
        throw new InvalidOperationException("empty recurrent state");
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>Settings of one audio training run (beside the Trainer's own options).</summary>
public sealed record AudioTrainOptions
{
    /// <summary>Crops per micro-batch.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>L, the samples predicted per crop (the crop holds L + 1 entries); longer than a clip: the whole clip.</summary>
    public int CropLength { get; init; } = 16000;

    /// <summary>Validation clips scored at each evaluation (the first ones of the split; 0: all).</summary>
    public int EvalClips { get; init; } = 64;

    /// <summary>Samples per scoring batch at evaluation.</summary>
    public long EvalBatchSamples { get; init; } = 1 << 18;

    /// <summary>
    /// Bf16: the model's matrices, norms and embedding compute in bf16 while the SSM parameters (S4D's kernel and whole
    /// S4D layers, Mamba's A, D and dt bias) and AdamW's master weights stay float32 (MixedPrecision.Apply, applied by
    /// Train before the optimizer is made); logits and the loss are float32. Fp32 leaves the model as it is.
    /// </summary>
    public Precision Precision { get; init; } = Precision.Fp32;

    /// <summary>Validate the settings; throws an ArgumentException naming the option.</summary>
    public void Validate()
    {
        if (BatchSize <= 0) throw new ArgumentException($"batch size must be positive, got {BatchSize}");
        if (CropLength <= 0) throw new ArgumentException($"crop length must be positive, got {CropLength}");
        if (EvalClips < 0) throw new ArgumentException($"eval clips must be >= 0, got {EvalClips}");
        if (EvalBatchSamples <= 0) throw new ArgumentException($"eval batch samples must be positive, got {EvalBatchSamples}");
    }
}

/// <summary>Training an <see cref="AudioModel"/> through the backbone Trainer.</summary>
public static class AudioTraining
{
    /// <summary>Trains on AudioDataset splits (checks that their sample rate is the model's).</summary>
    public static TrainResult Train(AudioModel model, AudioBatch train, AudioBatch? valid, TrainOptions options, AudioTrainOptions ao,
        CancellationToken cancel = default, Action<long>? afterStep = null)
    {
        foreach (var b in new[] { train, valid })
            if (b is not null && b.SampleRate != model.SampleRate)
                throw new ArgumentException($"the clips are at {b.SampleRate} Hz, the model at {model.SampleRate} Hz: load the split at the model's rate");
        return Train(model, train.Audio, valid?.Audio, options, ao, cancel, afterStep);
    }

    /// <summary>
    /// Trains <paramref name="model"/> (already on its device) on waveforms (n, l) in [-1, 1] through the backbone
    /// Trainer: random crops (see AudioModel's file header), cross-entropy shown in bits per sample, validation NLL
    /// (valid_bits_per_sample) every EvalEvery steps and at the end, atomic checkpoints and exact resume in
    /// options.OutputDir, whose final folder <see cref="AudioModel.Load"/> reads.
    /// </summary>
    public static TrainResult Train(AudioModel model, Tensor trainAudio, Tensor? validAudio, TrainOptions options, AudioTrainOptions ao,
        CancellationToken cancel = default, Action<long>? afterStep = null)
    {
        ao.Validate();
        ArgumentNullException.ThrowIfNull(trainAudio);
        if (trainAudio.dim() != 2 || trainAudio.size(0) == 0 || trainAudio.size(1) == 0)
            throw new ArgumentException($"training audio must be (n, l) with n, l >= 1, got [{string.Join(", ", trainAudio.shape)}]");
        var device = model.Device;
        // Before the Trainer makes its AdamW: the cast replaces the float32 exceptions' parameter objects.
        MixedPrecision.CheckResume(options.OutputDir, options.Resume, ao.Precision);
        if (ao.Precision != Precision.Fp32) MixedPrecision.Apply(model.Model, ao.Precision);
        long n = trainAudio.size(0), l = trainAudio.size(1);
        // (n, 1 + l): the start token, then the clip (see the file header).
        using var clips = WithStartToken(model, trainAudio, device);
        long crop = Math.Min(ao.CropLength, l);                                    // L: predicted samples per crop
        using var validClasses = validAudio is null ? null
            : model.EncodeClips(ao.EvalClips > 0 && validAudio.size(0) > ao.EvalClips ? validAudio.narrow(0, 0, ao.EvalClips) : validAudio, device);
        var sampler = new EpochSampler(checked((int)n), ao.BatchSize, options.Seed);
        // SaShiMi's own decay rule (s4d.py: none on the S4D spectrum, none on the embedding) unless the caller chose one.
        var o = options with
        {
            Unit = "samples", FormatLoss = options.FormatLoss ?? AudioModel.FormatBits,
            Decay = options.Decay ?? (model.Model is Sashimi ? Sashimi.Decay : null),
        };
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{model.ModelType}: {model.ParameterCount:N0} parameters; train {n:N0} clips of {l:N0} samples ({(double)l / model.SampleRate:0.##} s at {model.SampleRate} Hz), " +
            $"crops of {crop:N0}, batch {ao.BatchSize} x {o.Accumulation}, {o.Steps} steps = {sampler.Epoch(o.Steps * o.Accumulation):0.00} epochs of clips; " +
            $"{AudioModel.QuantizationName(model.Quantization)} {model.Bits} bits; {(ao.Precision == Precision.Bf16 ? "bf16 mixed precision " : "")}on {device}"));
        using var offsets = torch.arange(crop + 1, dtype: ScalarType.Int64, device: device).unsqueeze(0);   // (1 L+1)
        long v = model.Classes;
        var trainer = new Trainer(model.Model, o, (step, micro, rng) =>
        {
            var rows = sampler.Batch(step * o.Accumulation + micro);
            var starts = new long[rows.Length];
            for (int i = 0; i < rows.Length; i++) starts[i] = rng.NextInt64(0, l - crop + 1);      // offset in [0, l - L]
            var idx = torch.tensor(rows.Select(r => (long)r).ToArray(), device: device);          // (b)
            var positions = torch.tensor(starts, device: device).unsqueeze(1) + offsets;          // (b L+1)
            var window = clips.index_select(0, idx).gather(1, positions).to_type(ScalarType.Int64); // (b L+1)
            var logits = model.Model.call(window.narrow(1, 0, crop));                             // (b L V)
            var loss = nn.functional.cross_entropy(logits.reshape(-1, v).to_type(ScalarType.Float32), window.narrow(1, 1, crop).reshape(-1));
            return (loss, rows.Length * crop);
        }, model.ConfigJson)
        {
            Evaluate = validClasses is null ? null : _ => new Dictionary<string, double>
            {
                ["valid_bits_per_sample"] = model.BitsPerSample(validClasses, ao.EvalBatchSamples),
            },
            AfterStep = afterStep,
        };
        return trainer.Run(cancel);
    }

    /// <summary>Waveforms (n, l) -> classes (n, 1 + l) in the storage dtype on <paramref name="device"/>, column 0 the zero class.</summary>
    static Tensor WithStartToken(AudioModel model, Tensor audio, Device device)
    {
        long n = audio.size(0), l = audio.size(1);
        var result = torch.full(new[] { n, 1 + l }, model.ZeroClass, model.StorageType, device).DetachFromDisposeScope();
        using var classes = model.EncodeClips(audio, device);
        using (var body = result.narrow(1, 1, l)) body.copy_(classes);
        return result;
    }
}
