// Hugging Face Mamba checkpoints: load a model folder into the backbone's MambaLM, and save a MambaLM as one.
//
// Two namings are read (the issue-7 reference is transformers 5.x, checked against 5.17):
//   transformers   config.json with model_type "mamba" (MambaForCausalLM) or "mamba2" (Mamba2ForCausalLM);
//                  tensors backbone.embeddings.weight, backbone.layers.{i}.{norm,mixer.*}, backbone.norm_f.weight,
//                  lm_head.weight (absent when tied: save_pretrained writes a shared tensor once)
//   state-spaces   mamba_ssm's MambaConfig (d_model, n_layer, vocab_size, ssm_cfg, rms_norm, residual_in_fp32,
//                  fused_add_norm, pad_vocab_size_multiple, tie_embeddings); tensor backbone.embedding.weight
// Weights: model.safetensors, or model.safetensors.index.json naming the shards. PyTorch pickles are refused.
//
// Every config key is accounted for: a key that changes the math is read (and a value this code cannot represent is
// an error naming the key); a key that does not (initialisation ranges, token ids, use_cache, dtype, versions...) is
// listed as known and skipped; any other key is an error, never silently ignored. A missing key takes transformers'
// (or mamba_ssm's) default, as those libraries do, except use_bias of a transformers Mamba-1 config: its default
// changed between versions (True in 4.x, False in 5.x), so it is taken from the checkpoint (in_proj.bias present).
//
// Semantics that differ between the references and how they map onto the backbone:
//   - Mamba-2 gated RMSNorm: transformers normalises over all of d_inner, mamba_ssm per group of d_inner / n_groups
//     (Mamba2Config.NormPerGroup false / true).
//   - Mamba-2 time_step_limit (dt_limit) clamps dt in the full forward; neither reference clamps in its one-token
//     step (Mamba2Config.DtLimitInStep = false), so generation matches theirs token for token.
//   - vocab: transformers' vocab_size is the embedding size; mamba_ssm pads vocab_size to pad_vocab_size_multiple.
using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using static TorchSharp.torch;

namespace Ssm.Language;

/// <summary>Which naming a checkpoint folder uses.</summary>
public enum HfCheckpointFormat { Transformers, StateSpaces }

/// <summary>What config.json says: the LM configuration plus the parts MambaLMConfig does not carry.</summary>
public sealed record HfModelInfo(
    MambaLMConfig Config,
    HfCheckpointFormat Format,
    string ModelType,
    long? BosTokenId,
    long? EosTokenId,
    long? PadTokenId);

public static class HfMamba
{
    public const string ConfigFile = "config.json";
    public const string WeightsFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    // ------------------------------------------------------------------------------------------------------------
    // Loading
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>Loads a Hugging Face (or state-spaces) Mamba / Mamba-2 folder; float32 parameters on <paramref name="device"/>.</summary>
    /// <exception cref="InvalidDataException">A missing or corrupt file, a config key this loader does not know or
    /// cannot represent, a missing, unexpected or mis-shaped tensor; the message names the file, key or tensor.</exception>
    public static MambaLM Load(string dir, Device? device = null) => LoadWithInfo(dir, device).Model;

    /// <summary><see cref="Load"/>, also returning what config.json says beyond the LM configuration (format, token ids).</summary>
    public static (MambaLM Model, HfModelInfo Info) LoadWithInfo(string dir, Device? device = null)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: no such model folder");
        try
        {
            var weights = WeightIndex(dir);                               // canonical name -> (file, name in file)
            var info = ReadConfig(dir, name => weights.ContainsKey(name));
            var model = new MambaLM(info.Config);
            try
            {
                LoadWeights(model, info, weights);
                if (device is not null && device.type != DeviceType.CPU) model.to(device);
                model.eval();
                return (model, info);
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }
        catch (SafeTensorsException e) { throw new InvalidDataException(e.Message, e); }   // one exception type for a bad folder
    }

    /// <summary>Reads and checks config.json of a folder (see the file header for the rules).</summary>
    /// <param name="hasTensor">Whether the checkpoint has a tensor (canonical transformers name); used where a
    /// transformers default changed between versions. Null: answered from the folder's weights.</param>
    public static HfModelInfo ReadConfig(string dir, Func<string, bool>? hasTensor = null)
    {
        string path = Path.Combine(dir, ConfigFile);
        if (!File.Exists(path)) throw new InvalidDataException($"{path}: not found (a model folder needs config.json)");
        if (hasTensor is null)
        {
            // Read the weights' headers only if a key is missing that they decide (use_bias of a Mamba-1 config).
            Dictionary<string, (string, string)>? names = null;
            hasTensor = name => (names ??= WeightIndex(dir)).ContainsKey(name);
        }
        return ParseConfig(File.ReadAllText(path), path, hasTensor);
    }

