// Hugging Face Mamba checkpoints against transformers itself: tiny random models saved by transformers 5.17 with
// their logits and greedy continuations (tests/fixtures/make_hf_fixtures.py), loaded here by HfMamba.
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using static TorchSharp.torch;

namespace Ssm.Language.Tests;

public class HfLoaderTests
{
    public static TheoryData<string> Fixtures => new()
    {
        "mamba1_tied", "mamba1_untied_bias", "mamba1_tied_noconvbias", "mamba2_g1", "mamba2_g2_tied_bias", "mamba2_g4",
    };

    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", "hf", name);

    /// <summary>reference.safetensors of a fixture (see make_hf_fixtures.py for what each tensor is).</summary>
    sealed class Reference : IDisposable
    {
        readonly Dictionary<string, Tensor> _t;
        Reference(Dictionary<string, Tensor> t) { _t = t; }
        public static Reference Of(string name) => new(SafeTensors.Load(Path.Combine(Fixture(name), "reference.safetensors")));
        public Tensor Ids => _t["ids"];                   // (1, T) prompt + greedy continuation
        public int PromptLen => (int)_t["prompt_len"][0].item<long>();
        public Tensor Logits => _t["logits"];             // (1, T, V) full forward
        public Tensor GenerateIds => _t["generate_ids"];  // (1, T) model.generate
        public Tensor ManualIds => _t["manual_ids"];      // (1, T) greedy loop over the recurrent cache
        public Tensor CacheLogits => _t["cache_logits"];  // (1, T, V) that loop's logits
        public void Dispose() { foreach (var t in _t.Values) t.Dispose(); }
    }

    /// <summary>Bit-for-bit equal values and shapes.</summary>
    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static long[] Row(Tensor ids) => ids.reshape(-1).data<long>().ToArray();

