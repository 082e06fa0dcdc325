// A text model as the CLI and library users see it: a MambaLM plus the tokenizer that goes with its folder.
//   Hugging Face folder (config.json + model.safetensors [+ tokenizer.json])   -> HfMamba + HfTokenizer (BPE)
//   MambaByte folder (the same HF layout, vocab 256, tokenizer_config.json naming the byte tokenizer) -> bytes
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Models;
using static TorchSharp.torch;

namespace Ssm.Language;

public sealed class TextModel : IDisposable
{
    public const string ByteTokenizerClass = "ByteTokenizer";

    public MambaLM Model { get; }
    /// <summary>Null when the folder has no tokenizer (then only token ids can be used).</summary>
    public ITextTokenizer? Tokenizer { get; }
    public string Dir { get; }
    public bool ByteLevel => Tokenizer is ByteTokenizer;

    TextModel(MambaLM model, ITextTokenizer? tokenizer, string dir) { Model = model; Tokenizer = tokenizer; Dir = dir; }

    /// <summary>The default model shipped next to the app (models/mambabyte-small).</summary>
    public static string DefaultDir => Path.Combine(AppContext.BaseDirectory, "models", "mambabyte-small");

    /// <exception cref="InvalidDataException">Not a model folder, an unknown model type, or a bad checkpoint.</exception>
    public static TextModel Load(string dir, Device device)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: no such model folder");
        var model = HfMamba.Load(dir, device);
        model.eval();
        return new TextModel(model, LoadTokenizer(dir, model.Config), dir);
    }

    static ITextTokenizer? LoadTokenizer(string dir, MambaLMConfig config)
    {
        string tokJson = Path.Combine(dir, "tokenizer.json");
        if (File.Exists(tokJson)) return HfTokenizer.Load(dir);
        string tokConfig = Path.Combine(dir, "tokenizer_config.json");
        if (File.Exists(tokConfig) && JsonNode.Parse(File.ReadAllText(tokConfig))?["tokenizer_class"]?.GetValue<string>() == ByteTokenizerClass)
        {
            if (config.VocabSize != MambaByte.Vocab) throw new InvalidDataException($"{tokConfig}: a byte tokenizer needs vocab_size 256, the model has {config.VocabSize}");
            return ByteTokenizer.Instance;
        }
        return null;
    }

    /// <summary>Saves a byte-level model as an HF folder that also names its tokenizer (bytes).</summary>
    public static void SaveByteModel(string dir, MambaLM model, int contextLength)
    {
        HfMamba.Save(dir, model);
        AtomicFile.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            new JsonObject { ["tokenizer_class"] = ByteTokenizerClass, ["model_max_length"] = contextLength }.ToJsonString() + "\n");
    }

    public void Dispose() => Model.Dispose();
}
