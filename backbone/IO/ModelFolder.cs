// Hugging Face style model folders: config.json + model.safetensors (+ whatever the caller adds).
// Tied parameters (lm_head.weight sharing the embedding matrix) are written once, under the first name in the state
// dict, as transformers' save_pretrained does: safetensors cannot hold two names for one buffer.
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.IO;

public static class ModelFolder
{
    public const string WeightsFile = "model.safetensors";
    public const string ConfigFile = "config.json";

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Model weights by state-dict name, each shared buffer once.</summary>
    public static Dictionary<string, Tensor> Weights(nn.Module model)
    {
        var seen = new HashSet<IntPtr>();
        var d = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, t) in model.state_dict())
        {
            var ptr = Native.TensorPointer.Of(t);
            if (ptr != IntPtr.Zero && !seen.Add(ptr)) continue;
            d[name] = t;
        }
        return d;
    }

    /// <summary>Names that alias an earlier tensor of the state dict (tied weights): not written, not required on load.</summary>
    public static HashSet<string> TiedNames(nn.Module model)
    {
        var seen = new HashSet<IntPtr>();
        var tied = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, t) in model.state_dict())
        {
            var ptr = Native.TensorPointer.Of(t);
            if (ptr != IntPtr.Zero && !seen.Add(ptr)) tied.Add(name);
        }
        return tied;
    }

    /// <summary>Writes config.json and model.safetensors into <paramref name="dir"/>, each file atomically.</summary>
    public static void Save(string dir, nn.Module model, JsonNode config, IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(dir);
        SafeTensors.Save(Path.Combine(dir, WeightsFile), Weights(model), metadata ?? new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(dir, ConfigFile), config.ToJsonString(Indented) + "\n");
    }

    /// <summary>Reads config.json of a folder.</summary>
    /// <exception cref="InvalidDataException">Missing or not a JSON object.</exception>
    public static JsonObject ReadConfig(string dir)
    {
        string path = Path.Combine(dir, ConfigFile);
        if (!File.Exists(path)) throw new InvalidDataException($"{path}: not found (a model folder needs config.json)");
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON ({e.Message})", e); }
    }

    /// <summary>
    /// Copies tensors into the model's parameters and buffers by name. Every model tensor must be present (except the
    /// names in <paramref name="optional"/> and tied aliases such as lm_head.weight), every given tensor must name one, and shapes must
    /// agree; dtype and device are converted to the model's. Errors name the tensor.
    /// </summary>
    public static void LoadInto(nn.Module model, IReadOnlyDictionary<string, Tensor> tensors, string source,
        IReadOnlySet<string>? optional = null)
    {
        var target = model.state_dict();
        var tied = TiedNames(model);
        var unexpected = tensors.Keys.Where(k => !target.ContainsKey(k)).Order(StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0)
            throw new InvalidDataException($"{source}: tensor '{unexpected[0]}' is not a parameter of the model" +
                (unexpected.Count > 1 ? $" (and {unexpected.Count - 1} more)" : ""));
        using var noGrad = torch.no_grad();
        foreach (var (name, dst) in target)
        {
            if (!tensors.TryGetValue(name, out var src))
            {
                if (optional?.Contains(name) == true || tied.Contains(name)) continue;
                throw new InvalidDataException($"{source}: missing tensor '{name}' (shape [{string.Join(", ", dst.shape)}])");
            }
            if (!src.shape.SequenceEqual(dst.shape))
                throw new InvalidDataException($"{source}: tensor '{name}' has shape [{string.Join(", ", src.shape)}], the model expects [{string.Join(", ", dst.shape)}]");
            dst.copy_(src.to(dst.dtype, dst.device));
        }
    }

    /// <summary>Loads model.safetensors of a folder into the model (see <see cref="LoadInto"/>).</summary>
    /// <summary>
    /// Finishes loading a freshly built wrapper: reads <paramref name="dir"/>'s weights into <paramref name="model"/>,
    /// runs <paramref name="ready"/> (move to a device, eval mode) and returns <paramref name="owner"/>; if anything
    /// fails the wrapper is disposed before the exception goes on, so a bad folder leaks no tensors.
    /// </summary>
    public static T LoadOwned<T>(string dir, T owner, nn.Module model, Action<T> ready) where T : IDisposable
    {
        try
        {
            LoadWeights(dir, model);
            ready(owner);
            return owner;
        }
        catch
        {
            owner.Dispose();
            throw;
        }
    }

    public static void LoadWeights(string dir, nn.Module model, IReadOnlySet<string>? optional = null)
    {
        string path = Path.Combine(dir, WeightsFile);
        if (!File.Exists(path)) throw new InvalidDataException($"{path}: not found");
        var tensors = SafeTensors.Load(path);
        try { LoadInto(model, tensors, path, optional); }
        finally { foreach (var t in tensors.Values) t.Dispose(); }
    }
}
