// HfTokenizer against the Python `tokenizers` library and transformers: a tiny byte-level BPE in the GPT-NeoX layout
// (NFC normalizer, ByteLevel pre-tokenizer, added runs of spaces) trained and saved by make_hf_fixtures.py, with the
// ids and decodings Python produced for English, accented, CJK, emoji, decomposed and mixed-whitespace text.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Ssm.Language.Tests;

public class TokenizerTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", "hf", name);

    sealed record Case(string Text, int[] Ids, int[] IdsNoSpecial, string Decoded, string DecodedSkip, int[]? HfIds, string? HfDecoded);

    static (List<Case> Cases, JsonObject Root) Reference(string name)
    {
        var root = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(Fixture(name), "reference.json")))!;
        var cases = root["texts"]!.AsArray().Select(t => new Case(
            t!["text"]!.GetValue<string>(),
            Ints(t["ids"]), Ints(t["ids_no_special"]),
            t["decoded"]!.GetValue<string>(), t["decoded_skip_special"]!.GetValue<string>(),
            t["hf_ids"] is JsonNode h ? Ints(h) : null, t["hf_decoded"]?.GetValue<string>())).ToList();
        return (cases, root);
    }

    static int[] Ints(JsonNode? a) => a!.AsArray().Select(x => x!.GetValue<int>()).ToArray();

    [Fact]
    public void EncodingsEqualThePythonTokenizers()
    {
        var tok = HfTokenizer.Load(Fixture("tokenizer"));
        var (cases, _) = Reference("tokenizer");
        Assert.Contains(cases, c => c.Text.Any(ch => ch > 0x2E80));            // CJK
        Assert.Contains(cases, c => c.Text.Any(char.IsSurrogate));            // emoji, supplementary letters
        foreach (var c in cases)
        {
            Assert.True(c.Ids.SequenceEqual(tok.Encode(c.Text)), $"ids of {Show(c.Text)}: [{string.Join(",", tok.Encode(c.Text))}] vs [{string.Join(",", c.Ids)}]");
            Assert.Equal(c.IdsNoSpecial, tok.Encode(c.Text, addSpecialTokens: false));
            if (c.HfIds is not null) Assert.Equal(c.HfIds, tok.Encode(c.Text).ToArray());   // transformers' tokenizer(text)
        }
    }

    [Fact]
    public void DecodingsEqualThePythonTokenizers()
    {
        var tok = HfTokenizer.Load(Fixture("tokenizer"));
        foreach (var c in Reference("tokenizer").Cases)
        {
            Assert.Equal(c.Decoded, tok.Decode(c.Ids));
            Assert.Equal(c.DecodedSkip, tok.Decode(c.Ids, skipSpecialTokens: true));
            if (c.HfDecoded is not null) Assert.Equal(c.HfDecoded, tok.Decode(c.Ids));
        }
    }

    [Fact]
    public void SpecialTokensFollowTheConfig()
    {
        var tok = HfTokenizer.Load(Fixture("tokenizer"));
        var (cases, root) = Reference("tokenizer");
        Assert.Equal(root["vocab_size"]!.GetValue<int>(), tok.VocabSize);
        Assert.Equal(root["bos_id"]!.GetValue<int>(), tok.BosId);
        Assert.Equal(root["bos_id"]!.GetValue<int>(), tok.EosId);
        Assert.Equal("<|endoftext|>", tok.EosToken);
        Assert.False(tok.AddsBos);                 // GPT-NeoX: add_bos_token is false
        Assert.False(tok.AddsEos);
        // "<|endoftext|>" in the text is the special token, not its characters.
        var special = cases.Single(c => c.Text.StartsWith("<|endoftext|>"));
        Assert.Equal(tok.EosId, tok.Encode(special.Text)[0]);

        // A template post-processor that prepends BOS (what add_bos_token=True makes).
        var bos = HfTokenizer.Load(Fixture("tokenizer_bos"));
        Assert.True(bos.AddsBos);
        foreach (var c in Reference("tokenizer_bos").Cases)
        {
            Assert.Equal(c.Ids, bos.Encode(c.Text).ToArray());
            Assert.Equal(c.IdsNoSpecial, bos.Encode(c.Text, addSpecialTokens: false));
            Assert.Equal(c.Decoded, bos.Decode(c.Ids));
        }
    }

    [Fact]
    public void TransformersAddBosTokenEncodesAsTransformersDoes()
    {
        // transformers 5 turns add_bos_token=True into a TemplateProcessing post-processor in tokenizer.json.
        var tok = HfTokenizer.Load(Fixture("tokenizer_addbos"));
        Assert.True(tok.AddsBos);
        Assert.False(tok.AddsEos);
        foreach (var c in Reference("tokenizer_addbos").Cases)
        {
            Assert.NotNull(c.HfIds);
            Assert.Equal(c.HfIds, tok.Encode(c.Text).ToArray());
            Assert.Equal(c.HfDecoded, tok.Decode(c.HfIds!));
        }
    }

    /// <summary>tokenizers' GPT-2 split pattern as a .NET regex: right wherever the text has no surrogate pairs.</summary>
    static readonly Regex Gpt2Pattern = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        RegexOptions.CultureInvariant);

    [Fact]
    public void PreTokenizerSplitsLikeTheGpt2PatternOverCodePoints()
    {
        string[] pool =
        {
            "a", "Z", "é", "ж", "中", "ก", "ب", "7", "٣", "½", "Ⅻ", ".", "!", "'", "-", "€", "\u0301", "\u200b",
            " ", " ", "  ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u2003", "s", "t", "re", "ve", "ll", "d", "m",
            "😀", "\U0001d4b3", "\U0001d7d9", "\U00020000",
        };
        var rng = new Random(17);
        for (int trial = 0; trial < 2000; trial++)
        {
            var parts = Enumerable.Range(0, rng.Next(0, 16)).Select(_ => pool[rng.Next(pool.Length)]).ToList();
            string text = string.Concat(parts);
            // The oracle runs on a BMP stand-in: each supplementary code point replaced by one BMP character of its class.
            var standIn = new StringBuilder();
            var cpStarts = new List<int>();                  // UTF-16 index of each code point of text
            for (int i = 0; i < text.Length; i += char.IsSurrogatePair(text, i) ? 2 : 1)
            {
                cpStarts.Add(i);
                if (!char.IsSurrogatePair(text, i)) { standIn.Append(text[i]); continue; }
                var cat = CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]));
                standIn.Append(cat switch
                {
                    UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.OtherLetter => 'q',
                    UnicodeCategory.DecimalDigitNumber => '5',
                    _ => '#',
                });
            }
            cpStarts.Add(text.Length);
            var expected = Gpt2Pattern.Matches(standIn.ToString()).Select(m => (cpStarts[m.Index], cpStarts[m.Index + m.Length] - cpStarts[m.Index])).ToList();
            var actual = HfTokenizer.ByteLevelSplitter.Split(text.AsSpan());
            Assert.True(expected.SequenceEqual(actual), $"{Show(text)}: [{string.Join(" ", actual)}] vs [{string.Join(" ", expected)}]");
        }
    }

    [Fact]
    public void OldStyleMergeStringsEncodeTheSame()
    {
        // tokenizers before 0.20 wrote merges as "a b" strings; later as ["a", "b"] pairs.
        string dir = Path.Combine(Path.GetTempPath(), "tok-test-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixture("tokenizer"), HfTokenizer.TokenizerFile)))!.AsObject();
            var merges = root["model"]!["merges"]!.AsArray();
            Assert.All(merges, m => Assert.IsType<JsonArray>(m));
            root["model"]!["merges"] = new JsonArray(merges.Select(m => (JsonNode)$"{m![0]} {m[1]}").ToArray());
            File.WriteAllText(Path.Combine(dir, HfTokenizer.TokenizerFile), root.ToJsonString());
            var old = HfTokenizer.Load(dir);
            foreach (var c in Reference("tokenizer").Cases) Assert.Equal(c.Ids, old.Encode(c.Text).ToArray());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void DecodeOfEncodeIsTheTextForNonAsciiText()
    {
        var tok = HfTokenizer.Load(Fixture("tokenizer"));
        foreach (var c in Reference("tokenizer").Cases)
        {
            string nfc = c.Text.Normalize(NormalizationForm.FormC);
            Assert.Equal(nfc, tok.Decode(tok.Encode(c.Text, addSpecialTokens: false)));
        }
        // Fresh random text from many scripts, with emoji (surrogate pairs), combining marks and whitespace runs.
        string[] pool =
        {
            "é", "ü", "ß", "ø", "ñ", "Ç", "ł", "ő", "Ж", "щ", "Ω", "λ", "ש", "ع", "ह", "ि", "ก", "日", "本", "語", "한", "글", "の", "カ",
            "😀", "👍🏽", "👨\u200d👩\u200d👧", "🎉", "\U0001d4b3", "\U00020000", "½", "٣", "€", "—", "“", "”", "e\u0301", "a\u0308",
            " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "x", "Q", "7", "'s", "'ll", "?!", "...", "<|endoftext|>", "<|padding|>",
        };
        var rng = new Random(13);
        for (int trial = 0; trial < 300; trial++)
        {
            var sb = new StringBuilder();
            int n = rng.Next(0, 24);
            for (int i = 0; i < n; i++) sb.Append(pool[rng.Next(pool.Length)]);
            string text = sb.ToString().Normalize(NormalizationForm.FormC);
            var ids = tok.Encode(text, addSpecialTokens: false);
            Assert.All(ids, id => Assert.InRange(id, 0, tok.VocabSize - 1));
            Assert.Equal(text, tok.Decode(ids));
        }
    }

    [Fact]
    public void DecodeDropsUnknownIdsAndKeepsPartialBytesAsReplacement()
    {
        var tok = HfTokenizer.Load(Fixture("tokenizer"));
        var ids = tok.Encode("😀", addSpecialTokens: false);
        Assert.True(ids.Length > 1, "the fixture vocabulary merged the whole emoji; pick another character");
        Assert.Equal("\uFFFD", tok.Decode(ids.Take(1).ToArray()));          // an incomplete UTF-8 sequence
        Assert.Equal("😀", tok.Decode(ids.Append(tok.VocabSize + 5).ToArray())); // ids beyond the vocabulary (a padded head)
    }

    [Theory]
    [InlineData("model_type", "WordPiece")]
    [InlineData("normalizer", "Lowercase")]
    [InlineData("byte_fallback", "byte_fallback")]
    [InlineData("pre_tokenizer", "Metaspace")]
    [InlineData("post_processor", "RobertaProcessing")]
    public void UnsupportedTokenizerFeatureIsAnErrorNamingIt(string change, string named)
    {
        string dir = Path.Combine(Path.GetTempPath(), "tok-test-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixture("tokenizer"), HfTokenizer.TokenizerFile)))!.AsObject();
            var model = root["model"]!.AsObject();
            switch (change)
            {
                case "model_type": model["type"] = "WordPiece"; break;
                case "normalizer": root["normalizer"] = new JsonObject { ["type"] = "Lowercase" }; break;
                case "byte_fallback": model["byte_fallback"] = true; break;
                case "pre_tokenizer": root["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace" }; break;
                case "post_processor": root["post_processor"] = new JsonObject { ["type"] = "RobertaProcessing" }; break;
            }
            File.WriteAllText(Path.Combine(dir, HfTokenizer.TokenizerFile), root.ToJsonString());
            var e = Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(dir));
            Assert.Contains(named, e.Message);
            Assert.Contains(HfTokenizer.TokenizerFile, e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    static string Show(string s) => JsonSerializer.Serialize(s);
}
