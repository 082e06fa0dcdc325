// Every DNA model of the suite behind one type, its model folder, and training/evaluation through the backbone's
// Trainer.
//
// Model folder (Hugging Face layout, written through Ssm.Backbone.IO.ModelFolder):
//   config.json  causal LM:  {"model_type": "ssm-dna-lm", "task": "causal-lm", d_model, n_layer, d_state, d_conv, expand,
//                             "vocab_size": 12, "pad_vocab_size_multiple": 8, "bos_token_id": 2, "complement_map": {...}}
//                Caduceus:   {"model_type": "caduceus", "task": "masked-lm" | "sequence-classification",
//                             "architectures": ["CaduceusForMaskedLM" | "CaduceusForSequenceClassification"],
//                             d_model, n_layer, d_state, d_conv, expand, bidirectional, bidirectional_strategy ("add" |
//                             "ew_multiply"), bidirectional_weight_tie, rcps, vocab_size, pad_vocab_size_multiple,
//                             norm_epsilon, residual_in_fp32, "complement_map": {...},
//                             classification only: "num_labels", "id2label": {"0": name, ...}}
//   model.safetensors  the weights (DnaLM: HF MambaForCausalLM names; Caduceus: modeling_caduceus.py names, Caduceus.cs)
//
// Training (DnaTraining) takes its data as delegates so that it does not depend on how a data set is stored:
//   DnaWindowSource(rng, batch, length) -> (batch, length) windows of bases: a uint8 tensor of ASCII bases or an
//   integer tensor of token ids (DnaTokenizer.AsIds tells them apart by dtype). The trainer hands the step's seeded
//   System.Random, so a source that draws its offsets from it makes --resume exact.
// Labelled sequences for classification are DnaLabelledSet(ids (n, L), labels (n)).
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Genomics;

/// <summary>What a DNA model predicts.</summary>
public enum DnaTask
{
    /// <summary>Next base (DnaLM).</summary>
    CausalLM,
    /// <summary>Masked bases (CaduceusForMaskedLM).</summary>
    MaskedLM,
    /// <summary>One label per sequence (CaduceusForSequenceClassification).</summary>
    SequenceClassification,
}

/// <summary>A DNA model (causal DnaLM or Caduceus) with its config and model folder.</summary>
public sealed class DnaModel : IDisposable
{
    public const string CausalModelType = "ssm-dna-lm";
    public const string CaduceusModelType = "caduceus";

    /// <summary>The model types, for the CLI.</summary>
    public static IReadOnlyList<string> ModelTypes { get; } = [CausalModelType, CaduceusModelType];

    public string ModelType { get; }
    public DnaTask Task { get; }

    /// <summary>The causal LM's config (null for Caduceus).</summary>
    public DnaLMConfig? CausalConfig { get; }

    /// <summary>The Caduceus config (null for the causal LM).</summary>
    public CaduceusConfig? CaduceusConfig { get; }

    /// <summary>Class names of a classifier (index = label id); empty otherwise.</summary>
    public IReadOnlyList<string> Labels { get; }

    /// <summary>The network: MambaLM, CaduceusForMaskedLM or CaduceusForSequenceClassification.</summary>
    public nn.Module<Tensor, Tensor> Module { get; }

    /// <summary>The causal LM (null for Caduceus).</summary>
    public DnaLM? Causal { get; }

    DnaModel(DnaLM causal)
    {
        ModelType = CausalModelType; Task = DnaTask.CausalLM; CausalConfig = causal.Config; Labels = [];
        Causal = causal; Module = causal.Model;
    }

    DnaModel(CaduceusConfig config, IReadOnlyList<string>? labels)
    {
        config.Validate();
        ModelType = CaduceusModelType; CaduceusConfig = config;
        if (labels is null)
        {
            Task = DnaTask.MaskedLM; Labels = [];
            Module = new CaduceusForMaskedLM(config);
        }
        else
        {
            if (labels.Count < 2) throw new ArgumentException($"a classifier needs at least 2 labels, got {labels.Count}");
            if (labels.Distinct(StringComparer.Ordinal).Count() != labels.Count) throw new ArgumentException("label names must be distinct");
            Task = DnaTask.SequenceClassification; Labels = labels.ToArray();
            Module = new CaduceusForSequenceClassification(config, labels.Count);
        }
    }

    /// <summary>A new causal LM (seed torch first for a reproducible one).</summary>
    public static DnaModel CreateCausal(DnaLMConfig config) => new(new DnaLM(config));

    /// <summary>A new Caduceus masked LM.</summary>
    public static DnaModel CreateMaskedLM(CaduceusConfig config) => new(config, null);

    /// <summary>A new Caduceus sequence classifier with the given class names.</summary>
    public static DnaModel CreateClassifier(CaduceusConfig config, IReadOnlyList<string> labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        return new(config, labels);
    }