    /// <summary>Logits of a prefill over ids[:, :split] and then one Step per remaining token, (1, T, V).</summary>
    static Tensor PrefillThenStep(MambaLM model, Tensor ids, int split)
    {
        using var state = model.AllocateState(1);
        var rows = new List<Tensor> { model.Forward(ids[.., ..split], state) };
        for (long t = split; t < ids.shape[1]; t++) rows.Add(model.Step(ids[.., t], state).unsqueeze(1));
        return torch.cat(rows.ToArray(), 1);
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void FullForwardMatchesTransformers(string name)
    {
        using var r = Reference.Of(name);
        using var model = HfMamba.Load(Fixture(name));
        using var _ = torch.no_grad();
        TestUtil.Close(model.forward(r.Ids), r.Logits, 1e-4, $"{name} forward");
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void PrefillThenStepMatchesTransformersCache(string name)
    {
        using var r = Reference.Of(name);
        using var model = HfMamba.Load(Fixture(name));
        using var _ = torch.no_grad();
        // transformers' own recurrent path: its prefill over the prompt, then one cached step per token.
        TestUtil.Close(PrefillThenStep(model, r.Ids, r.PromptLen), r.CacheLogits, 1e-4, $"{name} prefill + step");
        // Splitting anywhere else gives the same logits (a prefill of one token; of all but one).
        var full = model.forward(r.Ids);
        var stepRef = HasDtLimit(name) ? PrefillThenStep(model, r.Ids, r.PromptLen) : full;
        if (!HasDtLimit(name))
        {
            TestUtil.Close(PrefillThenStep(model, r.Ids, 1), full, 1e-4, $"{name} prefill 1 + steps");
            TestUtil.Close(PrefillThenStep(model, r.Ids, (int)r.Ids.shape[1] - 1), full, 1e-4, $"{name} prefill T-1 + step");
        }
        else
        {
            // With a finite time_step_limit the references clamp dt in the forward but not in the step: the
            // recurrent logits differ from the forward's (as transformers' own do) and agree with transformers'.
            Assert.True(TestUtil.RelErr(r.CacheLogits, r.Logits) > 1e-3, "fixture lost the time_step_limit");
            Assert.True(TestUtil.RelErr(stepRef, full) > 1e-3, "Step clamps dt like the forward; transformers' step does not");
        }
    }

    static bool HasDtLimit(string name) => name == "mamba2_g2_tied_bias";

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void GreedyContinuationMatchesGenerate(string name)
    {
        using var r = Reference.Of(name);
        using var model = HfMamba.Load(Fixture(name));
        using var _ = torch.no_grad();
        int L = r.PromptLen, T = (int)r.Ids.shape[1];
        using var state = model.AllocateState(1);
        var logits = model.Forward(r.Ids[.., ..L], state)[.., -1];       // (1, V)
        var generated = new List<long>();
        for (int i = L; i < T; i++)
        {
            long next = logits.argmax(-1).item<long>();
            generated.Add(next);
            logits = model.Step(torch.tensor(new[] { next }), state);
        }
        Assert.Equal(Row(r.GenerateIds)[L..], generated.ToArray());
        Assert.Equal(Row(r.ManualIds)[L..], generated.ToArray());
        Assert.Equal(Row(r.GenerateIds)[..L], Row(r.Ids)[..L]);
    }

    // transformers 5 validates config fields by type: a float field written as `1` (an int) is rejected at load, which is
    // how peer.py's first run on the GPU machine failed. Every key that transformers itself wrote as a float must come
    // out of ConfigJson as a float literal with the same value.
    [Theory]
    [MemberData(nameof(Fixtures))]
    public void ConfigJsonWritesFloatsAsTransformersDoes(string name)
    {
        var info = Ssm.Language.HfMamba.ReadConfig(Fixture(name));
        using var theirs = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(Fixture(name), "config.json")));
        using var ours = System.Text.Json.JsonDocument.Parse(Ssm.Language.HfMamba.ConfigJson(info.Config).Replace("Infinity", "1e999"),
            new System.Text.Json.JsonDocumentOptions { AllowTrailingCommas = false });
        int floats = 0;
        foreach (var p in theirs.RootElement.EnumerateObject())
        {
            if (p.Value.ValueKind != System.Text.Json.JsonValueKind.Number) continue;
            string raw = p.Value.GetRawText();
            if (!raw.Contains('.') && !raw.Contains('e') && !raw.Contains('E')) continue;
            Assert.True(ours.RootElement.TryGetProperty(p.Name, out var mine), $"{p.Name} missing");
            string mineRaw = mine.GetRawText();
            Assert.True(mineRaw.Contains('.') || mineRaw.Contains('e') || mineRaw.Contains('E'), $"{p.Name}: {mineRaw} is not a float literal (theirs {raw})");
            Assert.Equal(p.Value.GetDouble(), mine.GetDouble(), 12);
            floats++;
        }
        Assert.True(floats >= 5, $"only {floats} float keys in the fixture");
    }

    [Fact]
    public void ConfigMapsEveryKeyThatChangesTheMath()
    {
        var c1 = HfMamba.ReadConfig(Fixture("mamba1_untied_bias")).Config;
        Assert.Equal(MixerKind.Mamba1, c1.Mixer);
        Assert.False(c1.TieEmbeddings);
        Assert.False(c1.ResidualInFp32);
        Assert.Equal(1e-3, c1.NormEps);
        Assert.Equal(100, c1.PaddedVocab);
        var m1 = c1.MambaOrDefault;
        Assert.Equal((5L, 3L, 8L, true, true), (m1.Rank, m1.DConv, m1.DState, m1.Bias, m1.ConvBias));

        var c2 = HfMamba.ReadConfig(Fixture("mamba2_g2_tied_bias")).Config;
        var m2 = c2.Mamba2OrDefault;
        Assert.Equal(MixerKind.Mamba2, c2.Mixer);
        Assert.True(c2.TieEmbeddings);
        Assert.Equal((2L, 8L, 8L, 5, 3L), (m2.NGroups, m2.NHeads, m2.HeadDim, m2.ChunkSize, m2.DConv));
        Assert.Equal((0.005, 0.08), (m2.DtLimitMin, m2.DtLimitMax));
        Assert.Equal((1e-4, 1e-4), (m2.NormEps, c2.NormEps));
        Assert.False(m2.NormPerGroup);             // transformers normalises over all of d_inner
        Assert.False(m2.DtLimitInStep);            // and does not clamp dt in its one-token step
        Assert.Equal((true, false), (m2.Bias, m2.ConvBias));

        var c3 = HfMamba.ReadConfig(Fixture("mamba2_g1")).Config.Mamba2OrDefault;   // {"__float__": "Infinity"}
        Assert.True(double.IsPositiveInfinity(c3.DtLimitMax));
    }

