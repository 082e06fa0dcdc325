// Every image classifier of the suite behind one type, and its model folder (Hugging Face layout, written through
// Ssm.Backbone.IO.ModelFolder):
//   config.json          {"model_type": "vim" | "vmamba" | "cnn",
//                         ...the architecture's config record, field names in snake_case (in_chans, num_classes, img_size, ...),
//                         "labels": [class names, index order], "image_size": s, "in_chans": c,
//                         "mean": [per channel], "std": [per channel], "background": "dark" | "light"}
//   model.safetensors    the weights, named as the Python references name them
// mean/std are those of the training pixels in [0, 1]; "background" is the polarity of the training images (see
// ImageIO, step 4). A folder is self-describing: classify, eval and info need nothing else.
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>One architecture: its model_type, config record type, default preset and constructor.</summary>
public sealed record ClassifierArchitecture(string Name, Type ConfigType, string DefaultPreset,
    Func<object, nn.Module<Tensor, Tensor>> Build, Func<string, Tensor, bool> Decay, string Description)
{
    /// <summary>Preset names (lower case) and values (ConfigRecords.Presets).</summary>
    public IReadOnlyDictionary<string, object> Presets => ConfigRecords.Presets(ConfigType);
}

/// <summary>A classifier that exposes its penultimate features (the head's input), e.g. for Frechet distances.</summary>
public interface IImageFeatures
{
    /// <summary>Normalised images (b, c, s, s) -> features (b, f).</summary>
    Tensor Features(Tensor images);
}

/// <summary>A top-k prediction.</summary>
public sealed record Prediction(int Index, string Label, double Probability);

public sealed class ImageClassifier : IDisposable
{
    /// <summary>The architectures by model_type.</summary>
    public static IReadOnlyList<ClassifierArchitecture> Architectures { get; } =
    [
        new("vim", typeof(VimConfig), "small28", c => new Vim((VimConfig)c), Vim.Decay,
            "Vision Mamba: bidirectional Mamba over patches, middle class token"),
        new("vmamba", typeof(VMambaConfig), "small28", c => new VMamba((VMambaConfig)c), VMamba.Decay,
            "VMamba: SS2D four-direction cross-scan, hierarchical stages"),
        new("cnn", typeof(SimpleCnnConfig), "small28", c => new SimpleCnn((SimpleCnnConfig)c), AdamW.DefaultDecay,
            "plain CNN baseline: conv-BN-ReLU-pool stages and an MLP head"),
    ];

