// The tokenizer side of a text model: BPE (tokenizer.json, HfTokenizer) for Hugging Face checkpoints, raw UTF-8 bytes
// for MambaByte. Streaming output goes through the backbone's IncrementalDecoder.
using System.Text;

namespace Ssm.Language;

public interface ITextTokenizer
{
    /// <summary>A short description ("bytes", "BPE 50277").</summary>
    string Name { get; }
    int VocabSize { get; }
    /// <summary>End-of-sequence id, if the tokenizer has one.</summary>
    int? EosId { get; }
    IReadOnlyList<int> Encode(string text);
    string Decode(IReadOnlyList<int> ids);
}

/// <summary>MambaByte's "tokenizer": the UTF-8 bytes themselves (ids 0-255), no specials.</summary>
public sealed class ByteTokenizer : ITextTokenizer
{
    public static ByteTokenizer Instance { get; } = new();
    static readonly UTF8Encoding Strict = new(false, throwOnInvalidBytes: true);

    public string Name => "bytes";
    public int VocabSize => 256;
    /// <summary>0x00: the corpus ends every document with it (ByteCorpus.DocumentEnd), so the model learns it as end of text.</summary>
    public int? EosId => ByteCorpus.DocumentEnd;
    public IReadOnlyList<int> Encode(string text) => Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();

    /// <summary>Invalid UTF-8 (which a byte model can generate) becomes U+FFFD, as Python's errors="replace".</summary>
    public string Decode(IReadOnlyList<int> ids) => Encoding.UTF8.GetString(ids.Select(i => (byte)i).ToArray());

    /// <summary>Text from bytes, refusing invalid UTF-8 (prompts and files must be text).</summary>
    public static bool TryDecodeStrict(byte[] bytes, out string text)
    {
        try { text = Strict.GetString(bytes); return true; }
        catch (DecoderFallbackException) { text = ""; return false; }
    }
}
