// Caduceus (Schiff, Kao, Gokaslan, Dao, Gu & Kuleshov 2024, "Caduceus: Bi-Directional Equivariant Long-Range DNA
// Sequence Modeling"; kuleshov-group/caduceus modeling_caduceus.py and modeling_rcps.py), on the backbone's Mamba.
//
// Glossary: b batch, l length in bases, d = d_model, V = 16 (padded vocabulary), K = number of classes.
//   rc on ids (b, l):           complement every id, flip l                          (DnaTokenizer.ReverseComplement)
//   rc on RCPS hidden (b, l, 2d): flip l and the channels, dims (-2, -1)             (RCPSWrapper.Rc)
//   rc on logits (b, l, V):     flip l, permute V by the complement map              (RcLogits)
//
// Two families, chosen by the config (rcps):
//   Caduceus-Ph: BiMamba blocks (section 3.1: a forward and a reverse Mamba with tied in_proj/out_proj, outputs added;
//     the backbone's Bidirectional.OfMamba) over a plain embedding; RC handled by data augmentation at training time.
//   Caduceus-PS: the same blocks made RC-equivariant by parameter sharing (section 3.2, after Zhou et al. 2022):
//     the hidden state has 2d channels; the first d read the sequence, the last d hold the reverse complement's
//     features flipped back, and every module is applied with the SAME weights to the first half and to the rc of the
//     second half (RCPSWrapper, RCPSAddNormWrapper). RCPSEmbedding builds the two halves from x and rc(x) and
//     RCPSLMHead folds them back with complemented output rows, so that logits(rc x) = RcLogits(logits(x)) exactly.
//
// State-dict names follow CaduceusForMaskedLM / CaduceusForSequenceClassification:
//   caduceus.backbone.embeddings.word_embeddings.weight            (PS: ...word_embeddings.embedding.weight)
//   caduceus.backbone.layers.{i}.norm.weight                       (PS: ...norm.submodule.weight)
//   caduceus.backbone.layers.{i}.mixer.mamba_fwd.{in_proj,conv1d,x_proj,dt_proj,A_log,D,out_proj}.*, mixer.mamba_rev.*
//                                                                  (PS: ...mixer.submodule.mamba_fwd.*)
//   caduceus.backbone.norm_f.weight                                (PS: ...norm_f.submodule.weight)
//   lm_head.weight (PS: lm_head.lm_head.weight), tied to the word embeddings;   score.weight (classification)
// Deviations from the reference: (1) RMSNorm only (rms_norm=True is Caduceus' default; no LayerNorm option), no
// fused add+norm: the blocks are written in the equivalent pre-norm form x + mixer(norm(x)) instead of the
// reference's (hidden, residual) pairs; (2) the complement maps are plain constants, not the reference's
// "complement_map" buffers (so those two entries are not in the state dict; a Caduceus checkpoint loads after dropping
// them); (3) d_state/d_conv/expand are flat config fields instead of a nested ssm_cfg; (4) the MLM loss ignores
// label -100 (PyTorch's ignore_index) where the reference ignores the pad id.
using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Genomics;

/// <summary>How the two directions of a BiMamba layer are merged (Caduceus' bidirectional_strategy).</summary>
public enum BidirectionalStrategy
{
    /// <summary>fwd + rev ("add", the default).</summary>
    Add,
    /// <summary>fwd * rev ("ew_multiply").</summary>
    EwMultiply,
}