    public static ClassifierArchitecture Architecture(string modelType) =>
        Architectures.FirstOrDefault(a => a.Name.Equals(modelType, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"unknown model type '{modelType}' (expected {string.Join(", ", Architectures.Select(a => a.Name))})");

    /// <summary>How config records are written: snake_case field names (Hugging Face style), enums as strings.</summary>
    public static JsonSerializerOptions ConfigJsonOptions => ConfigRecords.Json;

    static readonly string[] ReservedKeys = ["model_type", "labels", "image_size", "mean", "std", "background"];

    public ClassifierArchitecture Arch { get; }
    public string ModelType => Arch.Name;
    public object Config { get; }
    public nn.Module<Tensor, Tensor> Model { get; }
    public IReadOnlyList<string> Labels { get; }
    public ImageSpec Spec { get; }

    ImageClassifier(ClassifierArchitecture arch, object config, IReadOnlyList<string> labels, ImageSpec spec)
    {
        Arch = arch; Config = config; Labels = labels; Spec = spec;
        Model = arch.Build(config);
    }

    /// <summary>The device of the model's parameters (set by <see cref="To"/>).</summary>
    public Device Device { get; private set; } = torch.CPU;

    /// <summary>Trainable parameters, each shared tensor once.</summary>
    public long ParameterCount => Model.parameters().DistinctBy(p => p.Handle).Sum(p => p.numel());

    /// <summary>Moves the model to <paramref name="device"/> (in place) and returns this.</summary>
    public ImageClassifier To(Device device)
    {
        Model.to(device);
        Device = device;
        return this;
    }

    /// <summary>
    /// A new, randomly initialised classifier: the preset of <paramref name="modelType"/> with in_chans, num_classes and
    /// img_size set from the data, then <paramref name="overrides"/> (snake_case field = JSON value or plain text).
    /// </summary>
    /// <exception cref="ArgumentException">Unknown model type, preset or field, or a value that does not fit.</exception>
    public static ImageClassifier Create(string modelType, string? preset, IReadOnlyList<string> labels, ImageSpec spec,
        IEnumerable<KeyValuePair<string, string>>? overrides = null)
    {
        spec.Validate();
        if (labels.Count < 2) throw new ArgumentException("a classifier needs at least 2 classes");
        var arch = Architecture(modelType);
        var fixedFields = new Dictionary<string, JsonNode?>
        {
            [Key("InChans")] = spec.Channels, [Key("NumClasses")] = labels.Count, [Key("ImgSize")] = spec.Size,
        };
        object config = ConfigRecords.Build(arch.Name, arch.ConfigType, preset ?? arch.DefaultPreset, fixedFields, overrides);
        return new ImageClassifier(arch, config, labels.ToArray(), spec);
    }

    static string Key(string property) => ConfigRecords.Key(property);

    static object Deserialize(JsonObject fields, ClassifierArchitecture arch, string source) =>
        ConfigRecords.Deserialize(fields, arch.ConfigType, arch.Name, source);

    /// <summary>config.json's content.</summary>
    public JsonObject ConfigJson()
    {
        var o = new JsonObject { ["model_type"] = ModelType };
        var fields = (JsonObject)JsonSerializer.SerializeToNode(Config, Arch.ConfigType, ConfigJsonOptions)!;
        foreach (var (k, v) in fields) o[k] = v?.DeepClone();
        o["labels"] = new JsonArray(Labels.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray());
        o["image_size"] = Spec.Size;
        o[Key("InChans")] = Spec.Channels;
        o["mean"] = new JsonArray(Spec.Mean.Select(m => (JsonNode?)JsonValue.Create(Round(m))).ToArray());
        o["std"] = new JsonArray(Spec.Std.Select(m => (JsonNode?)JsonValue.Create(Round(m))).ToArray());
        o["background"] = Spec.DarkBackground ? "dark" : "light";
        return o;
    }

    // Six significant digits: plenty for normalisation, and the JSON stays readable.
    static double Round(float v) => double.Parse(v.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    /// <summary>Writes config.json and model.safetensors (atomically, each).</summary>
    public void Save(string dir) => ModelFolder.Save(dir, Model, ConfigJson());

    /// <summary>Reads a model folder written by <see cref="Save"/> (or by training).</summary>
    /// <exception cref="InvalidDataException">Missing files, a bad config or weights that do not fit; names the file.</exception>
    public static ImageClassifier Load(string dir, Device? device = null)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: model folder not found");
        var json = ModelFolder.ReadConfig(dir);
        string path = Path.Combine(dir, ModelFolder.ConfigFile);
        var (arch, config, labels, spec) = ParseConfig(json, path);
        var clf = new ImageClassifier(arch, config, labels, spec);
        return ModelFolder.LoadOwned(dir, clf, clf.Model, m =>
        {
            if (device is not null) m.To(device);
            m.Model.eval();
        });
    }

    /// <summary>Validates a config.json object; every problem is an InvalidDataException naming <paramref name="path"/>.</summary>
    public static (ClassifierArchitecture Arch, object Config, string[] Labels, ImageSpec Spec) ParseConfig(JsonObject json, string path)
    {
        T Get<T>(string key)
        {
            if (json[key] is not JsonNode n) throw new InvalidDataException($"{path}: missing \"{key}\"");
            try { return n.Deserialize<T>() ?? throw new InvalidDataException($"{path}: \"{key}\" is null"); }
            catch (JsonException e) { throw new InvalidDataException($"{path}: \"{key}\" has the wrong type ({e.Message})"); }
        }
        string type = Get<string>("model_type");
        var arch = Architectures.FirstOrDefault(a => a.Name == type)
            ?? throw new InvalidDataException($"{path}: unknown model_type '{type}' (expected {string.Join(", ", Architectures.Select(a => a.Name))})");
        var fields = new JsonObject();
        foreach (var (k, v) in json)
            if (!ReservedKeys.Contains(k)) fields[k] = v?.DeepClone();
        object config;
        try { config = Deserialize(fields, arch, path); }
        catch (ArgumentException e) { throw new InvalidDataException(e.Message, e); }
        var back = (JsonObject)JsonSerializer.SerializeToNode(config, arch.ConfigType, ConfigJsonOptions)!;
        long inChans = back[Key("InChans")]!.GetValue<long>(), classes = back[Key("NumClasses")]!.GetValue<long>(), size = back[Key("ImgSize")]!.GetValue<long>();
        string[] labels = Get<string[]>("labels");
        if (labels.Length != classes) throw new InvalidDataException($"{path}: {labels.Length} labels for num_classes {classes}");
        long imageSize = Get<long>("image_size");
        if (imageSize != size) throw new InvalidDataException($"{path}: image_size {imageSize} differs from img_size {size}");
        float[] mean = Get<float[]>("mean"), std = Get<float[]>("std");
        string background = json["background"]?.GetValue<string>() ?? "dark";
        if (background is not ("dark" or "light")) throw new InvalidDataException($"{path}: background must be \"dark\" or \"light\", not \"{background}\"");
        var spec = new ImageSpec((int)inChans, (int)size, mean, std, background == "dark");
        try { spec.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"{path}: {e.Message}"); }
        return (arch, config, labels, spec);
    }

