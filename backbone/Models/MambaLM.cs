// The Mamba language-model stack (HF MambaForCausalLM / Mamba2ForCausalLM; mamba_ssm MambaLMHeadModel):
//   ids (b l) -> embeddings -> n_layer x ResidualBlock(RMSNorm, mixer) -> norm_f -> lm_head -> logits (b l V)
// State-dict names equal the HF ones: backbone.embeddings.weight, backbone.layers.{i}.norm.weight,
// backbone.layers.{i}.mixer.*, backbone.norm_f.weight, lm_head.weight (tied to the embeddings by default).
using TorchSharp;
using TorchSharp.Modules;
using Ssm.Backbone.Layers;
using static TorchSharp.torch;

namespace Ssm.Backbone.Models;

/// <summary>Which mixer the LM's blocks use.</summary>
public enum MixerKind { Mamba1, Mamba2 }

/// <summary>LM hyper-parameters (mamba_ssm MambaConfig defaults); the mixer's own settings live in its config.</summary>
public sealed record MambaLMConfig(
    long VocabSize,
    long DModel,
    long NLayer,
    MixerKind Mixer = MixerKind.Mamba1,
    MambaConfig? Mamba = null,
    Mamba2Config? Mamba2 = null,
    bool TieEmbeddings = true,
    double NormEps = 1e-5,
    bool ResidualInFp32 = true,
    long PadVocabSizeMultiple = 8)
{
    /// <summary>The vocabulary rounded up to a multiple of PadVocabSizeMultiple (mamba_ssm pads for speed).</summary>
    public long PaddedVocab => PadVocabSizeMultiple <= 1 ? VocabSize
        : (VocabSize + PadVocabSizeMultiple - 1) / PadVocabSizeMultiple * PadVocabSizeMultiple;

    public MambaConfig MambaOrDefault => Mamba ?? new MambaConfig(DModel);
    public Mamba2Config Mamba2OrDefault => Mamba2 ?? new Mamba2Config(DModel);
}

/// <summary>The inference state of a whole LM: one <see cref="LayerState"/> per block.</summary>
public sealed class LMState : IDisposable
{
    public LMState(IReadOnlyList<LayerState> layers) { Layers = layers; }
    public IReadOnlyList<LayerState> Layers { get; }
    public void Dispose() { foreach (var l in Layers) l.Dispose(); }
}

/// <summary>embeddings + blocks + final norm (HF MambaModel), named "backbone" inside the LM.</summary>
public sealed class MambaBackbone : nn.Module<Tensor, Tensor>
{
    public Embedding embeddings;
    public ModuleList<ResidualBlock> layers;
    public RMSNorm norm_f;

    public MambaBackbone(MambaLMConfig c) : base(nameof(MambaBackbone))
    {
        if (c.Mixer == MixerKind.Mamba1 && c.MambaOrDefault.DModel != c.DModel) throw new ArgumentException("mixer d_model differs from the LM's");
        if (c.Mixer == MixerKind.Mamba2 && c.Mamba2OrDefault.DModel != c.DModel) throw new ArgumentException("mixer d_model differs from the LM's");
        embeddings = nn.Embedding(c.PaddedVocab, c.DModel);
        layers = new ModuleList<ResidualBlock>();
        for (long i = 0; i < c.NLayer; i++)
        {
            nn.Module<Tensor, Tensor> mixer = c.Mixer == MixerKind.Mamba1 ? new Mamba(c.MambaOrDefault) : new Mamba2(c.Mamba2OrDefault);
            layers.Add(new ResidualBlock(mixer, c.DModel, c.NormEps, c.ResidualInFp32));
        }
        norm_f = new RMSNorm(c.DModel, c.NormEps);
        RegisterComponents();
    }

    /// <summary>ids (b, l) -> hidden (b, l, d_model); a state, when given, receives every layer's state (prefill).</summary>
    public Tensor Forward(Tensor ids, LMState? state)
    {
        using var scope = torch.NewDisposeScope();
        var h = embeddings.forward(ids);
        for (int i = 0; i < layers.Count; i++) h = layers[i].Forward(h, state?.Layers[i]);
        return norm_f.forward(h.to_type(norm_f.weight.dtype)).MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor ids) => Forward(ids, null);
}

public sealed class MambaLM : nn.Module<Tensor, Tensor>
{
    public MambaBackbone backbone;
    public Linear lm_head;
    public MambaLMConfig Config { get; }

    public MambaLM(MambaLMConfig config) : base(nameof(MambaLM))
    {
        Config = config;
        backbone = new MambaBackbone(config);
        lm_head = nn.Linear(config.DModel, config.PaddedVocab, hasBias: false);
        InitWeights();
        if (config.TieEmbeddings) lm_head.weight = backbone.embeddings.weight!;
        RegisterComponents();
        if (config.TieEmbeddings) Training.MixedPrecision.Tie(this);   // one parameter object for the tied matrix
    }

    /// <summary>mamba_ssm's _init_weights: embeddings N(0, 0.02); out_proj scaled by 1/sqrt(n_layer) (GPT-2's
    /// rescaling of the residual branches, so the residual stream's variance does not grow with depth).</summary>
    void InitWeights()
    {
        using var noGrad = torch.no_grad();
        nn.init.normal_(backbone.embeddings.weight!, 0, 0.02);
        foreach (var block in backbone.layers)
        {
            var outProj = block.mixer switch { Mamba m => m.out_proj, Mamba2 m => m.out_proj, _ => null };
            outProj?.weight!.div_(Math.Sqrt(Config.NLayer));
        }
    }

    /// <summary>ids (b, l) int64 -> logits (b, l, padded vocab), float32.</summary>
    public override Tensor forward(Tensor ids) => Forward(ids, null);

    /// <summary>Logits for every position; a fresh <paramref name="state"/> receives the state after ids (prefill).</summary>
    public Tensor Forward(Tensor ids, LMState? state)
    {
        using var scope = torch.NewDisposeScope();
        var h = backbone.Forward(ids, state);
        return lm_head.forward(h.to_type(lm_head.weight!.dtype)).to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    IStepProjection? _stepProjection;

    /// <summary>Computes the projections of <see cref="Step"/> (every Mamba mixer's and lm_head) when set.</summary>
    public IStepProjection? StepProjection
    {
        get => _stepProjection;
        set
        {
            _stepProjection = value;
            foreach (var block in backbone.layers) if (block.mixer is Mamba m) m.StepProjection = value;
        }
    }

    public LMState AllocateState(long batch) => new(backbone.layers.Select(l => l.AllocateState(batch)).ToList());

    /// <summary>One token per sequence: ids (b) -> logits (b, padded vocab), float32; updates the state.</summary>
    public Tensor Step(Tensor ids, LMState state)
    {
        using var scope = torch.NewDisposeScope();
        var h = backbone.embeddings.forward(ids);
        for (int i = 0; i < backbone.layers.Count; i++) h = backbone.layers[i].Step(h, state.Layers[i]);
        h = backbone.norm_f.forward(h.to_type(backbone.norm_f.weight.dtype));
        var logits = _stepProjection?.Project(lm_head, h, withBias: true) ?? lm_head.forward(h.to_type(lm_head.weight!.dtype));
        return logits.to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }
}
