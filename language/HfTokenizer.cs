// A Hugging Face tokenizer.json with a byte-level BPE model (GPT-2 / GPT-NeoX style, as state-spaces/mamba-*-hf and
// most Mamba checkpoints ship), encoded through Microsoft.ML.Tokenizers' BpeTokenizer.
//
// The pipeline reproduces the `tokenizers` library (checked against 0.23 and transformers 5.17):
//   1. added tokens: split the text on added tokens whose "normalized" is false (leftmost-longest match), then
//      normalise the rest (NFC/NFD/NFKC/NFKD), then split on the normalised added tokens;
//   2. each remaining piece: ByteLevel pre-tokenizer (optional prefix space; the GPT-2 split pattern
//      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ over code points), then the BPE
//      merges over the UTF-8 bytes of each word in the GPT-2 byte-to-unicode alphabet (Microsoft.ML.Tokenizers);
//   3. post-processor: TemplateProcessing (e.g. "<bos> $A"), or, without a template, tokenizer_config.json's
//      add_bos_token / add_eos_token (GPT-NeoX: neither);
//   decode: token strings -> bytes (byte-level alphabet; a token with other characters, such as an added "  ",
//      contributes its own UTF-8) -> UTF-8 with U+FFFD for invalid sequences; ids outside the vocabulary are skipped.
// Anything else in tokenizer.json (another model type, BPE dropout, byte fallback, other normalizers or
// pre-tokenizers) is an error naming it.
using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace Ssm.Language;

public sealed class HfTokenizer : ITextTokenizer
{
    public const string TokenizerFile = "tokenizer.json";
    public const string TokenizerConfigFile = "tokenizer_config.json";
    public const string SpecialTokensMapFile = "special_tokens_map.json";

    sealed record AddedToken(int Id, string Content, bool SingleWord, bool LStrip, bool RStrip, bool Normalized, bool Special);

    /// <summary>One item of a TemplateProcessing template: a special token's ids, or the sequence itself (null).</summary>
    sealed record TemplatePiece(int[]? Ids);

    readonly BpeTokenizer _bpe;
    readonly Dictionary<int, string> _idToToken = new();
    readonly Dictionary<string, int> _tokenToId = new(StringComparer.Ordinal);
    readonly List<AddedToken> _added = new();
    readonly Dictionary<int, AddedToken> _addedById = new();
    readonly NormalizationForm[] _normalizers;
    readonly bool _addPrefixSpace;
    readonly List<TemplatePiece>? _template;
    readonly bool _cleanUpSpaces;

    /// <summary>Where it was loaded from (for messages).</summary>
    public string Source { get; }
    public string Name => $"BPE {VocabSize}";
    /// <summary>One more than the largest id (vocabulary and added tokens).</summary>
    public int VocabSize { get; }
    public string? BosToken { get; }
    public int? BosId { get; }
    public string? EosToken { get; }
    public int? EosId { get; }
    /// <summary>Whether Encode adds special tokens before / after the text (a TemplateProcessing post-processor, or
    /// tokenizer_config.json's add_bos_token / add_eos_token without one).</summary>
    public bool AddsBos { get; }
    public bool AddsEos { get; }

    /// <summary>Loads <c>tokenizer.json</c> of a model folder, with its <c>tokenizer_config.json</c> and
    /// <c>special_tokens_map.json</c> when present.</summary>
    /// <exception cref="InvalidDataException">A missing file, invalid JSON, or a tokenizer feature not supported here.</exception>
    public static HfTokenizer Load(string dir)
    {
        string path = Path.Combine(dir, TokenizerFile);
        if (!File.Exists(path)) throw new InvalidDataException($"{path}: not found");
        string config = Path.Combine(dir, TokenizerConfigFile), map = Path.Combine(dir, SpecialTokensMapFile);
        return FromFiles(path, File.Exists(config) ? config : null, File.Exists(map) ? map : null);
    }

    public static HfTokenizer FromFiles(string tokenizerJson, string? tokenizerConfig = null, string? specialTokensMap = null)
    {
        using var doc = ParseFile(tokenizerJson);
        using var cfg = tokenizerConfig is null ? null : ParseFile(tokenizerConfig);
        using var map = specialTokensMap is null ? null : ParseFile(specialTokensMap);
        return new HfTokenizer(doc.RootElement, cfg?.RootElement, map?.RootElement, tokenizerJson);
    }