    /// <summary>Logits (b, k) of normalised images (b, c, s, s) on the model's device (eval mode, no grad).</summary>
    public Tensor Logits(Tensor images)
    {
        Model.eval();
        using var noGrad = torch.no_grad();
        return Model.call(images.to(Device));
    }

    /// <summary>Penultimate features (b, f) and logits (b, k) of normalised images (eval mode, no grad).</summary>
    public (Tensor Features, Tensor Logits) FeaturesAndLogits(Tensor images)
    {
        if (Model is not IImageFeatures fm) throw new InvalidOperationException($"{ModelType} does not expose features");
        Model.eval();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var f = fm.Features(images.to(Device));
        var head = Model.named_children().First(c => c.name == "head").module as nn.Module<Tensor, Tensor>
            ?? throw new InvalidOperationException($"{ModelType} has no head");
        var logits = head.call(f);
        // A mixed-precision model's features are bf16: hand both out in float32, like its logits.
        return (MixedPrecision.Widen(f).MoveToOuterDisposeScope(), MixedPrecision.Widen(logits).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Classifies prepared inputs (each (c, s, s), see <see cref="Prepare"/>) in batches of <paramref name="batchSize"/>:
    /// the <paramref name="topK"/> classes of each, most probable first.
    /// </summary>
    public List<Prediction[]> Classify(IReadOnlyList<Tensor> inputs, int topK = 5, int batchSize = 64)
    {
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize));
        int k = Math.Clamp(topK, 1, Labels.Count);
        var results = new List<Prediction[]>(inputs.Count);
        for (int start = 0; start < inputs.Count; start += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            var batch = torch.stack(inputs.Skip(start).Take(batchSize).ToArray()).to(Device);   // (b c s s), moved once
            var probs = nn.functional.softmax(Logits(batch).to_type(ScalarType.Float32), 1);
            var (values, indices) = probs.topk(k, 1);
            float[] p = values.cpu().data<float>().ToArray();
            long[] ix = indices.cpu().data<long>().ToArray();
            for (int i = 0; i < p.Length / k; i++)
                results.Add(Enumerable.Range(0, k).Select(j => new Prediction((int)ix[i * k + j], Labels[(int)ix[i * k + j]], p[i * k + j])).ToArray());
        }
        return results;
    }

    /// <summary>An image converted to this model's input (c, s, s) on the CPU (ImageIO.ToModelInput).</summary>
    public Tensor Prepare(RawImage image, InvertMode invert = InvertMode.Auto) => ImageIO.ToModelInput(image, Spec, invert);

    public void Dispose() => Model.Dispose();
}