    /// <summary>
    /// A new model from a preset of <paramref name="modelType"/> ("ssm-dna-lm" default "small"; "caduceus" default
    /// "small") with <paramref name="overrides"/> (snake_case field = JSON value or plain text, e.g. "d_model" = "64",
    /// "rcps" = "true"). A Caduceus model with <paramref name="labels"/> is a classifier, otherwise a masked LM.
    /// </summary>
    /// <exception cref="ArgumentException">Unknown type, preset or field, or a value that does not fit.</exception>
    public static DnaModel Create(string modelType, string? preset = null, IEnumerable<KeyValuePair<string, string>>? overrides = null,
        IReadOnlyList<string>? labels = null)
    {
        string name = preset ?? "small";
        switch (modelType.ToLowerInvariant())
        {
            case CausalModelType:
                if (labels is not null) throw new ArgumentException($"{CausalModelType} is a language model; classifiers are caduceus models");
                if (!DnaLMConfig.Presets.TryGetValue(name, out var lm))
                    throw new ArgumentException($"unknown preset '{name}' for {CausalModelType} (presets: {string.Join(", ", DnaLMConfig.Presets.Keys.Order())})");
                return CreateCausal(WithOverrides(lm, overrides, CausalModelType));
            case CaduceusModelType:
                if (!CaduceusConfig.Presets.TryGetValue(name, out var cad))
                    throw new ArgumentException($"unknown preset '{name}' for {CaduceusModelType} (presets: {string.Join(", ", CaduceusConfig.Presets.Keys.Order())})");
                var config = WithOverrides(cad, overrides, CaduceusModelType);
                return labels is null ? CreateMaskedLM(config) : CreateClassifier(config, labels);
            default:
                throw new ArgumentException($"unknown model type '{modelType}' (expected {string.Join(" or ", ModelTypes)})");
        }
    }

    // ------------------------------------------------------------------------------------------ properties

    public DnaLM AsCausal => Causal ?? throw new InvalidOperationException($"this is a {ModelType} {TaskName(Task)} model, not a causal LM ({CausalModelType})");

    public CaduceusForMaskedLM AsMaskedLM => Module as CaduceusForMaskedLM
        ?? throw new InvalidOperationException($"this is a {ModelType} {TaskName(Task)} model, not a Caduceus masked LM");

    public CaduceusForSequenceClassification AsClassifier => Module as CaduceusForSequenceClassification
        ?? throw new InvalidOperationException($"this is a {ModelType} {TaskName(Task)} model, not a classifier");

    /// <summary>True for an RC-equivariant (Caduceus-PS) model.</summary>
    public bool IsRcEquivariant => CaduceusConfig?.Rcps == true;

    /// <summary>The device of the parameters (set by <see cref="To"/>).</summary>
    public Device Device => Module.parameters().First().device;

    /// <summary>Trainable parameters, each shared tensor once.</summary>
    public long ParameterCount => Module.parameters().DistinctBy(p => p.Handle).Sum(p => p.numel());

    /// <summary>Moves the model (tied weights stay tied) and returns this.</summary>
    public DnaModel To(Device device, ScalarType? dtype = null)
    {
        MixedPrecision.MoveTo(Module, device, dtype);
        return this;
    }

    public static string TaskName(DnaTask task) => task switch
    {
        DnaTask.CausalLM => "causal-lm",
        DnaTask.MaskedLM => "masked-lm",
        DnaTask.SequenceClassification => "sequence-classification",
        _ => throw new ArgumentOutOfRangeException(nameof(task), task, "unknown task"),
    };

    // ------------------------------------------------------------------------------------------ config.json