    static JsonDocument ParseFile(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON ({e.Message})", e); }
    }

    HfTokenizer(JsonElement root, JsonElement? config, JsonElement? specialMap, string source)
    {
        Source = source;
        if (root.ValueKind != JsonValueKind.Object) throw Error("not a JSON object");

        // --- model: byte-level BPE ---
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object) throw Error("no 'model' object");
        string type = Str(model, "type") ?? "BPE";
        if (type != "BPE") throw Error($"model type '{type}' is not supported (byte-level BPE only)");
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw Error("model.dropout is set: BPE dropout (random merges) is not supported");
        if (Flag(model, "byte_fallback")) throw Error("model.byte_fallback is not supported (byte-level BPE needs none)");
        if (Flag(model, "ignore_merges")) throw Error("model.ignore_merges is not supported");
        if (Str(model, "continuing_subword_prefix") is { Length: > 0 } || Str(model, "end_of_word_suffix") is { Length: > 0 })
            throw Error("continuing_subword_prefix / end_of_word_suffix are not supported with byte-level BPE");
        if (!model.TryGetProperty("vocab", out var vocabJson) || vocabJson.ValueKind != JsonValueKind.Object) throw Error("model.vocab is not an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabJson.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0) throw Error($"vocab entry '{p.Name}' is not an id");
            vocab[p.Name] = id;
            _idToToken[id] = p.Name;
            _tokenToId[p.Name] = id;
        }
        var merges = new List<string>();
        if (model.TryGetProperty("merges", out var mergesJson) && mergesJson.ValueKind == JsonValueKind.Array)
            foreach (var m in mergesJson.EnumerateArray())
            {
                // tokenizers < 0.20 writes "a b"; later versions ["a", "b"].
                string pair = m.ValueKind switch
                {
                    JsonValueKind.String => m.GetString()!,
                    JsonValueKind.Array when m.GetArrayLength() == 2 => $"{m[0].GetString()} {m[1].GetString()}",
                    _ => throw Error($"merge {m.GetRawText()} is neither \"a b\" nor [\"a\", \"b\"]"),
                };
                if (pair.Count(c => c == ' ') != 1) throw Error($"merge '{pair}' does not split into two byte-level tokens");
                merges.Add(pair);
            }

        // --- added tokens ---
        if (root.TryGetProperty("added_tokens", out var addedJson) && addedJson.ValueKind == JsonValueKind.Array)
            foreach (var a in addedJson.EnumerateArray())
            {
                string content = Str(a, "content") ?? throw Error("an added token has no content");
                if (!a.TryGetProperty("id", out var idJson) || !idJson.TryGetInt32(out int id)) throw Error($"added token '{content}' has no id");
                if (content.Length == 0) throw Error($"added token {id} is empty");
                bool special = Flag(a, "special");
                var t = new AddedToken(id, content, Flag(a, "single_word"), Flag(a, "lstrip"), Flag(a, "rstrip"),
                    a.TryGetProperty("normalized", out var norm) ? norm.ValueKind == JsonValueKind.True : !special, special);
                _added.Add(t);
                _addedById[id] = t;
                _idToToken[id] = content;
                _tokenToId[content] = id;
            }
        // Longest first, so that at a position the longest added token wins (tokenizers' leftmost-longest match).
        _added.Sort((x, y) => y.Content.Length.CompareTo(x.Content.Length));

        // --- normalizer, pre-tokenizer, post-processor, decoder ---
        _normalizers = ReadNormalizer(root.TryGetProperty("normalizer", out var n) ? n : default);
        (_addPrefixSpace, bool useRegex) = ReadPreTokenizer(root.TryGetProperty("pre_tokenizer", out var pt) ? pt : default);
        ReadDecoder(root.TryGetProperty("decoder", out var dec) ? dec : default);
        _template = ReadPostProcessor(root.TryGetProperty("post_processor", out var pp) ? pp : default);