/// <summary>Caduceus' config (configuration_caduceus.py defaults where they apply to a DNA model).</summary>
public sealed record CaduceusConfig(
    long DModel,
    long NLayer,
    long DState = 16,
    long DConv = 4,
    long Expand = 2,
    bool Bidirectional = true,
    BidirectionalStrategy BidirectionalStrategy = BidirectionalStrategy.Add,
    bool BidirectionalWeightTie = true,
    bool Rcps = false,
    long VocabSize = DnaTokenizer.VocabSize,
    long PadVocabSizeMultiple = 8,
    double NormEpsilon = 1e-5,
    bool ResidualInFp32 = true)
{
    /// <summary>For tests: 2 BiMamba layers of width 32.</summary>
    public static CaduceusConfig Tiny => new(32, 2, DState: 8);

    /// <summary>For tests: the RC-equivariant form of <see cref="Tiny"/> (hidden width 64).</summary>
    public static CaduceusConfig TinyPs => Tiny with { Rcps = true };

    /// <summary>Caduceus-Ph, 4 layers of width 128 with tied projections (541,312 parameters), sized for short-sequence benchmarks.</summary>
    public static CaduceusConfig Small => new(128, 4);

    /// <summary>Caduceus-PS of the same size (the same parameters; the hidden state is twice as wide).</summary>
    public static CaduceusConfig SmallPs => Small with { Rcps = true };

    /// <summary>Presets by name, for the CLI.</summary>
    public static IReadOnlyDictionary<string, CaduceusConfig> Presets { get; } = new Dictionary<string, CaduceusConfig>(StringComparer.OrdinalIgnoreCase)
    {
        ["tiny"] = Tiny, ["tiny-ps"] = TinyPs, ["small"] = Small, ["small-ps"] = SmallPs,
    };

    /// <summary>The vocabulary rounded up to a multiple of PadVocabSizeMultiple (16 for the DNA tokenizer).</summary>
    [JsonIgnore]
    public long PaddedVocab => PadVocabSizeMultiple <= 1 ? VocabSize
        : (VocabSize + PadVocabSizeMultiple - 1) / PadVocabSizeMultiple * PadVocabSizeMultiple;

    [JsonIgnore]
    public MambaConfig Mamba => new(DModel, DState: DState, DConv: DConv, Expand: Expand);

    /// <summary>Throws an ArgumentException naming the first field out of range.</summary>
    public void Validate()
    {
        if (DModel <= 0) throw new ArgumentException($"d_model must be positive, got {DModel}");
        if (NLayer <= 0) throw new ArgumentException($"n_layer must be positive, got {NLayer}");
        if (DState <= 0) throw new ArgumentException($"d_state must be positive, got {DState}");
        if (DConv <= 0) throw new ArgumentException($"d_conv must be positive, got {DConv}");
        if (Expand <= 0) throw new ArgumentException($"expand must be positive, got {Expand}");
        if (VocabSize != DnaTokenizer.VocabSize)
            throw new ArgumentException($"vocab_size must be {DnaTokenizer.VocabSize} (the DNA character tokenizer), got {VocabSize}");
        if (PaddedVocab != DnaTokenizer.PaddedVocab)
            throw new ArgumentException($"pad_vocab_size_multiple {PadVocabSizeMultiple} pads the vocabulary to {PaddedVocab}, expected {DnaTokenizer.PaddedVocab}");
        if (!Enum.IsDefined(BidirectionalStrategy)) throw new ArgumentException($"unknown bidirectional_strategy {BidirectionalStrategy}");
    }
}

// ================================================================================================ BiMamba

/// <summary>The mixer of a Caduceus layer with bidirectional = false: the forward Mamba alone (name mamba_fwd).</summary>
public sealed class ForwardMamba : nn.Module<Tensor, Tensor>
{
    public Mamba mamba_fwd;

    public ForwardMamba(MambaConfig config) : base(nameof(ForwardMamba))
    {
        mamba_fwd = new Mamba(config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => mamba_fwd.forward(x);
}

public static class BiMamba
{
    /// <summary>Caduceus' BiMambaWrapper for a config: the backbone's Bidirectional (mamba_fwd, mamba_rev with in_proj and
    /// out_proj tied when bidirectional_weight_tie), or the forward Mamba alone.</summary>
    public static nn.Module<Tensor, Tensor> Create(CaduceusConfig c) => !c.Bidirectional ? new ForwardMamba(c.Mamba)
        : Bidirectional.OfMamba(c.Mamba, c.BidirectionalWeightTie,
            c.BidirectionalStrategy == BidirectionalStrategy.Add ? BidirectionalMerge.Add : BidirectionalMerge.Multiply);

    /// <summary>The Mamba mixers inside a layer's mixer (one or two), for initialisation.</summary>
    internal static IEnumerable<Mamba> Mixers(nn.Module mixer) => mixer switch
    {
        Bidirectional b => new[] { (Mamba)b.mamba_fwd, (Mamba)b.mamba_rev },
        ForwardMamba f => new[] { f.mamba_fwd },
        RCPSWrapper w => Mixers(w.submodule),
        _ => [],
    };
}

// ================================================================================================ RC equivariance

/// <summary>
/// Embeds ids (b, l) -> (b, l, 2d): [emb(x), flip_{l,c}(emb(rc x))] (modeling_rcps.py RCPSEmbedding). The table has d
/// columns; the output is twice as wide.
/// </summary>
public sealed class RCPSEmbedding : nn.Module<Tensor, Tensor>
{
    public Embedding embedding;

    public RCPSEmbedding(long vocab, long dModel) : base(nameof(RCPSEmbedding))
    {
        embedding = nn.Embedding(vocab, dModel);
        RegisterComponents();
    }

    public Parameter weight => embedding.weight!;

    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var fwd = embedding.forward(ids);                                          // (b l d)
        var rc = embedding.forward(DnaTokenizer.ReverseComplement(ids)).flip(-2, -1); // (b l d)
        return torch.cat([fwd, rc], -1).MoveToOuterDisposeScope();                 // (b l 2d)
    }
}

/// <summary>
/// Makes any module on d channels RC-equivariant on 2d channels (modeling_rcps.py RCPSWrapper): the submodule runs on
/// the first half and, with the same weights, on the rc of the second half; its second output is flipped back.
/// </summary>
public sealed class RCPSWrapper : nn.Module<Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor> submodule;