    // ---------------------------------------------------------------------------------------------------------
    // The state-spaces (mamba_ssm) naming
    // ---------------------------------------------------------------------------------------------------------

    /// <summary>The fixture's weights under mamba_ssm's names (backbone.embedding.weight) with a mamba_ssm config.</summary>
    static string AsStateSpaces(string name, JsonObject config)
    {
        string dir = CopyFixture(name, weights: false);
        var tensors = LoadAllWeights(Fixture(name));
        tensors["backbone.embedding.weight"] = tensors["backbone.embeddings.weight"];
        tensors.Remove("backbone.embeddings.weight");
        SafeTensors.Save(Path.Combine(dir, HfMamba.WeightsFile), tensors);
        File.WriteAllText(Path.Combine(dir, HfMamba.ConfigFile), config.ToJsonString());
        return dir;
    }

    [Fact]
    public void StateSpacesMambaNamingLoadsWithVocabPadding()
    {
        var hf = ReadJson(Fixture("mamba1_tied"));
        var config = new JsonObject
        {
            ["d_model"] = hf["hidden_size"]!.GetValue<long>(), ["n_layer"] = hf["num_hidden_layers"]!.GetValue<long>(),
            ["vocab_size"] = 97, ["pad_vocab_size_multiple"] = 4,           // padded to the checkpoint's 100 rows
            ["ssm_cfg"] = new JsonObject
            {
                ["d_state"] = hf["state_size"]!.GetValue<long>(), ["d_conv"] = hf["conv_kernel"]!.GetValue<long>(),
                ["expand"] = hf["expand"]!.GetValue<long>(), ["dt_rank"] = "auto", ["conv_bias"] = true, ["bias"] = false,
                ["dt_min"] = 0.001, ["dt_init"] = "random",
            },
            ["rms_norm"] = true, ["residual_in_fp32"] = true, ["fused_add_norm"] = true, ["tie_embeddings"] = true,
        };
        string dir = AsStateSpaces("mamba1_tied", config);
        try
        {
            using var r = Reference.Of("mamba1_tied");
            using var model = HfMamba.Load(dir);
            Assert.Equal(97, model.Config.VocabSize);
            Assert.Equal(100, model.Config.PaddedVocab);
            Assert.Equal(HfCheckpointFormat.StateSpaces, HfMamba.ReadConfig(dir).Format);
            using var _ = torch.no_grad();
            TestUtil.Close(model.forward(r.Ids), r.Logits, 1e-4, "state-spaces Mamba");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void StateSpacesMamba2NamingLoads()
    {
        var hf = ReadJson(Fixture("mamba2_g1"));
        var config = new JsonObject
        {
            ["d_model"] = hf["hidden_size"]!.GetValue<long>(), ["d_intermediate"] = 0, ["n_layer"] = hf["num_hidden_layers"]!.GetValue<long>(),
            ["vocab_size"] = 95, ["pad_vocab_size_multiple"] = 10,
            ["ssm_cfg"] = new JsonObject
            {
                ["layer"] = "Mamba2", ["d_state"] = hf["state_size"]!.GetValue<long>(), ["d_conv"] = hf["conv_kernel"]!.GetValue<long>(),
                ["expand"] = hf["expand"]!.GetValue<long>(), ["headdim"] = hf["head_dim"]!.GetValue<long>(),
                ["ngroups"] = hf["n_groups"]!.GetValue<long>(), ["chunk_size"] = 6, ["bias"] = false, ["conv_bias"] = true,
                ["rmsnorm"] = true, ["norm_before_gate"] = false, ["A_init_range"] = new JsonArray(1, 16),
            },
            ["attn_layer_idx"] = new JsonArray(), ["attn_cfg"] = new JsonObject(),
            ["rms_norm"] = true, ["residual_in_fp32"] = true, ["fused_add_norm"] = true, ["tie_embeddings"] = false,
        };
        string dir = AsStateSpaces("mamba2_g1", config);
        try
        {
            using var r = Reference.Of("mamba2_g1");
            using var model = HfMamba.Load(dir);
            Assert.True(model.Config.Mamba2OrDefault.NormPerGroup);      // mamba_ssm semantics (one group here)
            using var _ = torch.no_grad();
            TestUtil.Close(model.forward(r.Ids), r.Logits, 1e-4, "state-spaces Mamba-2");
            TestUtil.Close(PrefillThenStep(model, r.Ids, r.PromptLen), r.CacheLogits, 1e-4, "state-spaces Mamba-2 steps");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void NormBeforeGateMatchesItsClosedForm()
    {
        // mamba_ssm's norm_before_gate=True: y = w * rmsnorm_group(x) * silu(z), here against a float64 loop.
        torch.manual_seed(11);
        var norm = new GatedRMSNorm(8, 4, 1e-5, normBeforeGate: true);
        using (torch.no_grad()) norm.weight.copy_(torch.randn(8));
        norm.to(ScalarType.Float64);
        var x = torch.randn(3, 8, dtype: ScalarType.Float64);
        var z = torch.randn(3, 8, dtype: ScalarType.Float64);
        double[] xa = x.data<double>().ToArray(), za = z.data<double>().ToArray(), w = norm.weight.data<double>().ToArray();
        var expect = new double[24];
        for (int row = 0; row < 3; row++)
            for (int g = 0; g < 2; g++)
            {
                double ms = 0;
                for (int k = 0; k < 4; k++) ms += xa[row * 8 + g * 4 + k] * xa[row * 8 + g * 4 + k] / 4;
                for (int k = 0; k < 4; k++)
                {
                    int i = row * 8 + g * 4 + k;
                    expect[i] = w[g * 4 + k] * xa[i] / Math.Sqrt(ms + 1e-5) * za[i] / (1 + Math.Exp(-za[i]));
                }
            }
        TestUtil.Close(norm.forward(x, z), torch.tensor(expect).reshape(3, 8), 1e-6, "norm before gate");
    }

    // ---------------------------------------------------------------------------------------------------------
    // Folder variants that must still load
    // ---------------------------------------------------------------------------------------------------------

    [Theory]
    [InlineData("mamba1_untied_bias")]
    [InlineData("mamba1_tied")]
    public void MissingUseBiasIsTakenFromTheCheckpoint(string name)
    {
        string dir = CopyFixture(name);
        try
        {
            EditConfig(dir, c => c.Remove("use_bias"));
            using var r = Reference.Of(name);
            using var model = HfMamba.Load(dir);
            using var _ = torch.no_grad();
            TestUtil.Close(model.forward(r.Ids), r.Logits, 1e-4, name);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void PythonInfinityLiteralAndBackboneOnlyNamesLoad()
    {
        string dir = CopyFixture("mamba2_g1", weights: false);
        try
        {
            // Python's json.dumps writes float('inf') as a bare Infinity; a MambaModel checkpoint has no "backbone." prefix.
            string text = File.ReadAllText(Path.Combine(Fixture("mamba2_g1"), HfMamba.ConfigFile));
            var cfg = ReadJson(Fixture("mamba2_g1"));
            cfg["time_step_limit"] = new JsonArray(0.0, "__INF__");
            File.WriteAllText(Path.Combine(dir, HfMamba.ConfigFile), cfg.ToJsonString().Replace("\"__INF__\"", "Infinity"));
            var tensors = LoadAllWeights(Fixture("mamba2_g1"));
            var renamed = tensors.ToDictionary(kv => kv.Key.StartsWith("backbone.") ? kv.Key["backbone.".Length..] : kv.Key, kv => kv.Value);
            SafeTensors.Save(Path.Combine(dir, HfMamba.WeightsFile), renamed);
            using var r = Reference.Of("mamba2_g1");
            using var model = HfMamba.Load(dir);
            using var _ = torch.no_grad();
            TestUtil.Close(model.forward(r.Ids), r.Logits, 1e-4, "bare Infinity, no prefix");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void TiedHeadStoredTwiceLoadsWhenEqualAndFailsWhenNot()
    {
        string dir = CopyFixture("mamba1_tied", weights: false);
        try
        {
            var tensors = LoadAllWeights(Fixture("mamba1_tied"));
            tensors["lm_head.weight"] = tensors["backbone.embeddings.weight"].clone();
            SafeTensors.Save(Path.Combine(dir, HfMamba.WeightsFile), tensors);
            using (var model = HfMamba.Load(dir)) Assert.True(model.Config.TieEmbeddings);
            tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1;
            SafeTensors.Save(Path.Combine(dir, HfMamba.WeightsFile), tensors);
            var e = Assert.Throws<InvalidDataException>(() => HfMamba.Load(dir));
            Assert.Contains("lm_head.weight", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Errors name the key, tensor or file
    // ---------------------------------------------------------------------------------------------------------

    static InvalidDataException LoadFails(string fixture, Action<string> corrupt)
    {
        string dir = CopyFixture(fixture);
        try
        {
            corrupt(dir);
            return Assert.Throws<InvalidDataException>(() => { using var m = HfMamba.Load(dir); });
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("mamba1_tied", "frobnicate", "3", "frobnicate")]                 // unknown key
    [InlineData("mamba2_g1", "rope_theta", "10000", "rope_theta")]               // a key of another model
    [InlineData("mamba1_tied", "hidden_act", "\"gelu\"", "hidden_act")]          // a value not supported
    [InlineData("mamba1_tied", "hidden_size", "\"big\"", "hidden_size")]         // a value of the wrong type
    [InlineData("mamba1_tied", "intermediate_size", "100", "intermediate_size")] // inconsistent with expand
    [InlineData("mamba2_g1", "num_heads", "3", "num_heads")]                     // inconsistent with head_dim
    [InlineData("mamba2_g1", "time_step_limit", "[0.1, 0.01]", "time_step_limit")]
    [InlineData("mamba1_tied", "model_type", "\"llama\"", "llama")]
    [InlineData("mamba1_tied", "rms_norm", "false", "rms_norm")]
    [InlineData("mamba1_tied", "ssm_cfg", "{\"d_state\": 4}", "ssm_cfg")]
    public void CorruptConfigKeyIsAnErrorNamingIt(string fixture, string key, string value, string named)
    {
        var e = LoadFails(fixture, dir => EditConfig(dir, c => c[key] = JsonNode.Parse(value)));
        Assert.Contains(named, e.Message);
        Assert.Contains("config.json", e.Message);
    }

    [Fact]
    public void ShapeChangingConfigValueIsCaughtByTheTensorShape()
    {
        var e = LoadFails("mamba1_untied_bias", dir => EditConfig(dir, c => c["state_size"] = 9));
        Assert.Contains("backbone.layers.0.mixer.", e.Message);
        Assert.Contains("shape", e.Message);
    }

    [Fact]
    public void MissingTensorIsAnErrorNamingIt()
    {
        var e = LoadFails("mamba1_untied_bias", dir => EditWeights(dir, t => t.Remove("backbone.layers.1.mixer.D")));
        Assert.Contains("missing tensor 'backbone.layers.1.mixer.D'", e.Message);
    }

    [Fact]
    public void WrongShapeIsAnErrorNamingTheTensor()
    {
        var e = LoadFails("mamba2_g1", dir => EditWeights(dir, t => t["backbone.layers.0.mixer.A_log"] = torch.zeros(5)));
        Assert.Contains("'backbone.layers.0.mixer.A_log' has shape [5]", e.Message);
    }

    [Fact]
    public void UnexpectedTensorIsAnErrorNamingIt()
    {
        var e = LoadFails("mamba1_tied", dir => EditWeights(dir, t => t["backbone.layers.0.mixer.extra"] = torch.zeros(2)));
        Assert.Contains("backbone.layers.0.mixer.extra", e.Message);
        var e2 = LoadFails("mamba1_untied_bias", dir => EditConfig(dir, c => c["use_bias"] = false));
        Assert.Contains("in_proj.bias", e2.Message);
    }

    [Fact]
    public void UntiedConfigWithoutHeadIsAnErrorNamingTheHead()
    {
        var e = LoadFails("mamba1_tied", dir => EditConfig(dir, c => c["tie_word_embeddings"] = false));
        Assert.Contains("lm_head.weight", e.Message);
    }

    [Fact]
    public void MissingShardOrPickleOnlyFolderIsAnErrorNamingTheFile()
    {
        var e = LoadFails("mamba2_g4", dir => File.Delete(Path.Combine(dir, "model-00002-of-00003.safetensors")));
        Assert.Contains("model-00002-of-00003.safetensors", e.Message);
        var e2 = LoadFails("mamba1_tied", dir =>
        {
            File.Delete(Path.Combine(dir, HfMamba.WeightsFile));
            File.WriteAllBytes(Path.Combine(dir, "pytorch_model.bin"), new byte[] { 0x80, 0x02 });
        });
        Assert.Contains("pytorch_model.bin", e2.Message);
        var e3 = LoadFails("mamba1_tied", dir => File.Delete(Path.Combine(dir, HfMamba.ConfigFile)));
        Assert.Contains("config.json", e3.Message);
        var e4 = LoadFails("mamba1_tied", dir =>
        {
            string f = Path.Combine(dir, HfMamba.WeightsFile);
            File.WriteAllBytes(f, File.ReadAllBytes(f)[..^100]);                 // truncated
        });
        Assert.Contains(HfMamba.WeightsFile, e4.Message);
    }

    // ---------------------------------------------------------------------------------------------------------
    // Saving
    // ---------------------------------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void SaveWritesTheFolderTransformersWrote(string name)
    {
        string dir = TempDir();
        try
        {
            using var model = HfMamba.Load(Fixture(name));
            HfMamba.Save(dir, model);
            var theirs = ReadJson(Fixture(name));
            var ours = (JsonObject)HfMamba.ParseLenientJson(File.ReadAllText(Path.Combine(dir, HfMamba.ConfigFile)), "saved")!;
            // Every key we write is one transformers wrote, with the same value where it describes the model.
            foreach (var (key, value) in ours)
            {
                Assert.True(theirs.ContainsKey(key), $"transformers writes no '{key}'");
                if (key is "initializer_range" or "dtype") continue;
                Assert.Equal(Canonical(theirs[key]), Canonical(value));
            }
            foreach (var key in new[] { "vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel",
                                        "use_bias", "use_conv_bias", "tie_word_embeddings", "layer_norm_epsilon", "residual_in_fp32" })
                Assert.True(ours.ContainsKey(key), $"'{key}' not written");
            // A tied head is stored once, as save_pretrained does.
            using (var f = SafeTensors.Open(Path.Combine(dir, HfMamba.WeightsFile)))
                Assert.Equal(!model.Config.TieEmbeddings, f.Names.Contains("lm_head.weight"));
            using var again = HfMamba.Load(dir);
            using var r = Reference.Of(name);
            using var _ = torch.no_grad();
            Assert.True(Same(again.forward(r.Ids), model.forward(r.Ids)), "logits changed in the round trip");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void OwnModelsRoundTripAndUnsupportedSettingsAreRefused()
    {
        torch.manual_seed(12);
        var configs = new[]
        {
            new MambaLMConfig(50, 16, 2, Mamba: new MambaConfig(16, DState: 4, DtRank: 3), PadVocabSizeMultiple: 1),
            new MambaLMConfig(256, 16, 1, Mamba: new MambaConfig(16, DState: 4, Bias: true, ConvBias: false), TieEmbeddings: false),
            new MambaLMConfig(40, 16, 2, MixerKind.Mamba2, TieEmbeddings: false, PadVocabSizeMultiple: 8, NormEps: 1e-4,
                Mamba2: new Mamba2Config(16, DState: 8, HeadDim: 8, NGroups: 2, ChunkSize: 3, NormPerGroup: false, NormEps: 1e-4,
                    DtLimitMin: 0.01, DtLimitMax: 0.2)),
        };
        var ids = torch.randint(0, 40, new long[] { 2, 9 });
        foreach (var c in configs)
        {
            string dir = TempDir();
            try
            {
                using var model = new MambaLM(c);
                HfMamba.Save(dir, model);
                using var back = HfMamba.Load(dir);
                Assert.Equal(c.PaddedVocab, back.Config.PaddedVocab);
                foreach (var (k, v) in model.state_dict()) Assert.True(Same(v, back.state_dict()[k]), k);
                using var _ = torch.no_grad();
                Assert.True(Same(model.forward(ids), back.forward(ids)));
            }
            finally { Directory.Delete(dir, true); }
        }
        var perGroup = new MambaLMConfig(40, 16, 1, MixerKind.Mamba2, Mamba2: new Mamba2Config(16, DState: 8, HeadDim: 8, NGroups: 2));
        using var m = new MambaLM(perGroup);
        string refused = TempDir();
        try
        {
            var e = Assert.Throws<ArgumentException>(() => HfMamba.Save(refused, m));
            Assert.Contains("per group", e.Message);
            Assert.Empty(Directory.GetFiles(refused));
        }
        finally { Directory.Delete(refused, true); }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------------------------

    static string TempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "hf-test-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    static string CopyFixture(string name, bool weights = true)
    {
        string dir = TempDir();
        foreach (var f in Directory.GetFiles(Fixture(name)))
        {
            string file = Path.GetFileName(f);
            if (file == "reference.safetensors") continue;
            if (!weights && (file.EndsWith(".safetensors") || file.EndsWith(".index.json"))) continue;
            File.Copy(f, Path.Combine(dir, file));
        }
        return dir;
    }

    /// <summary>Every tensor of a folder (single file or shards), by its name in the files.</summary>
    static Dictionary<string, Tensor> LoadAllWeights(string dir)
    {
        var all = new Dictionary<string, Tensor>();
        foreach (var f in Directory.GetFiles(dir, "*.safetensors").Where(f => !f.EndsWith("reference.safetensors")))
            foreach (var (k, v) in SafeTensors.Load(f)) all[k] = v;
        return all;
    }

    static JsonObject ReadJson(string dir) => (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(dir, HfMamba.ConfigFile)))!;

    static void EditConfig(string dir, Action<JsonObject> edit)
    {
        var c = ReadJson(dir);
        edit(c);
        File.WriteAllText(Path.Combine(dir, HfMamba.ConfigFile), c.ToJsonString());
    }

    /// <summary>Rewrites the weights as one model.safetensors after an edit (shards and index removed).</summary>
    static void EditWeights(string dir, Action<Dictionary<string, Tensor>> edit)
    {
        var t = LoadAllWeights(dir);
        edit(t);
        foreach (var f in Directory.GetFiles(dir).Where(f => f.EndsWith(".safetensors") || f.EndsWith(".index.json"))) File.Delete(f);
        SafeTensors.Save(Path.Combine(dir, HfMamba.WeightsFile), t);
    }

    /// <summary>A JSON value in a comparable form; transformers 5 writes infinity as {"__float__": "Infinity"}.</summary>
    static string Canonical(JsonNode? v) => v switch
    {
        null => "null",
        JsonObject o when o.Count == 1 && o["__float__"] is JsonNode f => Canonical(f),
        JsonArray a => "[" + string.Join(",", a.Select(Canonical)) + "]",
        JsonValue s when s.GetValueKind() == System.Text.Json.JsonValueKind.String => s.GetValue<string>() switch
        {
            "Infinity" => "inf", "-Infinity" => "-inf", var str => str,
        },
        JsonValue n when n.GetValueKind() == System.Text.Json.JsonValueKind.Number => n.GetValue<double>().ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        _ => v.ToJsonString(),
    };
}