        _bpe = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = useRegex ? ByteLevelSplitter.Instance : WholeText.Instance,
            UnknownToken = Str(model, "unk_token"),
            FuseUnknownTokens = Flag(model, "fuse_unk"),
        });
        VocabSize = _idToToken.Count == 0 ? 0 : _idToToken.Keys.Max() + 1;

        // --- special tokens and BOS/EOS behaviour (tokenizer_config.json, special_tokens_map.json) ---
        BosToken = SpecialToken(config, "bos_token") ?? SpecialToken(specialMap, "bos_token");
        EosToken = SpecialToken(config, "eos_token") ?? SpecialToken(specialMap, "eos_token");
        BosId = BosToken is not null && _tokenToId.TryGetValue(BosToken, out int bos) ? bos : null;
        EosId = EosToken is not null && _tokenToId.TryGetValue(EosToken, out int eos) ? eos : null;
        if (_template is not null)
        {
            // The template decides: special tokens before / after the sequence.
            AddsBos = _template.Count > 0 && _template[0].Ids is { Length: > 0 };
            AddsEos = _template.Count > 1 && _template[^1].Ids is { Length: > 0 };
        }
        else
        {
            AddsBos = config is JsonElement c1 && Flag(c1, "add_bos_token");
            AddsEos = config is JsonElement c2 && Flag(c2, "add_eos_token");
            if (AddsBos && BosId is null) throw Error("tokenizer_config.json sets add_bos_token but names no bos_token in the vocabulary");
            if (AddsEos && EosId is null) throw Error("tokenizer_config.json sets add_eos_token but names no eos_token in the vocabulary");
        }
        _cleanUpSpaces = config is JsonElement c3 && Flag(c3, "clean_up_tokenization_spaces");
    }

    InvalidDataException Error(string what) => new($"{Source}: {what}");

    static string? Str(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    static bool Flag(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.True;

    /// <summary>"bos_token": "&lt;s&gt;" or {"content": "&lt;s&gt;", ...} (AddedToken serialised).</summary>
    static string? SpecialToken(JsonElement? file, string key)
    {
        if (file is not JsonElement e || e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(key, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object => Str(v, "content"),
            _ => null,
        };
    }

    NormalizationForm[] ReadNormalizer(JsonElement n)
    {
        if (n.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return Array.Empty<NormalizationForm>();
        string type = Str(n, "type") ?? throw Error("normalizer has no type");
        return type switch
        {
            "NFC" => new[] { NormalizationForm.FormC },
            "NFD" => new[] { NormalizationForm.FormD },
            "NFKC" => new[] { NormalizationForm.FormKC },
            "NFKD" => new[] { NormalizationForm.FormKD },
            "Sequence" when n.TryGetProperty("normalizers", out var list) && list.ValueKind == JsonValueKind.Array =>
                list.EnumerateArray().SelectMany(ReadNormalizer).ToArray(),
            _ => throw Error($"normalizer '{type}' is not supported (NFC, NFD, NFKC, NFKD or a Sequence of them)"),
        };
    }

    (bool PrefixSpace, bool UseRegex) ReadPreTokenizer(JsonElement p)
    {
        if (p.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) throw Error("no pre_tokenizer: a byte-level BPE needs the ByteLevel pre-tokenizer");
        string type = Str(p, "type") ?? throw Error("pre_tokenizer has no type");
        if (type == "Sequence" && p.TryGetProperty("pretokenizers", out var list) && list.ValueKind == JsonValueKind.Array && list.GetArrayLength() == 1)
            return ReadPreTokenizer(list[0]);
        if (type != "ByteLevel") throw Error($"pre_tokenizer '{type}' is not supported (ByteLevel only)");
        bool useRegex = !p.TryGetProperty("use_regex", out var r) || r.ValueKind != JsonValueKind.False;
        return (Flag(p, "add_prefix_space"), useRegex);
    }

    void ReadDecoder(JsonElement d)
    {
        if (d.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return;
        string type = Str(d, "type") ?? throw Error("decoder has no type");
        if (type == "Sequence" && d.TryGetProperty("decoders", out var list) && list.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in list.EnumerateArray()) ReadDecoder(item);
            return;
        }
        if (type != "ByteLevel") throw Error($"decoder '{type}' is not supported (ByteLevel only)");
    }

    /// <summary>Null: nothing is added (no post-processor, or ByteLevel, which only trims offsets).</summary>
    List<TemplatePiece>? ReadPostProcessor(JsonElement p)
    {
        if (p.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return null;
        string type = Str(p, "type") ?? throw Error("post_processor has no type");
        switch (type)
        {
            case "ByteLevel": return null;
            case "Sequence":
                List<TemplatePiece>? found = null;
                if (p.TryGetProperty("processors", out var list) && list.ValueKind == JsonValueKind.Array)
                    foreach (var item in list.EnumerateArray())
                        if (ReadPostProcessor(item) is { } t)
                            found = found is null ? t : throw Error("post_processor has two templates");
                return found;
            case "TemplateProcessing":
                var pieces = new List<TemplatePiece>();
                if (!p.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array) throw Error("TemplateProcessing has no 'single' template");
                foreach (var piece in single.EnumerateArray())
                {
                    if (piece.TryGetProperty("Sequence", out _)) { pieces.Add(new TemplatePiece(null)); continue; }
                    if (!piece.TryGetProperty("SpecialToken", out var st)) throw Error($"template piece {piece.GetRawText()} is not understood");
                    string tokenName = Str(st, "id") ?? throw Error("template SpecialToken has no id");
                    if (!p.TryGetProperty("special_tokens", out var specials) || !specials.TryGetProperty(tokenName, out var spec)
                        || !spec.TryGetProperty("ids", out var ids) || ids.ValueKind != JsonValueKind.Array)
                        throw Error($"template special token '{tokenName}' has no ids");
                    pieces.Add(new TemplatePiece(ids.EnumerateArray().Select(i => i.GetInt32()).ToArray()));
                }
                return pieces;
            default:
                throw Error($"post_processor '{type}' is not supported (ByteLevel, TemplateProcessing or a Sequence of them)");
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // Encoding
    // ------------------------------------------------------------------------------------------------------------

    public IReadOnlyList<int> Encode(string text) => Encode(text, addSpecialTokens: true);

    /// <summary>Token ids of <paramref name="text"/>; with <paramref name="addSpecialTokens"/> the post-processor's
    /// BOS/EOS are added (as transformers' <c>tokenizer(text)</c>; false as <c>add_special_tokens=False</c>).</summary>
    public int[] Encode(string text, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        foreach (var (piece, raw) in SplitAdded(text, normalizedPass: false))
        {
            if (raw is not null) { ids.Add(raw.Id); continue; }
            string normal = Normalize(piece);
            foreach (var (sub, tok) in SplitAdded(normal, normalizedPass: true))
            {
                if (tok is not null) { ids.Add(tok.Id); continue; }
                if (sub.Length == 0) continue;
                string word = _addPrefixSpace && sub[0] != ' ' ? " " + sub : sub;
                ids.AddRange(_bpe.EncodeToIds(word, considerPreTokenization: true, considerNormalization: false));
            }
        }
        if (!addSpecialTokens) return ids.ToArray();
        if (_template is not null)
        {
            var outIds = new List<int>(ids.Count + 2);
            foreach (var p in _template)
                if (p.Ids is null) outIds.AddRange(ids); else outIds.AddRange(p.Ids);
            return outIds.ToArray();
        }
        if (AddsBos) ids.Insert(0, BosId!.Value);
        if (AddsEos) ids.Add(EosId!.Value);
        return ids.ToArray();
    }

    /// <summary>Splits on added tokens (the raw ones first, the normalised ones on normalised text), leftmost-longest,
    /// honouring lstrip / rstrip / single_word. Yields (text, null) for plain pieces and ("", token) for matches.</summary>
    IEnumerable<(string Text, AddedToken? Token)> SplitAdded(string text, bool normalizedPass)
    {
        int start = 0, i = 0;
        while (i < text.Length)
        {
            AddedToken? hit = null;
            foreach (var t in _added)
            {
                if (t.Normalized != normalizedPass) continue;
                if (i + t.Content.Length > text.Length || string.CompareOrdinal(text, i, t.Content, 0, t.Content.Length) != 0) continue;
                if (t.SingleWord && (IsWordChar(text, i - 1) || IsWordChar(text, i + t.Content.Length))) continue;
                hit = t;
                break;   // longest first
            }
            if (hit is null) { i++; continue; }
            int left = i, right = i + hit.Content.Length;
            if (hit.LStrip) while (left > start && char.IsWhiteSpace(text[left - 1])) left--;
            if (hit.RStrip) while (right < text.Length && char.IsWhiteSpace(text[right])) right++;
            if (left > start) yield return (text[start..left], null);
            yield return ("", hit);
            start = i = right;
        }
        if (start < text.Length) yield return (text[start..], null);

        static bool IsWordChar(string s, int at) =>
            at >= 0 && at < s.Length && (char.IsLetterOrDigit(s[at]) || s[at] == '_' || char.IsSurrogate(s[at]));
    }

    // ------------------------------------------------------------------------------------------------------------
    // Normalisation
    // ------------------------------------------------------------------------------------------------------------

    static readonly bool RuntimeNormalizes = "e\u0301".Normalize(NormalizationForm.FormC) == "\u00e9";

    string Normalize(string s)
    {
        foreach (var form in _normalizers)
        {
            if (!RuntimeNormalizes)
            {
                // With InvariantGlobalization .NET cannot normalise (string.Normalize returns its input). Text that
                // normalisation would leave alone is safe; anything else would be tokenised differently: refuse.
                if (MayChange(s, form))
                    throw new InvalidOperationException($"{Source}: this text needs Unicode normalization ({form}), which this process cannot do " +
                        "because it runs with InvariantGlobalization; set <InvariantGlobalization>false</InvariantGlobalization> (ICU) in the app");
                continue;
            }
            s = s.Normalize(form);
        }
        return s;
    }

    /// <summary>Whether normalisation could change s: any non-ASCII character for NFD / NFKC / NFKD; for NFC only
    /// combining marks, conjoining Hangul jamo and the characters NFC replaces even on their own (singletons and
    /// composition exclusions).</summary>
    static bool MayChange(string s, NormalizationForm form)
    {
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c < 0x80) continue;
            if (form != NormalizationForm.FormC) return true;
            int cp = char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? char.ConvertToUtf32(c, s[++i]) : c;
            var cat = CharUnicodeInfo.GetUnicodeCategory(cp);
            if (cat is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark) return true;
            if (cp is (>= 0x1100 and <= 0x11FF) or (>= 0x0340 and <= 0x0344) or 0x0374 or 0x037E or 0x0387
                or (>= 0x0958 and <= 0x095F) or (>= 0x09DC and <= 0x09DF) or 0x0A33 or 0x0A36 or (>= 0x0A59 and <= 0x0A5E)
                or (>= 0x0B5C and <= 0x0B5D) or (>= 0x0F43 and <= 0x0FB9) or (>= 0x1F71 and <= 0x1FFD) or 0x2000 or 0x2001
                or 0x2126 or 0x212A or 0x212B or 0x2329 or 0x232A or 0x2ADC or (>= 0xF900 and <= 0xFAFF)
                or (>= 0xFB1D and <= 0xFB4E) or (>= 0x1D15E and <= 0x1D1C0) or (>= 0x2F800 and <= 0x2FA1F))
                return true;
        }
        return false;
    }

    // ------------------------------------------------------------------------------------------------------------
    // Decoding
    // ------------------------------------------------------------------------------------------------------------

    public string Decode(IReadOnlyList<int> ids) => Decode(ids, skipSpecialTokens: false);

    /// <summary>Text of <paramref name="ids"/> (transformers' <c>decode</c>; special tokens kept unless skipped).</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens)
    {
        var bytes = new ArrayBufferWriter<byte>();
        foreach (int id in ids)
        {
            if (!_idToToken.TryGetValue(id, out var token)) continue;          // as tokenizers: unknown ids are dropped
            if (skipSpecialTokens && _addedById.TryGetValue(id, out var a) && a.Special) continue;
            AppendTokenBytes(token, bytes);
        }
        string text = Encoding.UTF8.GetString(bytes.WrittenSpan);
        return _cleanUpSpaces ? CleanUp(text) : text;
    }

    /// <summary>The token string (byte-level alphabet for vocabulary tokens), or null for an unknown id.</summary>
    public string? IdToToken(int id) => _idToToken.TryGetValue(id, out var t) ? t : null;

    public int? TokenToId(string token) => _tokenToId.TryGetValue(token, out int id) ? id : null;

    /// <summary>tokenizers' ByteLevel decoder: a token made only of byte-alphabet characters stands for those bytes;
    /// any other token (an added token with real spaces, say) for its own UTF-8.</summary>
    static void AppendTokenBytes(string token, ArrayBufferWriter<byte> output)
    {
        var span = output.GetSpan(token.Length * 3);
        int n = 0;
        foreach (char c in token)
        {
            if (c >= UnicodeToByte.Length || UnicodeToByte[c] < 0)
            {
                output.Write(Encoding.UTF8.GetBytes(token));
                return;
            }
            span[n++] = (byte)UnicodeToByte[c];
        }
        output.Advance(n);
    }

    /// <summary>GPT-2's bytes_to_unicode inverse: printable bytes map to themselves, the others to U+0100 upwards.</summary>
    static readonly short[] UnicodeToByte = BuildUnicodeToByte();

    static short[] BuildUnicodeToByte()
    {
        var map = new short[0x200];
        Array.Fill(map, (short)-1);
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[printable ? b : 256 + next++] = (short)b;
        }
        return map;
    }

    /// <summary>transformers' clean_up_tokenization (only when tokenizer_config.json asks for it).</summary>
    static string CleanUp(string s) => s.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
        .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");

    // ------------------------------------------------------------------------------------------------------------
    // Pre-tokenizers handed to Microsoft.ML.Tokenizers
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>No split: the whole piece is one word (ByteLevel with use_regex false).</summary>
    sealed class WholeText : PreTokenizer
    {
        public static readonly WholeText Instance = new();
        public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) =>
            string.IsNullOrEmpty(text) ? Array.Empty<(int, int)>() : new[] { (0, text.Length) };
        public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) =>
            text.IsEmpty ? Array.Empty<(int, int)>() : new[] { (0, text.Length) };
    }

    /// <summary>
    /// The GPT-2 split pattern of tokenizers' ByteLevel pre-tokenizer, evaluated over code points (a .NET regex sees
    /// a supplementary-plane letter such as U+1D4B3 as two surrogates, neither of which is \p{L}):
    ///   's|'t|'re|'ve|'m|'ll|'d | ' '?letters | ' '?numbers | ' '?others | whitespace not before a non-space | whitespace.
    /// </summary>
    internal sealed class ByteLevelSplitter : PreTokenizer
    {
        public static readonly ByteLevelSplitter Instance = new();

        public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) => Split(text.AsSpan());
        public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => Split(text);

        enum Kind { Letter, Number, Space, Other }

        static (Kind Kind, int Width) At(ReadOnlySpan<char> s, int i)
        {
            char c = s[i];
            int cp = c, width = 1;
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { cp = char.ConvertToUtf32(c, s[i + 1]); width = 2; }
            if (IsSpace(cp)) return (Kind.Space, width);
            return CharUnicodeInfo.GetUnicodeCategory(cp) switch
            {
                UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                    or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => (Kind.Letter, width),
                UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => (Kind.Number, width),
                _ => (Kind.Other, width),
            };
        }

        /// <summary>Unicode White_Space (the \s of the regex engines tokenizers uses).</summary>
        static bool IsSpace(int cp) => cp is (>= 0x09 and <= 0x0D) or 0x20 or 0x85 or 0xA0 or 0x1680 or (>= 0x2000 and <= 0x200A)
            or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000;

        /// <summary>End of the run of code points of one kind starting at i.</summary>
        static int Run(ReadOnlySpan<char> s, int i, Kind kind)
        {
            while (i < s.Length)
            {
                var (k, w) = At(s, i);
                if (k != kind) break;
                i += w;
            }
            return i;
        }

        internal static List<(int Offset, int Length)> Split(ReadOnlySpan<char> s)
        {
            var words = new List<(int, int)>();
            int i = 0;
            while (i < s.Length)
            {
                int end = Contraction(s, i);
                if (end < 0)
                {
                    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional single space, then a run of one kind.
                    int j = s[i] == ' ' && i + 1 < s.Length ? i + 1 : i;
                    var (kind, _) = At(s, j);
                    if (kind != Kind.Space) end = Run(s, j, kind);
                    else
                    {
                        // '\s+(?!\S)' then '\s+': a whitespace run, less its last character when a non-space follows
                        // (that character then leads the next word, as ' ?' allows).
                        int e = Run(s, i, Kind.Space);
                        end = e < s.Length && e - i >= 2 ? e - 1 : e;
                    }
                }
                words.Add((i, end - i));
                i = end;
            }
            return words;
        }

        /// <summary>End of 's 't 're 've 'm 'll 'd at i (case-sensitive, as the pattern), or -1.</summary>
        static int Contraction(ReadOnlySpan<char> s, int i)
        {
            if (s[i] != '\'' || i + 1 >= s.Length) return -1;
            char a = s[i + 1];
            if (a is 's' or 't' or 'm' or 'd') return i + 2;
            if (i + 2 < s.Length)
            {
                char b = s[i + 2];
                if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
            }
            return -1;
        }
    }
}