    public RCPSWrapper(nn.Module<Tensor, Tensor> submodule) : base(nameof(RCPSWrapper))
    {
        this.submodule = submodule;
        RegisterComponents();
    }

    /// <summary>The rc of a hidden state (..., l, c): flip length and channels.</summary>
    public static Tensor Rc(Tensor x) => x.flip(-2, -1);

    /// <summary>x (b, l, 2d) -> (b, l, 2d).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long c = x.shape[^1] / 2;
        var fwd = submodule.forward(x.narrow(-1, 0, c));
        var rc = submodule.forward(Rc(x.narrow(-1, c, c)));
        return torch.cat([fwd, Rc(rc)], -1).MoveToOuterDisposeScope();
    }
}

/// <summary>The RC-equivariant norm (modeling_rcps.py RCPSAddNormWrapper, the add already done by the pre-norm block):
/// the same RMSNorm on the first half and on the rc of the second half.</summary>
public sealed class RCPSAddNormWrapper : nn.Module<Tensor, Tensor>
{
    public RMSNorm submodule;

    public RCPSAddNormWrapper(RMSNorm submodule) : base(nameof(RCPSAddNormWrapper))
    {
        this.submodule = submodule;
        RegisterComponents();
    }

    /// <summary>x (b, l, 2d) -> (b, l, 2d) in the norm weight's dtype.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long c = x.shape[^1] / 2;
        var t = submodule.weight.dtype;
        var fwd = submodule.forward(x.narrow(-1, 0, c).to_type(t));
        var rc = submodule.forward(RCPSWrapper.Rc(x.narrow(-1, c, c)).to_type(t));
        return torch.cat([fwd, RCPSWrapper.Rc(rc)], -1).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The LM head on 2d RC-equivariant channels (modeling_rcps.py RCPSLMHead): logits = W h_fwd + W[comp] flip_c(h_rc),
/// W (V, d) shared (and tied to the embedding table), so that the logits of rc(x) are RcLogits of the logits of x.
/// </summary>
public sealed class RCPSLMHead : nn.Module<Tensor, Tensor>
{
    public Linear lm_head;
    public long TrueDim { get; }

    public RCPSLMHead(long trueDim, long vocab) : base(nameof(RCPSLMHead))
    {
        TrueDim = trueDim;
        lm_head = nn.Linear(trueDim, vocab, hasBias: false);
        RegisterComponents();
    }

    public Parameter weight => lm_head.weight!;

    /// <summary>x (b, l, 2d) -> logits (b, l, V).</summary>
    public override Tensor forward(Tensor x)
    {
        if (x.shape[^1] != 2 * TrueDim) throw new ArgumentException($"RCPS LM head expects {2 * TrueDim} channels, got {x.shape[^1]}");
        using var scope = torch.NewDisposeScope();
        var w = lm_head.weight!;
        var comp = DnaTokenizer.ComplementTensor(w.device);
        var fwd = nn.functional.linear(x.narrow(-1, 0, TrueDim), w);
        var rc = nn.functional.linear(x.narrow(-1, TrueDim, TrueDim).flip(-1), w.index_select(0, comp));
        return (fwd + rc).MoveToOuterDisposeScope();
    }
}

/// <summary>An RC-equivariant pre-norm residual block (RCPSMambaBlock): x + RCPSWrapper(mixer)(RCPSAddNormWrapper(norm)(x)).</summary>
public sealed class RCPSMambaBlock : nn.Module<Tensor, Tensor>
{
    public RCPSAddNormWrapper norm;
    public RCPSWrapper mixer;
    public bool ResidualInFp32 { get; }