    /// <summary>How config records are written: snake_case names, enums as snake_case strings; unknown fields are errors.</summary>
    public static JsonSerializerOptions ConfigJsonOptions { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower, allowIntegerValues: false) },
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    static readonly string[] CausalReserved = ["model_type", "task", "vocab_size", "pad_vocab_size_multiple", "bos_token_id", "complement_map"];
    static readonly string[] CaduceusReserved = ["model_type", "task", "architectures", "num_labels", "id2label", "complement_map"];

    static JsonObject ComplementMapJson()
    {
        var o = new JsonObject();
        for (int i = 0; i < DnaTokenizer.PaddedVocab; i++) o[i.ToString(CultureInfo.InvariantCulture)] = DnaTokenizer.ComplementMap[i];
        return o;
    }

    /// <summary>config.json's content.</summary>
    public JsonObject ConfigJson()
    {
        var o = new JsonObject { ["model_type"] = ModelType, ["task"] = TaskName(Task) };
        if (Causal is not null)
        {
            foreach (var (k, v) in (JsonObject)JsonSerializer.SerializeToNode(CausalConfig!, ConfigJsonOptions)!) o[k] = v?.DeepClone();
            o["vocab_size"] = DnaTokenizer.VocabSize;
            o["pad_vocab_size_multiple"] = 8;
            o["bos_token_id"] = DnaTokenizer.Bos;
        }
        else
        {
            o["architectures"] = new JsonArray(Task == DnaTask.MaskedLM ? "CaduceusForMaskedLM" : "CaduceusForSequenceClassification");
            foreach (var (k, v) in (JsonObject)JsonSerializer.SerializeToNode(CaduceusConfig!, ConfigJsonOptions)!) o[k] = v?.DeepClone();
            if (Task == DnaTask.SequenceClassification)
            {
                o["num_labels"] = Labels.Count;
                var names = new JsonObject();
                for (int i = 0; i < Labels.Count; i++) names[i.ToString(CultureInfo.InvariantCulture)] = Labels[i];
                o["id2label"] = names;
            }
        }
        o["complement_map"] = ComplementMapJson();
        return o;
    }

    /// <summary>Writes config.json and model.safetensors (each atomically).</summary>
    public void Save(string dir) => ModelFolder.Save(dir, Module, ConfigJson());

    /// <summary>Reads a model folder written by <see cref="Save"/> or by training; the model is in eval mode.</summary>
    /// <exception cref="InvalidDataException">Missing files, a bad config or weights that do not fit; names the file.</exception>
    public static DnaModel Load(string dir, Device? device = null)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: model folder not found");
        var model = FromConfig(ModelFolder.ReadConfig(dir), Path.Combine(dir, ModelFolder.ConfigFile));
        return ModelFolder.LoadOwned(dir, model, model.Module, m =>
        {
            if (device is not null) m.To(device);
            m.Module.eval();
        });
    }

    /// <summary>
    /// A new classifier whose Caduceus backbone comes from a pretrained folder (a masked LM or another classifier) and
    /// whose head (score) is new: the start of fine-tuning.
    /// </summary>
    public static DnaModel ClassifierFromPretrained(string dir, IReadOnlyList<string> labels, Device? device = null)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: model folder not found");
        string path = Path.Combine(dir, ModelFolder.ConfigFile);
        var pretrained = FromConfig(ModelFolder.ReadConfig(dir), path);
        var config = pretrained.CaduceusConfig;
        pretrained.Dispose();
        if (config is null) throw new InvalidDataException($"{path}: a classifier is fine-tuned from a caduceus model, this folder holds a {CausalModelType}");
        var model = CreateClassifier(config, labels);
        try
        {
            string weights = Path.Combine(dir, ModelFolder.WeightsFile);
            if (!File.Exists(weights)) throw new InvalidDataException($"{weights}: not found");
            var tensors = SafeTensors.Load(weights);
            try
            {
                var backbone = tensors.Where(kv => kv.Key.StartsWith("caduceus.", StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value);
                ModelFolder.LoadInto(model.Module, backbone, weights, optional: new HashSet<string> { "score.weight" });
            }
            finally { foreach (var t in tensors.Values) t.Dispose(); }
            if (device is not null) model.To(device);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Builds an untrained model from a config.json object; every problem is an InvalidDataException naming <paramref name="path"/>.</summary>
    public static DnaModel FromConfig(JsonObject json, string path)
    {
        string Str(string key) => json[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s
            : throw new InvalidDataException($"{path}: missing or non-string \"{key}\"");
        string type = Str("model_type");
        if (json["complement_map"] is JsonNode cm && !JsonNode.DeepEquals(cm, ComplementMapJson()))
            throw new InvalidDataException($"{path}: complement_map differs from the DNA tokenizer's (A<->T, C<->G, others fixed)");
        JsonObject Fields(string[] reserved)
        {
            var f = new JsonObject();
            foreach (var (k, v) in json) if (!reserved.Contains(k)) f[k] = v?.DeepClone();
            return f;
        }
        T Parse<T>(JsonObject fields) where T : class
        {
            try { return fields.Deserialize<T>(ConfigJsonOptions) ?? throw new InvalidDataException($"{path}: empty config"); }
            catch (JsonException e) { throw new InvalidDataException($"{path}: invalid {type} config{(e.Path is { } p ? $" at {p}" : "")}: {e.Message}", e); }
        }
        try
        {
            switch (type)
            {
                case CausalModelType:
                {
                    if (json["task"] is JsonNode t && t.GetValue<string>() != "causal-lm")
                        throw new InvalidDataException($"{path}: task must be causal-lm for {CausalModelType}");
                    if (json["vocab_size"] is JsonNode vs && vs.GetValue<long>() != DnaTokenizer.VocabSize)
                        throw new InvalidDataException($"{path}: vocab_size must be {DnaTokenizer.VocabSize}");
                    if (json["bos_token_id"] is JsonNode bos && bos.GetValue<long>() != DnaTokenizer.Bos)
                        throw new InvalidDataException($"{path}: bos_token_id must be {DnaTokenizer.Bos}");
                    var config = Parse<DnaLMConfig>(Fields(CausalReserved));
                    config.Validate();
                    return CreateCausal(config);
                }
                case CaduceusModelType:
                {
                    string task = json["task"] is JsonNode tn ? tn.GetValue<string>()
                        : json["num_labels"] is not null ? "sequence-classification" : "masked-lm";
                    var config = Parse<CaduceusConfig>(Fields(CaduceusReserved));
                    config.Validate();
                    if (task == "masked-lm") return CreateMaskedLM(config);
                    if (task != "sequence-classification")
                        throw new InvalidDataException($"{path}: unknown task '{task}' (expected masked-lm or sequence-classification)");
                    if (json["id2label"] is not JsonObject names) throw new InvalidDataException($"{path}: a classifier needs \"id2label\"");
                    var labels = new string[names.Count];
                    for (int i = 0; i < labels.Length; i++)
                        labels[i] = names[i.ToString(CultureInfo.InvariantCulture)]?.GetValue<string>()
                            ?? throw new InvalidDataException($"{path}: id2label has no entry \"{i}\" (ids must be 0..{labels.Length - 1})");
                    if (json["num_labels"] is JsonNode nl && nl.GetValue<int>() != labels.Length)
                        throw new InvalidDataException($"{path}: num_labels {nl.GetValue<int>()} differs from id2label's {labels.Length} entries");
                    return CreateClassifier(config, labels);
                }
                default:
                    throw new InvalidDataException($"{path}: unknown model_type '{type}' (expected {string.Join(" or ", ModelTypes)})");
            }
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    static T WithOverrides<T>(T config, IEnumerable<KeyValuePair<string, string>>? overrides, string type) where T : class
    {
        var fields = (JsonObject)JsonSerializer.SerializeToNode(config, ConfigJsonOptions)!;
        var set = new List<string>();
        foreach (var (k, v) in overrides ?? [])
        {
            if (!fields.ContainsKey(k))
                throw new ArgumentException($"unknown config field '{k}' for {type} (fields: {string.Join(", ", fields.Select(f => f.Key))})");
            JsonNode? value;
            try { value = JsonNode.Parse(v); }
            catch (JsonException) { value = JsonValue.Create(v); }
            fields[k] = value;
            set.Add(k);
        }
        T result;
        try { result = fields.Deserialize<T>(ConfigJsonOptions) ?? throw new ArgumentException($"empty {type} config"); }
        catch (JsonException e) { throw new ArgumentException($"invalid {type} config{(e.Path is { } p ? $" at {p}" : "")}: {e.Message}", e); }
        var back = (JsonObject)JsonSerializer.SerializeToNode(result, ConfigJsonOptions)!;
        foreach (var k in set)
            if (!JsonNode.DeepEquals(back[k], fields[k]))
                throw new ArgumentException($"config field '{k}' cannot be set to {fields[k]?.ToJsonString()}");
        switch (result)
        {
            case DnaLMConfig c: c.Validate(); break;
            case CaduceusConfig c: c.Validate(); break;
        }
        return result;
    }

    // ------------------------------------------------------------------------------------------ inference

    /// <summary>ids (b, l) int64 -> the network's output (LM logits (b, l, V) or class logits (b, K)), eval mode, no grad.</summary>
    public Tensor Logits(Tensor ids)
    {
        Module.eval();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        return Module.call(DnaTokenizer.AsIds(ids).to(Device)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Class probabilities (n, K) float32 on the CPU for sequences of ids (n, L), in batches. With
    /// <paramref name="conjoin"/> (post-hoc conjoining, Caduceus section 4.1) the logits of x and rc(x) are averaged;
    /// an RC-equivariant classifier is already RC-invariant, so it is the same there.
    /// </summary>
    public Tensor ClassProbabilities(Tensor ids, int batch = 64, bool conjoin = false)
    {
        var clf = AsClassifier;
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "the batch must be at least 1");
        clf.eval();
        using var noGrad = torch.no_grad();
        var all = DnaTokenizer.AsIds(ids);
        try
        {
            var parts = new List<Tensor>();
            for (long r = 0; r < all.shape[0]; r += batch)
            {
                using var scope = torch.NewDisposeScope();
                var x = all.narrow(0, r, Math.Min(batch, all.shape[0] - r)).to(Device);
                var logits = clf.forward(x);
                if (conjoin && !IsRcEquivariant) logits = (logits + clf.forward(DnaTokenizer.ReverseComplement(x))) / 2;
                parts.Add(logits.softmax(-1).cpu().MoveToOuterDisposeScope());
            }
            if (parts.Count == 0) return torch.zeros(0, Labels.Count);
            var result = torch.cat(parts, 0);
            foreach (var p in parts) p.Dispose();
            return result;
        }
        finally { all.Dispose(); }
    }

    /// <summary>
    /// Classifies sequences of ASCII bases of any lengths (equal lengths run together): for each, the most likely
    /// label and all class probabilities.
    /// </summary>
    public (int Label, float[] Probabilities)[] Classify(IReadOnlyList<ReadOnlyMemory<byte>> sequences, int batch = 64, bool conjoin = false)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        var result = new (int, float[])[sequences.Count];
        foreach (var group in Enumerable.Range(0, sequences.Count).GroupBy(i => sequences[i].Length))
        {
            if (group.Key == 0) throw new ArgumentException($"sequence {group.First()} is empty");
            var rows = group.ToArray();
            var ids = new long[rows.Length * group.Key];
            for (int r = 0; r < rows.Length; r++) DnaTokenizer.Encode(sequences[rows[r]].Span, ids.AsSpan(r * group.Key, group.Key));
            using var t = torch.tensor(ids, new long[] { rows.Length, group.Key }, ScalarType.Int64);
            using var probs = ClassProbabilities(t, batch, conjoin);
            var flat = probs.data<float>().ToArray();
            int k = Labels.Count;
            for (int r = 0; r < rows.Length; r++)
            {
                var p = flat.AsSpan(r * k, k).ToArray();
                int best = 0;
                for (int j = 1; j < k; j++) if (p[j] > p[best]) best = j;
                result[rows[r]] = (best, p);
            }
        }
        return result;
    }

    public void Dispose() => Module.Dispose();
}

/// <summary>Windows of bases for training: (batch, length) uint8 ASCII bases or integer token ids (see the file header).</summary>
public delegate Tensor DnaWindowSource(Random rng, long batch, long length);

/// <summary>Labelled sequences: ids (n, L) (uint8 ASCII bases or token ids) and labels (n) int64 in [0, K).</summary>
public sealed record DnaLabelledSet(Tensor Ids, Tensor Labels)
{
    public long Count => Ids.shape[0];

    /// <summary>Throws an ArgumentException when the shapes or label range do not fit a K-class problem.</summary>
    public void Validate(long numLabels, string name = "data")
    {
        if (Ids.dim() != 2 || Ids.shape[0] == 0 || Ids.shape[1] == 0)
            throw new ArgumentException($"{name}: ids must be (n, L) with n, L >= 1, got [{string.Join(", ", Ids.shape)}]");
        if (Labels.dim() != 1 || Labels.shape[0] != Ids.shape[0])
            throw new ArgumentException($"{name}: labels must be ({Ids.shape[0]}), got [{string.Join(", ", Labels.shape)}]");
        using var lo = Labels.min();
        using var hi = Labels.max();
        if (lo.item<long>() < 0 || hi.item<long>() >= numLabels)
            throw new ArgumentException($"{name}: labels must lie in [0, {numLabels}), got {lo.item<long>()}..{hi.item<long>()}");
    }
}

/// <summary>Settings of a DNA training run beside the Trainer's own options.</summary>
public sealed record DnaTrainOptions
{
    /// <summary>Windows (or sequences) per micro-batch.</summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>Bases per training window (LM tasks).</summary>
    public int SeqLen { get; init; } = 1024;

    /// <summary>Validation windows drawn once (seeded by EvalSeed) and scored at each evaluation (LM tasks).</summary>
    public int EvalWindows { get; init; } = 64;

    /// <summary>Windows per evaluation batch.</summary>
    public int EvalBatch { get; init; } = 16;

    /// <summary>Seed of the validation windows and of their masking.</summary>
    public long EvalSeed { get; init; } = 20240101;

    /// <summary>
    /// Replace each training window by its reverse complement with probability 1/2 (Caduceus-Ph's RC augmentation;
    /// both strands are equally valid DNA). Skipped for RC-equivariant models, which it cannot change.
    /// </summary>
    public bool RcAugment { get; init; } = true;

    /// <summary>Fraction of nucleotides selected for masking (masked LM).</summary>
    public double MaskRate { get; init; } = MlmMasking.DefaultRate;

    /// <summary>
    /// Bf16: the model's matrices, norms and embeddings compute in bf16 while the SSM parameters (A, D, dt bias), the
    /// residual stream and AdamW's master weights stay float32 (MixedPrecision.Apply, applied by every Train* method
    /// before the optimizer is made); logits and the loss are float32. Fp32 leaves the model as it is.
    /// </summary>
    public Precision Precision { get; init; } = Precision.Fp32;

    public void Validate()
    {
        if (BatchSize <= 0) throw new ArgumentException($"batch size must be positive, got {BatchSize}");
        if (SeqLen <= 0) throw new ArgumentException($"sequence length must be positive, got {SeqLen}");
        if (EvalWindows < 0) throw new ArgumentException($"eval windows must be >= 0, got {EvalWindows}");
        if (EvalBatch <= 0) throw new ArgumentException($"eval batch must be positive, got {EvalBatch}");
        if (MaskRate is <= 0 or >= 1) throw new ArgumentException($"mask rate must lie in (0, 1), got {MaskRate}");
    }
}

/// <summary>Classifier metrics: accuracy, mean cross-entropy (nats) and the confusion matrix [true, predicted].</summary>
public sealed record ClassifierEval(double Accuracy, double Loss, long[,] Confusion, long Count);

/// <summary>Training and evaluation of DNA models through the backbone Trainer.</summary>
public static class DnaTraining
{
    /// <summary>Windows from a source as int64 ids (batch, length) on <paramref name="device"/>, checked for shape.</summary>
    public static Tensor Draw(DnaWindowSource source, Random rng, long batch, long length, Device device)
    {
        using var raw = source(rng, batch, length);
        if (raw.dim() != 2 || raw.shape[0] != batch || raw.shape[1] != length)
            throw new InvalidDataException($"the window source returned [{string.Join(", ", raw.shape)}] for a ({batch}, {length}) batch");
        using var ids = DnaTokenizer.AsIds(raw);
        return ids.to(device);
    }

    /// <summary>The Random that draws the fixed validation windows of <paramref name="seed"/> (one rule for ids and bytes).</summary>
    static Random ValidationRandom(long seed) => new(Trainer.StepSeed(seed, -1));

    /// <summary>Fixed validation windows: <paramref name="count"/> windows of <paramref name="length"/> bases drawn with a seeded Random (ids, CPU).</summary>
    public static Tensor ValidationWindows(DnaWindowSource source, int count, long length, long seed) =>
        Draw(source, ValidationRandom(seed), count, length, torch.CPU);

    /// <summary>The same windows as <see cref="ValidationWindows"/>, as the bytes the source gave (for the Markov baseline).</summary>
    public static byte[][] ValidationWindowBytes(DnaWindowSource source, int count, int length, long seed)
    {
        using var t = source(ValidationRandom(seed), count, length);
        var flat = t.data<byte>().ToArray();
        return Enumerable.Range(0, count).Select(i => flat.AsSpan(i * length, length).ToArray()).ToArray();
    }

    /// <summary>Each row replaced by its reverse complement with probability 1/2 (torch's generator; seeded per step by the Trainer).</summary>
    public static Tensor RcAugment(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var flip = torch.rand(ids.shape[0], device: ids.device).lt(0.5).unsqueeze(1);   // (b 1)
        return torch.where(flip, DnaTokenizer.ReverseComplement(ids), ids).MoveToOuterDisposeScope();
    }

    static void Announce(DnaModel model, string what, TrainOptions o, DnaTrainOptions d) =>
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{model.ModelType} {DnaModel.TaskName(model.Task)}: {model.ParameterCount:N0} parameters; {what}; batch {d.BatchSize} x {o.Accumulation}, {o.Steps} steps on {model.Device}{(d.Precision == Precision.Bf16 ? ", bf16 mixed precision" : "")}"));

    /// <summary>Casts the model for the run's precision, before the Trainer makes its AdamW (the cast replaces the
    /// float32 exceptions' parameter objects, which the optimizer must see).</summary>
    static void ApplyPrecision(DnaModel model, DnaTrainOptions d, TrainOptions o)
    {
        MixedPrecision.CheckResume(o.OutputDir, o.Resume, d.Precision);
        if (d.Precision != Precision.Fp32) MixedPrecision.Apply(model.Module, d.Precision);
    }

    // ------------------------------------------------------------------------------------------ causal LM

    /// <summary>
    /// Trains a causal DNA LM on random windows (next-base cross-entropy over A/C/G/T targets, shown in bits per base),
    /// with valid_bits_per_base on fixed validation windows every EvalEvery steps and at the end; checkpoints, exact
    /// resume and the final folder in options.OutputDir (which <see cref="DnaModel.Load"/> reads).
    /// </summary>
    public static TrainResult TrainCausal(DnaModel model, DnaWindowSource train, DnaWindowSource? valid, TrainOptions options,
        DnaTrainOptions dto, CancellationToken cancel = default, Action<long>? afterStep = null)
    {
        dto.Validate();
        var lm = model.AsCausal;
        var device = model.Device;
        using var validIds = valid is null || dto.EvalWindows == 0 ? null : ValidationWindows(valid, dto.EvalWindows, dto.SeqLen, dto.EvalSeed);
        var o = options with { Unit = "bases", FormatLoss = options.FormatLoss ?? DnaLM.FormatBits };
        ApplyPrecision(model, dto, o);
        Announce(model, $"windows of {dto.SeqLen} bases, RC augmentation {(dto.RcAugment ? "on" : "off")}", o, dto);
        var trainer = new Trainer(model.Module, o, (step, micro, rng) =>
        {
            var ids = Draw(train, rng, dto.BatchSize, dto.SeqLen, device);
            if (dto.RcAugment) ids = RcAugment(ids);
            var (loss, _) = lm.Loss(ids);
            return (loss, (long)dto.BatchSize * dto.SeqLen);
        }, model.ConfigJson)
        {
            Evaluate = validIds is null ? null : _ => new Dictionary<string, double>
            {
                ["valid_bits_per_base"] = EvalCausal(model, validIds, dto.EvalBatch).BitsPerBase,
            },
            AfterStep = afterStep,
        };
        return trainer.Run(cancel);
    }

    /// <summary>The score of windows (n, L) of ids, each read from [BOS] at a zero state (summed over windows).</summary>
    public static DnaScore EvalCausal(DnaModel model, Tensor windows, int batch = 16)
    {
        var lm = model.AsCausal;
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "the batch must be at least 1");
        bool training = lm.Model.training;
        lm.Model.eval();
        using var noGrad = torch.no_grad();
        double nats = 0;
        long scored = 0, total = 0;
        try
        {
            for (long r = 0; r < windows.shape[0]; r += batch)
            {
                using var scope = torch.NewDisposeScope();
                var targets = DnaTokenizer.AsIds(windows.narrow(0, r, Math.Min(batch, windows.shape[0] - r))).to(lm.Device);
                var (n, s) = DnaLM.TargetNats(lm.Logits(DnaLM.ShiftRight(targets)), targets);
                nats += n.to_type(ScalarType.Float64).sum().item<double>();
                scored += s.sum().item<long>();
                total += targets.numel();
            }
        }
        finally { if (training) lm.Model.train(); }
        return new DnaScore(nats, scored, total - scored);
    }

    /// <summary><see cref="EvalCausal(DnaModel, Tensor, int)"/> on fixed windows drawn from a source.</summary>
    public static DnaScore EvalCausal(DnaModel model, DnaWindowSource source, int windows, long length, long seed, int batch = 16)
    {
        using var ids = ValidationWindows(source, windows, length, seed);
        return EvalCausal(model, ids, batch);
    }

    // ------------------------------------------------------------------------------------------ masked LM

    /// <summary>
    /// Masked-LM pretraining of a Caduceus model (MlmMasking: 15% of nucleotides, 80/10/10), with
    /// valid_mlm_loss / valid_mlm_accuracy on fixed validation windows masked with a fixed seed.
    /// </summary>
    public static TrainResult TrainMaskedLM(DnaModel model, DnaWindowSource train, DnaWindowSource? valid, TrainOptions options,
        DnaTrainOptions dto, CancellationToken cancel = default, Action<long>? afterStep = null)
    {
        dto.Validate();
        var mlm = model.AsMaskedLM;
        var device = model.Device;
        bool augment = dto.RcAugment && !model.IsRcEquivariant;
        using var validIds = valid is null || dto.EvalWindows == 0 ? null : ValidationWindows(valid, dto.EvalWindows, dto.SeqLen, dto.EvalSeed);
        var o = options with { Unit = "bases" };
        ApplyPrecision(model, dto, o);
        Announce(model, $"windows of {dto.SeqLen} bases, masking {dto.MaskRate:P0}, RC augmentation {(augment ? "on" : "off")}", o, dto);
        var trainer = new Trainer(model.Module, o, (step, micro, rng) =>
        {
            var ids = Draw(train, rng, dto.BatchSize, dto.SeqLen, device);
            if (augment) ids = RcAugment(ids);
            var (inputs, labels) = MlmMasking.Apply(ids, rate: dto.MaskRate);
            var (loss, _) = mlm.Loss(inputs, labels);
            return (loss, (long)dto.BatchSize * dto.SeqLen);
        }, model.ConfigJson)
        {
            Evaluate = validIds is null ? null : _ =>
            {
                var (loss, acc, _) = EvalMaskedLM(model, validIds, dto.EvalSeed, dto.EvalBatch, dto.MaskRate);
                return new Dictionary<string, double> { ["valid_mlm_loss"] = loss, ["valid_mlm_accuracy"] = acc };
            },
            AfterStep = afterStep,
        };
        return trainer.Run(cancel);
    }

    /// <summary>
    /// Masked-LM loss (nats per masked position) and accuracy (argmax over the vocabulary == original id) of windows
    /// (n, L) masked with a generator seeded by <paramref name="seed"/> (the same masks at every evaluation).
    /// </summary>
    public static (double Loss, double Accuracy, long Masked) EvalMaskedLM(DnaModel model, Tensor windows, long seed, int batch = 16,
        double rate = MlmMasking.DefaultRate)
    {
        var mlm = model.AsMaskedLM;
        bool training = mlm.training;
        mlm.eval();
        using var noGrad = torch.no_grad();
        using var gen = new Generator((ulong)Trainer.StepSeed(seed, -2));
        double nats = 0;
        long correct = 0, count = 0;
        try
        {
            for (long r = 0; r < windows.shape[0]; r += batch)
            {
                using var scope = torch.NewDisposeScope();
                var ids = DnaTokenizer.AsIds(windows.narrow(0, r, Math.Min(batch, windows.shape[0] - r))).to(model.Device);
                var (inputs, labels) = MlmMasking.Apply(ids, gen, rate);
                var logits = mlm.forward(inputs);                                                  // (b L V)
                var flat = labels.reshape(-1);
                nats += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), flat, ignore_index: MlmMasking.IgnoreIndex,
                    reduction: nn.Reduction.Sum).to_type(ScalarType.Float64).item<double>();
                var hit = logits.argmax(-1).reshape(-1).eq(flat);
                correct += hit.sum().item<long>();
                count += flat.ne(MlmMasking.IgnoreIndex).sum().item<long>();
            }
        }
        finally { if (training) mlm.train(); }
        return count == 0 ? (double.NaN, double.NaN, 0) : (nats / count, (double)correct / count, count);
    }

    // ------------------------------------------------------------------------------------------ classification

    /// <summary>
    /// Fine-tunes (or trains) a Caduceus classifier on labelled sequences: epochs of shuffled batches (EpochSampler),
    /// cross-entropy, RC augmentation for non-equivariant models, valid_accuracy / valid_loss every EvalEvery steps
    /// and at the end.
    /// </summary>
    public static TrainResult TrainClassifier(DnaModel model, DnaLabelledSet train, DnaLabelledSet? valid, TrainOptions options,
        DnaTrainOptions dto, CancellationToken cancel = default, Action<long>? afterStep = null)
    {
        dto.Validate();
        var clf = model.AsClassifier;
        train.Validate(clf.NumLabels, "training set");
        valid?.Validate(clf.NumLabels, "validation set");
        var device = model.Device;
        bool augment = dto.RcAugment && !model.IsRcEquivariant;
        using var ids = DnaTokenizer.AsIds(train.Ids).to(device);
        using var labels = train.Labels.to_type(ScalarType.Int64).to(device);
        var sampler = new EpochSampler(checked((int)train.Count), dto.BatchSize, options.Seed);
        var o = options with { Unit = "sequences" };
        ApplyPrecision(model, dto, o);
        Announce(model, string.Create(CultureInfo.InvariantCulture,
            $"{train.Count:N0} sequences of {ids.shape[1]} bases, {sampler.Epoch(o.Steps * o.Accumulation):0.00} epochs, RC augmentation {(augment ? "on" : "off")}"), o, dto);
        var trainer = new Trainer(model.Module, o, (step, micro, rng) =>
        {
            var rows = torch.tensor(sampler.Batch(step * o.Accumulation + micro).Select(i => (long)i).ToArray(), device: device);
            var x = ids.index_select(0, rows);
            if (augment) x = RcAugment(x);
            var logits = clf.forward(x);
            return (nn.functional.cross_entropy(logits, labels.index_select(0, rows)), rows.shape[0]);
        }, model.ConfigJson)
        {
            Evaluate = valid is null ? null : _ =>
            {
                var e = EvalClassifier(model, valid, dto.EvalBatch);
                return new Dictionary<string, double> { ["valid_accuracy"] = e.Accuracy, ["valid_loss"] = e.Loss };
            },
            AfterStep = afterStep,
        };
        return trainer.Run(cancel);
    }

    /// <summary>Accuracy, mean cross-entropy and confusion matrix of a classifier on labelled sequences.</summary>
    public static ClassifierEval EvalClassifier(DnaModel model, DnaLabelledSet data, int batch = 64, bool conjoin = false)
    {
        var clf = model.AsClassifier;
        data.Validate(clf.NumLabels);
        bool training = clf.training;
        try
        {
            using var probs = model.ClassProbabilities(data.Ids, batch, conjoin);          // (n K) CPU
            using var y = data.Labels.to_type(ScalarType.Int64).cpu();
            using var pred = probs.argmax(-1);
            using var picked = probs.gather(1, y.unsqueeze(1)).clamp_min(1e-30).log().neg();
            double loss = picked.to_type(ScalarType.Float64).mean().item<double>();
            int k = (int)clf.NumLabels;
            var confusion = new long[k, k];
            var ya = y.data<long>().ToArray();
            var pa = pred.data<long>().ToArray();
            long correct = 0;
            for (int i = 0; i < ya.Length; i++)
            {
                confusion[ya[i], pa[i]]++;
                if (ya[i] == pa[i]) correct++;
            }
            return new ClassifierEval((double)correct / ya.Length, loss, confusion, ya.Length);
        }
        finally { if (training) clf.train(); }
    }
}