    /// <summary>Parses config.json text; <paramref name="source"/> names it in errors.</summary>
    public static HfModelInfo ParseConfig(string json, string source, Func<string, bool>? hasTensor = null)
    {
        var root = ParseLenientJson(json, source) as JsonObject
            ?? throw new InvalidDataException($"{source}: not a JSON object");
        var cfg = new ConfigReader(root, source);
        if (root.ContainsKey("model_type") || root.ContainsKey("architectures") || !root.ContainsKey("d_model"))
        {
            string? modelType = cfg.OptionalString("model_type");
            if (modelType is null)
            {
                var archs = cfg.Peek("architectures") as JsonArray;
                string? arch = archs?.Count > 0 ? archs[0]?.ToString() : null;
                modelType = arch switch
                {
                    "MambaForCausalLM" or "MambaModel" => "mamba",
                    "Mamba2ForCausalLM" or "Mamba2Model" => "mamba2",
                    _ => throw new InvalidDataException($"{source}: no 'model_type' (and no 'd_model' of a state-spaces config): not a Mamba model folder"),
                };
            }
            var info = modelType switch
            {
                "mamba" => ParseTransformersMamba(cfg, hasTensor),
                "mamba2" => ParseTransformersMamba2(cfg),
                _ => throw new InvalidDataException($"{source}: model_type '{modelType}' is not supported (this loader reads 'mamba' and 'mamba2')"),
            };
            cfg.CheckArchitectures(modelType == "mamba" ? "MambaForCausalLM" : "Mamba2ForCausalLM",
                modelType == "mamba" ? "MambaModel" : "Mamba2Model");
            cfg.Finish();
            return info;
        }
        var ss = ParseStateSpaces(cfg);
        cfg.Finish();
        return ss;
    }

