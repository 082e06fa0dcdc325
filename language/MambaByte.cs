// MambaByte (Wang, Gangavarapu, Yan & Rush 2024, "MambaByte: Token-free Selective State Space Model"): a Mamba-1 LM
// over raw UTF-8 bytes. The architecture is the Mamba LM stack unchanged (section 3 of the paper) with a 256-entry
// vocabulary, so it is the backbone's MambaLM with vocab_size 256; what is byte-specific is the data (no tokenizer),
// the metric (bits per byte) and the long sequences a byte model sees (a window of 2 KiB of text is ~500 BPE tokens).
//
// Glossary: b batch, L window length in bytes, V = 256.
using System.Globalization;
using TorchSharp;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Language;

public static class MambaByte
{
    public const int Vocab = 256;

    /// <summary>A byte-level Mamba-1 LM: embeddings tied to the output head, no vocabulary padding (256 is already a multiple of 8).</summary>
    public static MambaLMConfig Config(long dModel, long nLayer, long dState = 16, long expand = 2) =>
        new(Vocab, dModel, nLayer, MixerKind.Mamba1, new MambaConfig(dModel, DState: dState, Expand: expand),
            TieEmbeddings: true, PadVocabSizeMultiple: 1);

    /// <summary>The paper's smaller model (MambaByte-353M: 53 layers of width 1024).</summary>
    public static MambaLMConfig Paper353M => Config(1024, 53);

    /// <summary>The suite's default: small enough to ship (2.25M parameters, 9 MB in float32) and to run on 2 CPU cores.</summary>
    public static MambaLMConfig Small => Config(256, 5);

    /// <summary>Presets by name, for the CLI.</summary>
    public static IReadOnlyDictionary<string, MambaLMConfig> Presets { get; } = new Dictionary<string, MambaLMConfig>(StringComparer.OrdinalIgnoreCase)
    {
        ["small"] = Small, ["tiny"] = Config(64, 2), ["medium"] = Config(512, 12), ["paper-353m"] = Paper353M,
    };

    /// <summary>Byte ids (b, L + 1) -> mean next-byte cross-entropy in nats over the L predicted positions.</summary>
    public static Tensor Loss(MambaLM model, Tensor windows)
    {
        using var scope = torch.NewDisposeScope();
        long L = windows.shape[1] - 1;
        var logits = model.forward(windows[.., ..(int)L]);                       // (b L V)
        var loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), windows[.., 1..].reshape(-1));
        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>Nats to bits.</summary>
    public static double Bits(double nats) => nats / Math.Log(2);

    public static string FormatBits(double nats) => Bits(nats).ToString("0.000", CultureInfo.InvariantCulture) + " bpb";

    /// <summary>Bits per byte of raw bytes (see <see cref="TextScoring.Score"/>): (total bits, predicted bytes).</summary>
    public static (double Bits, long Count) Score(MambaLM model, ReadOnlySpan<byte> data, int window, int batch = 8, ProgressBar? progress = null)
    {
        var ids = new int[data.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = data[i];
        return TextScoring.Score(model, ids, window, batch, progress);
    }
}