    public RCPSMambaBlock(nn.Module<Tensor, Tensor> mixer, long dModel, double eps, bool residualInFp32) : base(nameof(RCPSMambaBlock))
    {
        norm = new RCPSAddNormWrapper(new RMSNorm(dModel, eps));
        this.mixer = new RCPSWrapper(mixer);
        ResidualInFp32 = residualInFp32;
        RegisterComponents();
    }

    /// <summary>x (b, l, 2d) -> (b, l, 2d).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = mixer.forward(norm.forward(x));
        var residual = ResidualInFp32 ? x.to_type(ScalarType.Float32) : x;
        return (residual + y).MoveToOuterDisposeScope();
    }
}

// ================================================================================================ the network

/// <summary>The embedding module (CaduceusEmbeddings): a plain table, or RCPSEmbedding for RCPS.</summary>
public sealed class CaduceusEmbeddings : nn.Module<Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor> word_embeddings;

    public CaduceusEmbeddings(CaduceusConfig c) : base(nameof(CaduceusEmbeddings))
    {
        word_embeddings = c.Rcps ? new RCPSEmbedding(c.PaddedVocab, c.DModel) : nn.Embedding(c.PaddedVocab, c.DModel);
        RegisterComponents();
    }

    /// <summary>The (V, d) table.</summary>
    public Parameter Weight => word_embeddings switch
    {
        RCPSEmbedding r => r.weight,
        Embedding e => e.weight!,
        _ => throw new InvalidOperationException("unknown embedding"),
    };

    public override Tensor forward(Tensor ids) => word_embeddings.forward(ids);
}

/// <summary>embeddings + n_layer blocks + final norm (CaduceusMixerModel, named "backbone").</summary>
public sealed class CaduceusMixerModel : nn.Module<Tensor, Tensor>
{
    public CaduceusEmbeddings embeddings;
    public ModuleList<nn.Module<Tensor, Tensor>> layers;
    public nn.Module<Tensor, Tensor> norm_f;

    public CaduceusMixerModel(CaduceusConfig c) : base(nameof(CaduceusMixerModel))
    {
        embeddings = new CaduceusEmbeddings(c);
        layers = new ModuleList<nn.Module<Tensor, Tensor>>();
        for (long i = 0; i < c.NLayer; i++)
        {
            var mixer = BiMamba.Create(c);
            layers.Add(c.Rcps ? new RCPSMambaBlock(mixer, c.DModel, c.NormEpsilon, c.ResidualInFp32)
                              : new ResidualBlock(mixer, c.DModel, c.NormEpsilon, c.ResidualInFp32));
        }
        var normF = new RMSNorm(c.DModel, c.NormEpsilon);
        norm_f = c.Rcps ? new RCPSAddNormWrapper(normF) : normF;
        RegisterComponents();
    }

    /// <summary>ids (b, l) -> hidden (b, l, d), or (b, l, 2d) for RCPS, in the norm's dtype.</summary>
    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var h = embeddings.forward(ids);
        foreach (var layer in layers) h = layer.forward(h);
        var normWeight = norm_f is RCPSAddNormWrapper w ? w.submodule.weight : ((RMSNorm)norm_f).weight;
        return norm_f.forward(h.to_type(normWeight.dtype)).MoveToOuterDisposeScope();
    }
}

/// <summary>The Caduceus backbone (modeling_caduceus.py Caduceus, named "caduceus" in the task models).</summary>
public sealed class Caduceus : nn.Module<Tensor, Tensor>
{
    public CaduceusMixerModel backbone;
    public CaduceusConfig Config { get; }

    public Caduceus(CaduceusConfig config) : base(nameof(Caduceus))
    {
        config.Validate();
        Config = config;
        backbone = new CaduceusMixerModel(config);
        RegisterComponents();
    }