    // Keys of transformers' PreTrainedConfig (and its generation defaults of 4.x) that never change a forward pass.
    static readonly string[] CommonIgnored =
    {
        "architectures", "model_type", "transformers_version", "_name_or_path", "name_or_path", "dtype", "torch_dtype",
        "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache",
        "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_return_dict",
        "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention", "cross_attention_hidden_size",
        "tie_encoder_decoder", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
        "tokenizer_class", "prefix", "task_specific_params", "pruned_heads", "_attn_implementation_autoset",
        "_commit_hash", "_from_model_config", "initializer_range",
        // generation settings old configs carried (used by generate, not by the model)
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
        "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
        "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
        "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    };

    static HfModelInfo ParseTransformersMamba(ConfigReader c, Func<string, bool>? hasTensor)
    {
        long vocab = c.Int("vocab_size", 50280);
        long d = c.Int("hidden_size", 768);
        long layers = c.Int("num_hidden_layers", 32);
        long n = c.Int("state_size", 16);
        long expand = c.Int("expand", 2);
        long k = c.Int("conv_kernel", 4);
        double eps = c.Double("layer_norm_epsilon", 1e-5);
        // transformers 4.x defaulted use_bias to True, 5.x to False: without the key, the checkpoint decides.
        bool bias = c.Has("use_bias") ? c.Bool("use_bias", false)
            : hasTensor?.Invoke("backbone.layers.0.mixer.in_proj.bias")
              ?? throw new InvalidDataException($"{c.Source}: no 'use_bias' (its transformers default changed between versions) and no weights to tell");
        bool convBias = c.Bool("use_conv_bias", true);
        bool residualFp32 = c.Bool("residual_in_fp32", true);
        bool tie = c.Bool("tie_word_embeddings", true);
        c.RequireSilu("hidden_act");
        long rank = c.Rank("time_step_rank", d);
        c.RequireEqual("intermediate_size", expand * d, "expand * hidden_size");
        // Keys that conversions from mamba_ssm leave in transformers configs; transformers itself ignores them.
        c.RequireEqual("n_layer", layers, "num_hidden_layers");
        c.RequireEqual("d_model", d, "hidden_size");
        c.RequireTrue("rms_norm", "LayerNorm blocks are not supported");
        c.RequireEmptyObject("ssm_cfg");
        c.Ignore("fused_add_norm",           // a kernel fusion of add + norm: same math
            "pad_vocab_size_multiple",       // vocab_size is already the (padded) embedding size in transformers
            "use_mambapy", "use_associative_scan", // alternative scan algorithms, same results
            "time_step_scale", "time_step_min", "time_step_max", "time_step_init_scheme", "time_step_floor",
            "rescale_prenorm_residual");     // initialisation only
        c.Ignore(CommonIgnored);
        var mixer = new MambaConfig(d, DState: n, DConv: k, Expand: expand, DtRank: rank, ConvBias: convBias, Bias: bias);
        var config = new MambaLMConfig(vocab, d, layers, MixerKind.Mamba1, Mamba: mixer, TieEmbeddings: tie, NormEps: eps,
            ResidualInFp32: residualFp32, PadVocabSizeMultiple: 1);
        return new HfModelInfo(config, HfCheckpointFormat.Transformers, "mamba",
            c.TokenId("bos_token_id", 0), c.TokenId("eos_token_id", 0), c.TokenId("pad_token_id", 0));
    }

    static HfModelInfo ParseTransformersMamba2(ConfigReader c)
    {
        long vocab = c.Int("vocab_size", 32768);
        long d = c.Int("hidden_size", 4096);
        long layers = c.Int("num_hidden_layers", 64);
        long n = c.Int("state_size", 128);
        long expand = c.Int("expand", 2);
        long k = c.Int("conv_kernel", 4);
        long heads = c.Int("num_heads", 128);
        long headDim = c.Int("head_dim", 64);
        long groups = c.Int("n_groups", 8);
        long chunk = c.Int("chunk_size", 256);
        double eps = c.Double("layer_norm_epsilon", 1e-5);
        bool bias = c.Bool("use_bias", false);
        bool convBias = c.Bool("use_conv_bias", true);
        bool residualFp32 = c.Bool("residual_in_fp32", true);
        bool tie = c.Bool("tie_word_embeddings", false);
        c.RequireSilu("hidden_act");
        var (dtMin, dtMax) = c.Limit("time_step_limit");
        if (heads * headDim != expand * d)
            throw new InvalidDataException($"{c.Source}: num_heads * head_dim = {heads} * {headDim} differs from expand * hidden_size = {expand} * {d}");
        if (groups < 1 || heads % groups != 0)
            throw new InvalidDataException($"{c.Source}: n_groups {groups} does not divide num_heads {heads}");
        if (chunk < 1 || chunk > int.MaxValue) throw new InvalidDataException($"{c.Source}: chunk_size {chunk} is not a positive int");
        c.RequireEqual("intermediate_size", expand * d, "expand * hidden_size");
        c.RequireTrue("rms_norm", "LayerNorm blocks are not supported");
        c.RequireEqual("n_layer", layers, "num_hidden_layers");
        c.RequireEqual("d_model", d, "hidden_size");
        c.Ignore("norm_before_gate",          // transformers' MambaRMSNormGated always gates before normalising
            "time_step_rank",                 // Mamba-2 has no dt projection: the rank is unused
            "fused_add_norm", "pad_vocab_size_multiple",
            "time_step_min", "time_step_max", "time_step_floor", "time_step_scale", "time_step_init_scheme",
            "rescale_prenorm_residual", "A_initializer_range", "conv_initializer_range", "emb_initializer_range");
        c.Ignore(CommonIgnored);
        var mixer = new Mamba2Config(d, DState: n, DConv: k, Expand: expand, HeadDim: headDim, NGroups: groups,
            ChunkSize: (int)chunk, DtLimitMin: dtMin, DtLimitMax: dtMax, NormEps: eps, NormPerGroup: false,
            ConvBias: convBias, Bias: bias, NormBeforeGate: false, DtLimitInStep: false);
        var config = new MambaLMConfig(vocab, d, layers, MixerKind.Mamba2, Mamba2: mixer, TieEmbeddings: tie, NormEps: eps,
            ResidualInFp32: residualFp32, PadVocabSizeMultiple: 1);
        return new HfModelInfo(config, HfCheckpointFormat.Transformers, "mamba2",
            c.TokenId("bos_token_id", 0), c.TokenId("eos_token_id", 2), c.TokenId("pad_token_id", 1));
    }

    /// <summary>mamba_ssm's MambaConfig (models/config_mamba.py) with its ssm_cfg for Mamba / Mamba2 (mamba_simple.py, mamba2.py).</summary>
    static HfModelInfo ParseStateSpaces(ConfigReader c)
    {
        long d = c.Int("d_model", 2560);
        long layers = c.Int("n_layer", 64);
        long vocab = c.Int("vocab_size", 50277);
        long padMultiple = c.Int("pad_vocab_size_multiple", 8);
        bool tie = c.Bool("tie_embeddings", true);
        bool residualFp32 = c.Bool("residual_in_fp32", true);
        c.RequireTrue("rms_norm", "LayerNorm blocks are not supported");
        c.RequireEqual("d_intermediate", 0, "0 (MLP blocks between the mixers are not supported)");
        if (c.Peek("attn_layer_idx") is JsonArray { Count: > 0 })
            throw new InvalidDataException($"{c.Source}: attn_layer_idx is not empty: hybrid attention layers are not supported");
        c.Ignore("attn_layer_idx", "attn_cfg", "fused_add_norm");
        c.Ignore(CommonIgnored);
        var ssm = c.Object("ssm_cfg");
        // mamba_ssm's create_block uses norm_epsilon = 1e-5 (no config key) for the block norms and norm_f.
        const double eps = 1e-5;
        MambaLMConfig config;
        string layer = ssm.OptionalString("layer") ?? "Mamba1";
        if (layer == "Mamba1")
        {
            var mixer = new MambaConfig(d, DState: ssm.Int("d_state", 16), DConv: ssm.Int("d_conv", 4), Expand: ssm.Int("expand", 2),
                DtRank: ssm.Rank("dt_rank", d), ConvBias: ssm.Bool("conv_bias", true), Bias: ssm.Bool("bias", false));
            ssm.Ignore("dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path");
            config = new MambaLMConfig(vocab, d, layers, MixerKind.Mamba1, Mamba: mixer, TieEmbeddings: tie, NormEps: eps,
                ResidualInFp32: residualFp32, PadVocabSizeMultiple: padMultiple);
        }
        else if (layer == "Mamba2")
        {
            long expand = ssm.Int("expand", 2), headDim = ssm.Int("headdim", 64), groups = ssm.Int("ngroups", 1);
            if (ssm.Peek("d_ssm") is JsonNode dSsm && dSsm.GetValueKind() != JsonValueKind.Null)
                ssm.RequireEqual("d_ssm", expand * d, "expand * d_model (a partial SSM with an MLP branch is not supported)");
            else ssm.Ignore("d_ssm");
            ssm.RequireFalse("D_has_hdim", "a per-channel D is not supported");
            ssm.RequireTrue("rmsnorm", "a Mamba-2 block without its gated RMSNorm is not supported");
            var (dtMin, dtMax) = ssm.Limit("dt_limit");
            long chunk = ssm.Int("chunk_size", 256);
            if (chunk < 1 || chunk > int.MaxValue) throw new InvalidDataException($"{ssm.Source}: chunk_size {chunk} is not a positive int");
            // mamba2.py: RMSNormGated(d_ssm, eps=1e-5, norm_before_gate, group_size=d_ssm // ngroups).
            var mixer = new Mamba2Config(d, DState: ssm.Int("d_state", 128), DConv: ssm.Int("d_conv", 4), Expand: expand,
                HeadDim: headDim, NGroups: groups, ChunkSize: (int)chunk, DtLimitMin: dtMin, DtLimitMax: dtMax, NormEps: 1e-5,
                NormPerGroup: true, ConvBias: ssm.Bool("conv_bias", true), Bias: ssm.Bool("bias", false),
                NormBeforeGate: ssm.Bool("norm_before_gate", false), DtLimitInStep: false);
            if (mixer.DInner % headDim != 0 || mixer.NHeads % groups != 0)
                throw new InvalidDataException($"{ssm.Source}: d_inner {mixer.DInner} does not split into heads of {headDim} in {groups} groups");
            ssm.Ignore("conv_init", "A_init_range", "dt_min", "dt_max", "dt_init_floor", "use_mem_eff_path",
                "sequence_parallel", "process_group");
            config = new MambaLMConfig(vocab, d, layers, MixerKind.Mamba2, Mamba2: mixer, TieEmbeddings: tie, NormEps: eps,
                ResidualInFp32: residualFp32, PadVocabSizeMultiple: padMultiple);
        }
        else throw new InvalidDataException($"{ssm.Source}: layer '{layer}' is not supported (Mamba1 or Mamba2)");
        ssm.Ignore("layer");
        ssm.Finish();
        return new HfModelInfo(config, HfCheckpointFormat.StateSpaces, layer == "Mamba1" ? "mamba" : "mamba2", null, null, null);
    }

    /// <summary>Canonical (transformers) tensor name -> (file, name in that file), from model.safetensors or the shard index.</summary>
    static Dictionary<string, (string File, string Name)> WeightIndex(string dir)
    {
        string single = Path.Combine(dir, WeightsFile), index = Path.Combine(dir, IndexFile);
        var found = new List<(string Name, string File)>();
        if (File.Exists(single))
        {
            using var f = SafeTensors.Open(single);
            found.AddRange(f.Names.Select(nm => (nm, single)));
        }
        else if (File.Exists(index))
        {
            JsonObject map;
            try
            {
                map = (JsonNode.Parse(File.ReadAllText(index)) as JsonObject)?["weight_map"] as JsonObject
                    ?? throw new InvalidDataException($"{index}: no 'weight_map' object");
            }
            catch (JsonException e) { throw new InvalidDataException($"{index}: invalid JSON ({e.Message})", e); }
            var names = new Dictionary<string, HashSet<string>>();
            foreach (var (tensor, fileNode) in map)
            {
                string file = fileNode?.GetValueKind() == JsonValueKind.String ? fileNode.GetValue<string>()
                    : throw new InvalidDataException($"{index}: weight_map entry '{tensor}' is not a file name");
                if (file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                    throw new InvalidDataException($"{index}: weight_map entry '{tensor}' names '{file}' outside the folder");
                string path = Path.Combine(dir, file);
                if (!names.TryGetValue(path, out var inFile))
                {
                    if (!File.Exists(path)) throw new InvalidDataException($"{index}: shard '{file}' (holding '{tensor}') not found");
                    using var f = SafeTensors.Open(path);
                    names[path] = inFile = f.Names.ToHashSet();
                }
                if (!inFile.Contains(tensor)) throw new InvalidDataException($"{path}: no tensor '{tensor}' although {IndexFile} says so");
                found.Add((tensor, path));
            }
        }
        else
        {
            string? pickle = new[] { "pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin" }
                .FirstOrDefault(p => File.Exists(Path.Combine(dir, p)));
            throw new InvalidDataException(pickle is not null
                ? $"{Path.Combine(dir, pickle)}: PyTorch pickle checkpoints are not supported; convert it to {WeightsFile} (safetensors)"
                : $"{dir}: no {WeightsFile} or {IndexFile}");
        }

        // A backbone-only checkpoint (MambaModel) has no "backbone." prefix; mamba_ssm names the embedding "embedding".
        bool prefixed = found.Any(t => t.Name.StartsWith("backbone.", StringComparison.Ordinal));
        var result = new Dictionary<string, (string, string)>(StringComparer.Ordinal);
        foreach (var (name, file) in found)
        {
            string canonical = prefixed || name.StartsWith("lm_head.", StringComparison.Ordinal) ? name : "backbone." + name;
            if (canonical == "backbone.embedding.weight") canonical = "backbone.embeddings.weight";
            if (!result.TryAdd(canonical, (file, name)))
                throw new InvalidDataException($"{file}: tensor '{name}' duplicates '{result[canonical].Item2}' (both are '{canonical}')");
        }
        return result;
    }

    static void LoadWeights(MambaLM model, HfModelInfo info, Dictionary<string, (string File, string Name)> weights)
    {
        var target = model.state_dict();
        bool tied = info.Config.TieEmbeddings;
        const string Embeddings = "backbone.embeddings.weight", Head = "lm_head.weight";
        var loaded = new HashSet<string>(StringComparer.Ordinal);
        var open = new Dictionary<string, SafeTensorsFile>();
        try
        {
            using var noGrad = torch.no_grad();
            // The head last, so that a tied copy of it can be compared with the embeddings already loaded.
            foreach (var (name, (file, inFile)) in weights.OrderBy(kv => kv.Key == Head ? 1 : 0).ThenBy(kv => kv.Key, StringComparer.Ordinal))
            {
                if (!target.TryGetValue(name, out var dst))
                    throw new InvalidDataException($"{file}: tensor '{inFile}' is not a parameter of {ArchitectureName(info)}" +
                        (name.EndsWith(".bias", StringComparison.Ordinal) ? " (does config.json say use_bias / use_conv_bias false?)" : ""));
                if (!open.TryGetValue(file, out var f)) open[file] = f = SafeTensors.Open(file);
                var (_, shape) = f.Info(inFile);
                if (!shape.SequenceEqual(dst.shape))
                    throw new InvalidDataException($"{file}: tensor '{inFile}' has shape [{string.Join(", ", shape)}], the config makes it [{string.Join(", ", dst.shape)}]");
                using var src = f.Read(inFile);
                if (tied && name == Head && loaded.Contains(Embeddings))
                {
                    // Tied: the head IS the embedding matrix. A stored copy must agree with it.
                    using var emb = dst.detach().cpu().to_type(src.dtype);
                    if (!emb.shape.SequenceEqual(src.shape) || !emb.eq(src).all().item<bool>())
                        throw new InvalidDataException($"{file}: lm_head.weight differs from the embeddings, but config.json ties them (tie_word_embeddings / tie_embeddings)");
                    continue;
                }
                dst.copy_(src.to(dst.dtype, dst.device));
                loaded.Add(name);
            }
        }
        finally { foreach (var f in open.Values) f.Dispose(); }

        if (tied && (loaded.Contains(Embeddings) || loaded.Contains(Head))) { loaded.Add(Embeddings); loaded.Add(Head); }
        foreach (var (name, dst) in target)
        {
            if (loaded.Contains(name)) continue;
            string where = weights.Count > 0 ? Path.GetDirectoryName(weights.First().Value.File) ?? "" : "";
            throw new InvalidDataException($"{where}: missing tensor '{name}' (shape [{string.Join(", ", dst.shape)}])" +
                (name == Head ? " (config.json says the embeddings are not tied)" : ""));
        }
    }

    static string ArchitectureName(HfModelInfo info) => info.Format == HfCheckpointFormat.StateSpaces
        ? "mamba_ssm's MambaLMHeadModel (" + (info.ModelType == "mamba" ? "Mamba1" : "Mamba2") + ")"
        : info.ModelType == "mamba" ? "MambaForCausalLM" : "Mamba2ForCausalLM";

    // ------------------------------------------------------------------------------------------------------------
    // Saving
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// Writes <paramref name="model"/> as a transformers folder (config.json with the keys transformers 5.x writes,
    /// model.safetensors with a tied head stored once), each file atomically. The folder loads back with
    /// <see cref="Load"/> and with transformers' from_pretrained. VocabSize is written padded (the embedding size).
    /// </summary>
    /// <exception cref="ArgumentException">The model uses a setting a transformers config cannot express (a Mamba-2
    /// norm per group with n_groups &gt; 1, norm_before_gate, a mixer eps different from the block eps, a dt limit in the step).</exception>
    public static void Save(string dir, MambaLM model, long? bosTokenId = null, long? eosTokenId = null, long? padTokenId = null)
    {
        string json = ConfigJson(model.Config, DtypeName(model.backbone.embeddings.weight!.dtype), bosTokenId, eosTokenId, padTokenId);
        Directory.CreateDirectory(dir);
        SafeTensors.Save(Path.Combine(dir, WeightsFile), ModelFolder.Weights(model), new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(dir, ConfigFile), json);
    }

    /// <summary>The config.json text transformers would write for this configuration (keys sorted, as json.dumps(sort_keys=True)).</summary>
    public static string ConfigJson(MambaLMConfig c, string dtype = "float32", long? bosTokenId = null, long? eosTokenId = null, long? padTokenId = null)
    {
        var keys = new SortedDictionary<string, object>(StringComparer.Ordinal)
        {
            ["bos_token_id"] = bosTokenId ?? 0,
            ["dtype"] = dtype,
            ["hidden_act"] = "silu",
            ["hidden_size"] = c.DModel,
            ["initializer_range"] = 0.1,
            ["layer_norm_epsilon"] = c.NormEps,
            ["num_hidden_layers"] = c.NLayer,
            ["rescale_prenorm_residual"] = false,
            ["residual_in_fp32"] = c.ResidualInFp32,
            ["tie_word_embeddings"] = c.TieEmbeddings,
            ["use_cache"] = true,
            ["vocab_size"] = c.PaddedVocab,
        };
        if (c.Mixer == MixerKind.Mamba1)
        {
            var m = c.MambaOrDefault;
            keys["architectures"] = new[] { "MambaForCausalLM" };
            keys["model_type"] = "mamba";
            keys["eos_token_id"] = eosTokenId ?? 0;
            keys["pad_token_id"] = padTokenId ?? 0;
            keys["state_size"] = m.DState;
            keys["expand"] = m.Expand;
            keys["intermediate_size"] = m.DInner;
            keys["conv_kernel"] = m.DConv;
            keys["use_bias"] = m.Bias;
            keys["use_conv_bias"] = m.ConvBias;
            keys["time_step_rank"] = m.Rank;
            keys["time_step_scale"] = m.DtScale;
            keys["time_step_min"] = m.DtMin;
            keys["time_step_max"] = m.DtMax;
            keys["time_step_floor"] = m.DtInitFloor;
            keys["time_step_init_scheme"] = "random";
            keys["use_mambapy"] = false;
        }
        else
        {
            var m = c.Mamba2OrDefault;
            if (m.NormPerGroup && m.NGroups > 1)
                throw new ArgumentException($"this Mamba-2 model normalises per group of d_inner / {m.NGroups} (mamba_ssm); transformers normalises over all of d_inner, so a transformers config cannot describe it");
            if (m.NormBeforeGate) throw new ArgumentException("norm_before_gate: transformers' Mamba-2 always gates before the norm");
            if (m.NormEps != c.NormEps) throw new ArgumentException($"the gated norm's eps {m.NormEps} differs from the blocks' {c.NormEps}; transformers has one layer_norm_epsilon");
            if (m.DtLimitInStep && (m.DtLimitMin > 0 || !double.IsPositiveInfinity(m.DtLimitMax)))
                throw new ArgumentException("DtLimitInStep: transformers' one-token step does not clamp dt to time_step_limit");
            keys["architectures"] = new[] { "Mamba2ForCausalLM" };
            keys["model_type"] = "mamba2";
            keys["eos_token_id"] = eosTokenId ?? 2;
            keys["pad_token_id"] = padTokenId ?? 1;
            keys["state_size"] = m.DState;
            keys["expand"] = m.Expand;
            keys["conv_kernel"] = m.DConv;
            keys["num_heads"] = m.NHeads;
            keys["head_dim"] = m.HeadDim;
            keys["n_groups"] = m.NGroups;
            keys["chunk_size"] = (long)m.ChunkSize;
            keys["use_bias"] = m.Bias;
            keys["use_conv_bias"] = m.ConvBias;
            keys["time_step_limit"] = new[] { m.DtLimitMin, m.DtLimitMax };
            keys["time_step_rank"] = (c.DModel + 15) / 16;
            keys["time_step_min"] = m.DtMin;
            keys["time_step_max"] = m.DtMax;
            keys["time_step_floor"] = m.DtInitFloor;
        }
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            foreach (var (key, value) in keys)
            {
                w.WritePropertyName(key);
                switch (value)
                {
                    case string s: w.WriteStringValue(s); break;
                    case bool b: w.WriteBooleanValue(b); break;
                    case long l: w.WriteNumberValue(l); break;
                    case int i: w.WriteNumberValue(i); break;
                    case double v: WriteDouble(w, v); break;
                    case string[] arr: w.WriteStartArray(); foreach (var s in arr) w.WriteStringValue(s); w.WriteEndArray(); break;
                    case double[] arr: w.WriteStartArray(); foreach (var v in arr) WriteDouble(w, v); w.WriteEndArray(); break;
                    default: throw new InvalidOperationException($"unexpected config value for {key}");
                }
            }
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.WrittenSpan) + "\n";
    }

    /// <summary>A JSON number the way Python's json module writes a float: an integral value keeps its ".0" (transformers
    /// 5's strict config dataclasses reject `"time_step_scale": 1` as an int where a float is declared), and an infinity
    /// is written as Infinity (transformers reads it back).</summary>
    static void WriteDouble(Utf8JsonWriter w, double v)
    {
        if (double.IsPositiveInfinity(v)) w.WriteRawValue("Infinity", skipInputValidation: true);
        else if (double.IsNegativeInfinity(v)) w.WriteRawValue("-Infinity", skipInputValidation: true);
        else if (double.IsNaN(v)) throw new ArgumentException("NaN in a config value");
        else if (Math.Abs(v) < 1e16 && v == Math.Floor(v))
            w.WriteRawValue(((long)v).ToString(System.Globalization.CultureInfo.InvariantCulture) + ".0", skipInputValidation: true);
        else w.WriteNumberValue(v);
    }

    static string DtypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        ScalarType.Float64 => "float64",
        _ => throw new ArgumentException($"parameters of dtype {t} cannot be saved as a transformers checkpoint"),
    };

    // ------------------------------------------------------------------------------------------------------------
    // JSON helpers
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// Parses JSON that may hold Python's non-standard Infinity / -Infinity / NaN literals (json.dumps writes them; older
    /// transformers configs carry "time_step_limit": [0.0, Infinity]). Outside strings they become the strings
    /// "Infinity", "-Infinity" and "NaN", which the number readers accept.
    /// </summary>
    public static JsonNode? ParseLenientJson(string text, string source)
    {
        var sb = new StringBuilder(text.Length + 16);
        bool inString = false;
        for (int i = 0; i < text.Length; i++)
        {
            char ch = text[i];
            if (inString)
            {
                sb.Append(ch);
                if (ch == '\\' && i + 1 < text.Length) sb.Append(text[++i]);
                else if (ch == '"') inString = false;
                continue;
            }
            if (ch == '"') { inString = true; sb.Append(ch); continue; }
            string? literal = Match(text, i, "-Infinity") ?? Match(text, i, "Infinity") ?? Match(text, i, "NaN");
            if (literal is not null)
            {
                sb.Append('"').Append(literal).Append('"');
                i += literal.Length - 1;
                continue;
            }
            sb.Append(ch);
        }
        try { return JsonNode.Parse(sb.ToString()); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: invalid JSON ({e.Message})", e); }

        static string? Match(string s, int at, string word) =>
            string.CompareOrdinal(s, at, word, 0, word.Length) == 0 ? word : null;
    }

    /// <summary>Reads keys of one JSON object, remembering which were consumed, so that any key left is an error.</summary>
    sealed class ConfigReader
    {
        readonly JsonObject _obj;
        readonly HashSet<string> _seen = new(StringComparer.Ordinal);
        public string Source { get; }

        public ConfigReader(JsonObject obj, string source) { _obj = obj; Source = source; }

        public bool Has(string key) => _obj.ContainsKey(key);

        public JsonNode? Peek(string key) => _obj.TryGetPropertyValue(key, out var v) ? v : null;

        JsonNode? Take(string key)
        {
            _seen.Add(key);
            return _obj.TryGetPropertyValue(key, out var v) ? v : null;
        }

        InvalidDataException Bad(string key, JsonNode? v, string what) =>
            new($"{Source}: config key '{key}' must be {what}, not {v?.ToJsonString() ?? "null"}");

        public long Int(string key, long fallback)
        {
            var v = Take(key);
            if (v is null) return fallback;
            if (v is JsonValue jv && jv.GetValueKind() == JsonValueKind.Number)
            {
                if (jv.TryGetValue<long>(out long l)) return l;
                if (jv.TryGetValue<double>(out double dd) && dd == Math.Floor(dd) && Math.Abs(dd) < 1e15) return (long)dd;
            }
            throw Bad(key, v, "an integer");
        }

        public long? TokenId(string key, long fallback)
        {
            if (Peek(key) is JsonArray) { Take(key); return null; }       // a list of ids (several eos tokens)
            if (Has(key) && Peek(key) is null) { Take(key); return null; }
            return Int(key, fallback);
        }

        public double Double(string key, double fallback)
        {
            var v = Take(key);
            return v is null ? fallback : ToDouble(v) ?? throw Bad(key, v, "a number");
        }

        /// <summary>A JSON number, or an infinity/NaN as Python writes it: a bare literal (made a string by
        /// <see cref="ParseLenientJson"/>), or transformers 5's {"__float__": "Infinity"}.</summary>
        static double? ToDouble(JsonNode v)
        {
            if (v is JsonObject o && o.Count == 1 && o["__float__"] is JsonNode inner) return ToDouble(inner);
            if (v is not JsonValue jv) return null;
            if (jv.GetValueKind() == JsonValueKind.Number && jv.TryGetValue<double>(out double d)) return d;
            if (jv.GetValueKind() == JsonValueKind.String)
                return jv.GetValue<string>() switch
                {
                    "Infinity" or "inf" => double.PositiveInfinity,
                    "-Infinity" or "-inf" => double.NegativeInfinity,
                    "NaN" or "nan" => double.NaN,
                    _ => null,
                };
            return null;
        }

        public bool Bool(string key, bool fallback)
        {
            var v = Take(key);
            if (v is null) return fallback;
            return v.GetValueKind() switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Bad(key, v, "true or false"),
            };
        }

        public string? OptionalString(string key)
        {
            var v = Take(key);
            if (v is null) return null;
            return v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw Bad(key, v, "a string");
        }

        /// <summary>time_step_rank / dt_rank: an integer or "auto" (ceil(d_model / 16)).</summary>
        public long Rank(string key, long dModel)
        {
            if (Peek(key) is JsonValue jv && jv.GetValueKind() == JsonValueKind.String)
            {
                Take(key);
                return jv.GetValue<string>() == "auto" ? (dModel + 15) / 16 : throw Bad(key, jv, "an integer or \"auto\"");
            }
            long r = Int(key, (dModel + 15) / 16);
            return r >= 1 ? r : throw Bad(key, Peek(key), "a positive integer or \"auto\"");
        }

        /// <summary>A [min, max] pair for dt (time_step_limit / dt_limit); default [0, inf].</summary>
        public (double Min, double Max) Limit(string key)
        {
            var v = Take(key);
            if (v is null) return (0.0, double.PositiveInfinity);
            if (v is JsonArray { Count: 2 } a && a[0] is JsonNode lo && a[1] is JsonNode hi
                && ToDouble(lo) is double min && ToDouble(hi) is double max && !double.IsNaN(min) && !double.IsNaN(max) && min >= 0 && min <= max)
                return (min, max);
            throw Bad(key, v, "a pair [min, max] with 0 <= min <= max");
        }

        public void RequireSilu(string key)
        {
            string act = OptionalString(key) ?? "silu";
            if (act != "silu" && act != "swish")
                throw new InvalidDataException($"{Source}: config key '{key}' is '{act}'; only silu (swish) is supported");
        }

        public void RequireEqual(string key, long expected, string what)
        {
            if (!Has(key)) { _seen.Add(key); return; }
            long v = Int(key, expected);
            if (v != expected) throw new InvalidDataException($"{Source}: config key '{key}' is {v}, but {what} is {expected}: this loader cannot represent it");
        }

        public void RequireTrue(string key, string why)
        {
            if (Has(key) && !Bool(key, true)) throw new InvalidDataException($"{Source}: config key '{key}' is false: {why}");
            _seen.Add(key);
        }

        public void RequireFalse(string key, string why)
        {
            if (Has(key) && Bool(key, false)) throw new InvalidDataException($"{Source}: config key '{key}' is true: {why}");
            _seen.Add(key);
        }

        public void RequireEmptyObject(string key)
        {
            var v = Take(key);
            if (v is null || v is JsonObject { Count: 0 }) return;
            throw new InvalidDataException($"{Source}: config key '{key}' ({v.ToJsonString()}) is not read by transformers' model_type '{_obj["model_type"]}'; refusing to guess its meaning");
        }

        /// <summary>A nested object (ssm_cfg) read by its own reader; an absent key reads as {}.</summary>
        public ConfigReader Object(string key)
        {
            var v = Take(key);
            if (v is null) return new ConfigReader(new JsonObject(), $"{Source} ({key})");
            return v is JsonObject o ? new ConfigReader(o, $"{Source} ({key})") : throw Bad(key, v, "an object");
        }

        /// <summary>Keys that do not change the forward pass.</summary>
        public void Ignore(params string[] keys) { foreach (var k in keys) _seen.Add(k); }

        public void CheckArchitectures(params string[] allowed)
        {
            if (Peek("architectures") is not JsonArray a) return;
            foreach (var item in a)
            {
                string? name = item?.GetValueKind() == JsonValueKind.String ? item.GetValue<string>() : null;
                if (name is null || !allowed.Contains(name))
                    throw new InvalidDataException($"{Source}: architectures lists '{item?.ToJsonString()}'; this loader reads {string.Join(" / ", allowed)}");
            }
        }

        /// <summary>Every key must have been read or named as known.</summary>
        public void Finish()
        {
            var unknown = _obj.Select(kv => kv.Key).Where(k => !_seen.Contains(k)).ToList();
            if (unknown.Count > 0)
                throw new InvalidDataException($"{Source}: unknown config key '{unknown[0]}' ({_obj[unknown[0]]?.ToJsonString() ?? "null"}): " +
                    "this loader does not know whether it changes the model" + (unknown.Count > 1 ? $" (and {unknown.Count - 1} more: {string.Join(", ", unknown.Skip(1))})" : ""));
        }
    }
}