    /// <summary>ids (b, l) int64 -> hidden (b, l, d) ((b, l, 2d) for RCPS).</summary>
    public override Tensor forward(Tensor ids) => backbone.forward(ids);

    /// <summary>
    /// Caduceus' _init_weights: embeddings N(0, 0.02); every out_proj (each tied one once) re-drawn with PyTorch's
    /// Linear default (kaiming_uniform, a = sqrt 5) and divided by sqrt(n_layer) (GPT-2's rescaling of residual
    /// branches, n_residuals_per_layer = 1). The Mamba-specific initialisations (dt bias, A, D) stay as Mamba made them.
    /// </summary>
    internal void InitWeights()
    {
        using var noGrad = torch.no_grad();
        nn.init.normal_(backbone.embeddings.Weight, 0, 0.02);
        var done = new HashSet<IntPtr>();
        foreach (var layer in backbone.layers)
        {
            var mixer = layer switch { ResidualBlock r => r.mixer, RCPSMambaBlock p => p.mixer, _ => throw new InvalidOperationException("unknown block") };
            foreach (var m in BiMamba.Mixers(mixer))
            {
                var w = m.out_proj.weight!;
                if (!done.Add(w.Handle)) continue;
                nn.init.kaiming_uniform_(w, Math.Sqrt(5));
                w.div_(Math.Sqrt(Config.NLayer));
            }
        }
    }
}

/// <summary>Caduceus with an LM head over the padded vocabulary, tied to the embeddings (CaduceusForMaskedLM).</summary>
public sealed class CaduceusForMaskedLM : nn.Module<Tensor, Tensor>
{
    public Caduceus caduceus;
    public nn.Module<Tensor, Tensor> lm_head;
    public CaduceusConfig Config { get; }

    public CaduceusForMaskedLM(CaduceusConfig config) : base(nameof(CaduceusForMaskedLM))
    {
        Config = config;
        caduceus = new Caduceus(config);
        caduceus.InitWeights();
        if (config.Rcps)
        {
            var head = new RCPSLMHead(config.DModel, config.PaddedVocab);
            head.lm_head.weight = caduceus.backbone.embeddings.Weight;
            lm_head = head;
        }
        else
        {
            var head = nn.Linear(config.DModel, config.PaddedVocab, hasBias: false);
            head.weight = caduceus.backbone.embeddings.Weight;
            lm_head = head;
        }
        RegisterComponents();
        // TorchSharp's Linear.weight setter wraps the tied table in a second Parameter object (same storage), which an
        // optimizer would update twice; MoveTo re-ties it as one Parameter (a no-op move otherwise).
        MixedPrecision.MoveTo(this, caduceus.backbone.embeddings.Weight.device);
    }

    /// <summary>ids (b, l) int64 -> logits (b, l, V) float32.</summary>
    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var h = caduceus.forward(ids);
        var w = lm_head is RCPSLMHead r ? r.weight : ((Linear)lm_head).weight!;
        return lm_head.forward(h.to_type(w.dtype)).to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Mean masked-LM cross-entropy in nats over the labelled positions (labels (b, l), -100 elsewhere), 0 when no
    /// position is labelled. Returns (loss, labelled positions).
    /// </summary>
    public (Tensor Loss, long Labelled) Loss(Tensor inputs, Tensor labels)
    {
        using var scope = torch.NewDisposeScope();
        var logits = forward(inputs);
        var flat = labels.reshape(-1).to_type(ScalarType.Int64);
        var sum = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), flat, ignore_index: MlmMasking.IgnoreIndex,
            reduction: nn.Reduction.Sum);
        long n = flat.ne(MlmMasking.IgnoreIndex).sum().item<long>();
        return ((sum / Math.Max(1, n)).MoveToOuterDisposeScope(), n);
    }
}

/// <summary>
/// Caduceus with a sequence-classification head (CaduceusForSequenceClassification, pooling "mean"): mean over the
/// length of the hidden state, then score (d -> K, no bias). For RCPS the two halves are pooled separately (the second
/// flipped back to the forward orientation) and their scores averaged, which makes the logits RC-invariant.
/// </summary>
public sealed class CaduceusForSequenceClassification : nn.Module<Tensor, Tensor>
{
    public Caduceus caduceus;
    public Linear score;
    public CaduceusConfig Config { get; }
    public long NumLabels { get; }

    public CaduceusForSequenceClassification(CaduceusConfig config, long numLabels) : base(nameof(CaduceusForSequenceClassification))
    {
        if (numLabels < 2) throw new ArgumentException($"a classifier needs at least 2 labels, got {numLabels}");
        Config = config;
        NumLabels = numLabels;
        caduceus = new Caduceus(config);
        caduceus.InitWeights();
        score = nn.Linear(config.DModel, numLabels, hasBias: false);
        RegisterComponents();
    }

    /// <summary>ids (b, l) int64 -> class logits (b, K) float32.</summary>
    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var h = caduceus.forward(ids);                                                    // (b l d) or (b l 2d)
        var t = score.weight!.dtype;
        Tensor logits;
        if (Config.Rcps)
        {
            long d = Config.DModel;
            var fwd = h.narrow(-1, 0, d).mean(new long[] { 1 });                           // (b d)
            var rc = h.narrow(-1, d, d).flip(1, 2).mean(new long[] { 1 });                // (b d)
            logits = (score.forward(fwd.to_type(t)) + score.forward(rc.to_type(t))) / 2;
        }
        else logits = score.forward(h.mean(new long[] { 1 }).to_type(t));
        return logits.to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }
}

// ================================================================================================ MLM

/// <summary>
/// BERT-style masking for masked-LM pretraining (Devlin et al. 2019; Caduceus' MLM data collator): 15% of the
/// nucleotide positions (A/C/G/T/N; specials and padding never) are selected; of those 80% become [MASK], 10% a random
/// base (A/C/G/T) and 10% stay as they are. Labels hold the original id at selected positions and -100 elsewhere.
/// </summary>
public static class MlmMasking
{
    public const long IgnoreIndex = -100;
    public const double DefaultRate = 0.15;
    public const double MaskFraction = 0.8, RandomFraction = 0.1;

    /// <summary>
    /// ids (...) int64 -> (inputs, labels) of the same shape and device. Random draws come from
    /// <paramref name="generator"/> (drawn on the CPU, then moved) or, when null, from torch's default generator on the
    /// ids' device (which the Trainer seeds per step).
    /// </summary>
    public static (Tensor Inputs, Tensor Labels) Apply(Tensor ids, Generator? generator = null, double rate = DefaultRate)
    {
        if (rate < 0 || rate > 1) throw new ArgumentOutOfRangeException(nameof(rate), rate, "the masking rate must lie in [0, 1]");
        using var scope = torch.NewDisposeScope();
        var x = ids.to_type(ScalarType.Int64);
        var dev = generator is null ? x.device : torch.CPU;
        Tensor Rand() => torch.rand(x.shape, ScalarType.Float64, dev, generator: generator).to(x.device);
        var eligible = x.ge(DnaTokenizer.A).logical_and(x.le(DnaTokenizer.N));
        var selected = eligible.logical_and(Rand().lt(rate));
        var v = Rand();
        var toMask = selected.logical_and(v.lt(MaskFraction));
        var toRandom = selected.logical_and(v.ge(MaskFraction)).logical_and(v.lt(MaskFraction + RandomFraction));
        var randomBases = torch.randint(DnaTokenizer.A, DnaTokenizer.T + 1, x.shape, ScalarType.Int64, dev, generator: generator).to(x.device);
        var inputs = torch.where(toMask, torch.full_like(x, DnaTokenizer.Mask), x);
        inputs = torch.where(toRandom, randomBases, inputs);
        var labels = torch.where(selected, x, torch.full_like(x, IgnoreIndex));
        return (inputs.MoveToOuterDisposeScope(), labels.MoveToOuterDisposeScope());
    }
}

/// <summary>Reverse-complement maps on model outputs.</summary>
public static class RcMaps
{
    /// <summary>logits (b, l, V) -> the logits the reverse-complement strand would get: flip l, permute V by the complement map.</summary>
    public static Tensor RcLogits(Tensor logits)
    {
        using var scope = torch.NewDisposeScope();
        var comp = DnaTokenizer.ComplementTensor(logits.device);
        return logits.flip(-2).index_select(-1, comp).MoveToOuterDisposeScope();
    }
}
