// The causal DNA language model: the backbone's Mamba LM stack over nucleotide tokens, trained on next-base
// prediction (HyenaDNA, Nguyen et al. 2023; the DNA experiments of the Mamba paper, Gu & Dao 2023, section 4.3).
// The network is MambaLM unchanged (HF MambaForCausalLM names: backbone.embeddings.weight, backbone.layers.{i}.*,
// backbone.norm_f.weight, lm_head.weight tied to the embeddings) with the 12-token Caduceus/HyenaDNA vocabulary
// padded to 16 rows.
//
// Glossary: b batch, l / L sequence (chunk) length in bases, d = d_model, V = 16 (padded vocabulary).
//
// Conventions shared by training, scoring and the variant helper (DnaScoring):
//   * start token: every scored sequence (a training window, a FASTA record, a variant window) is read from a zero
//     state whose first input is [BOS] (id 2): inputs [BOS, x_0, ..., x_{L-2}], targets [x_0, ..., x_{L-1}], so every
//     base of the sequence, the first included, gets a prediction, and a training window looks exactly like the start
//     of a scored record.
//   * targets: only A, C, G and T are scored. N is not a base but the absence of one (an assembly gap or an unread
//     position); predicting it would reward the model for learning where gaps are, and the Markov/k-mer baselines of
//     this library skip N, so bits per base are comparable only if N (and any special) target is skipped the same way.
//     N still appears as an input.
//   * the distribution is over the four bases: log_softmax of the logits of ids 7..10 (A, C, G, T) only, a proper
//     distribution over what is scored; the 12 other rows of the head get no probability mass to waste.
//
// Long sequences: ForwardChunk continues from a carried LMState, so a chromosome can be scored chunk by chunk with
// memory bounded by the chunk length (see ChunkedPrefill below and DnaScoring).
using System.Globalization;
using TorchSharp;
using Ssm.Backbone.Layers;
using Ssm.Backbone.Models;
using Ssm.Backbone.Scans;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Genomics;

/// <summary>Hyper-parameters of <see cref="DnaLM"/> (mamba_simple.py defaults for the mixer).</summary>
public sealed record DnaLMConfig(long DModel, long NLayer, long DState = 16, long DConv = 4, long Expand = 2)
{
    /// <summary>For tests: 2 layers of width 32, d_state 8 (17,376 parameters).</summary>
    public static DnaLMConfig Tiny => new(32, 2, DState: 8);

    /// <summary>The suite's default (shipped in models/): 4 layers of width 256, 1,756,416 parameters, 7.0 MB in float32.</summary>
    public static DnaLMConfig Small => new(256, 4);

    /// <summary>8 layers of width 256 (3.5M parameters, 14 MB; too large to ship as the default).</summary>
    public static DnaLMConfig Medium => new(256, 8);

    /// <summary>Presets by name, for the CLI.</summary>
    public static IReadOnlyDictionary<string, DnaLMConfig> Presets { get; } = new Dictionary<string, DnaLMConfig>(StringComparer.OrdinalIgnoreCase)
    {
        ["tiny"] = Tiny, ["small"] = Small, ["medium"] = Medium,
    };

    /// <summary>Throws an ArgumentException naming the first field out of range.</summary>
    public void Validate()
    {
        if (DModel <= 0) throw new ArgumentException($"d_model must be positive, got {DModel}");
        if (NLayer <= 0) throw new ArgumentException($"n_layer must be positive, got {NLayer}");
        if (DState <= 0) throw new ArgumentException($"d_state must be positive, got {DState}");
        if (DConv <= 0) throw new ArgumentException($"d_conv must be positive, got {DConv}");
        if (Expand <= 0) throw new ArgumentException($"expand must be positive, got {Expand}");
    }

    /// <summary>The backbone LM config: vocabulary 12 padded to 16, embeddings tied to the head, Mamba-1 mixers.</summary>
    public MambaLMConfig ToMambaLM() => new(DnaTokenizer.VocabSize, DModel, NLayer, MixerKind.Mamba1,
        new MambaConfig(DModel, DState: DState, DConv: DConv, Expand: Expand), TieEmbeddings: true, PadVocabSizeMultiple: 8);
}

/// <summary>A causal Mamba LM over nucleotides with the conventions of the file header.</summary>
public sealed class DnaLM : IDisposable
{
    /// <summary>The network (its state dict is the checkpoint's).</summary>
    public MambaLM Model { get; }
    public DnaLMConfig Config { get; }

    public DnaLM(DnaLMConfig config)
    {
        config.Validate();
        Config = config;
        Model = new MambaLM(config.ToMambaLM());
        // TorchSharp's Linear.weight setter wraps the tied embedding in a second Parameter object (same storage), which
        // an optimizer would then update twice; MoveTo re-ties it as one Parameter (a no-op move otherwise).
        MixedPrecision.MoveTo(Model, Model.lm_head.weight!.device);
        if (Model.Config.PaddedVocab != DnaTokenizer.PaddedVocab)
            throw new InvalidOperationException($"padded vocabulary is {Model.Config.PaddedVocab}, expected {DnaTokenizer.PaddedVocab}");
    }

    /// <summary>The device of the parameters.</summary>
    public Device Device => Model.lm_head.weight!.device;

    /// <summary>Trainable parameters (the tied head counted once).</summary>
    public long ParameterCount => Model.parameters().DistinctBy(p => p.Handle).Sum(p => p.numel());

    /// <summary>Moves the model (keeping the tied head tied) and returns this.</summary>
    public DnaLM To(Device device, ScalarType? dtype = null)
    {
        MixedPrecision.MoveTo(Model, device, dtype);
        return this;
    }

    // ------------------------------------------------------------------------------------------ conventions

    /// <summary>Targets (b, L) int64 -> inputs (b, L): [BOS, x_0, ..., x_{L-2}] (the start-token convention).</summary>
    public static Tensor ShiftRight(Tensor targets)
    {
        using var scope = torch.NewDisposeScope();
        long b = targets.shape[0], l = targets.shape[1];
        var bos = torch.full(new[] { b, 1L }, DnaTokenizer.Bos, ScalarType.Int64, targets.device);
        return torch.cat([bos, targets.narrow(1, 0, Math.Max(0, l - 1)).to_type(ScalarType.Int64)], 1).narrow(1, 0, l).MoveToOuterDisposeScope();
    }

    /// <summary>logits (..., V) -> log-probabilities over the four bases (..., 4) in float32 (A, C, G, T).</summary>
    public static Tensor BaseLogProbs(Tensor logits)
    {
        using var scope = torch.NewDisposeScope();
        var four = logits.narrow(-1, DnaTokenizer.A, 4).to_type(ScalarType.Float32);
        return four.log_softmax(-1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Per-target negative log-likelihood in nats: logits (..., V) and targets (...) int64 -> (nats (...) float32 with
    /// 0 where the target is not A/C/G/T, scored (...) bool).
    /// </summary>
    public static (Tensor Nats, Tensor Scored) TargetNats(Tensor logits, Tensor targets)
    {
        using var scope = torch.NewDisposeScope();
        var scored = targets.ge(DnaTokenizer.A).logical_and(targets.le(DnaTokenizer.T));
        var k = (targets.to_type(ScalarType.Int64) - DnaTokenizer.A).clamp(0, 3);            // base index 0..3
        var lp = BaseLogProbs(logits).gather(-1, k.unsqueeze(-1)).squeeze(-1);              // (...)
        var nats = torch.where(scored, -lp, torch.zeros_like(lp));
        return (nats.MoveToOuterDisposeScope(), scored.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Training loss of windows of bases (b, L) as int64 ids: mean next-base cross-entropy in nats over the A/C/G/T
    /// targets (a window without any is 0, not NaN). Returns (loss, scored targets).
    /// </summary>
    public (Tensor Loss, long Scored) Loss(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var targets = ids.to_type(ScalarType.Int64);
        var logits = Model.forward(ShiftRight(targets));                                    // (b L V)
        var (nats, scored) = TargetNats(logits, targets);
        var count = scored.sum();
        long n = count.item<long>();
        var loss = nats.sum() / Math.Max(1, n);
        return (loss.MoveToOuterDisposeScope(), n);
    }

    /// <summary>Nats per base shown as bits per base (the trainer's loss display).</summary>
    public static string FormatBits(double nats) => (nats / Math.Log(2)).ToString("0.000", CultureInfo.InvariantCulture) + " bits/base";

    // ------------------------------------------------------------------------------------------ forward modes

    /// <summary>ids (b, l) int64 -> logits (b, l, V) float32, one full forward from a zero state.</summary>
    public Tensor Logits(Tensor ids) => Model.forward(ids);

    /// <summary>A zero state for <paramref name="batch"/> sequences.</summary>
    public LMState AllocateState(long batch) => Model.AllocateState(batch);

    /// <summary>One token per sequence: ids (b) -> logits (b, V); advances the state.</summary>
    public Tensor Step(Tensor ids, LMState state) => Model.Step(ids, state);

    /// <summary>
    /// A chunk that continues the sequence held by <paramref name="state"/>: ids (b, l) -> logits (b, l, V) float32,
    /// equal to the last l positions of a full forward over everything seen so far followed by ids; the state then
    /// holds the sequence including ids. Memory is bounded by the chunk, not by what came before.
    /// </summary>
    public Tensor ForwardChunk(Tensor ids, LMState state)
    {
        if (ids.dim() != 2) throw new ArgumentException($"ids must be (b, l), got [{string.Join(", ", ids.shape)}]", nameof(ids));
        using var scope = torch.NewDisposeScope();
        var bb = Model.backbone;
        var h = bb.embeddings.forward(ids);
        for (int i = 0; i < bb.layers.Count; i++)
        {
            var block = bb.layers[i];
            if (block.mixer is not Mamba mixer) throw new NotSupportedException($"layer {i}: chunked prefill needs a Mamba-1 mixer");
            var y = ChunkedPrefill.Forward(mixer, block.norm.forward(h.to_type(block.norm.weight.dtype)), state.Layers[i]);
            var residual = block.ResidualInFp32 ? h.to_type(ScalarType.Float32) : h;
            h = residual + y;
        }
        h = bb.norm_f.forward(h.to_type(bb.norm_f.weight.dtype));
        var logits = Model.lm_head.forward(h.to_type(Model.lm_head.weight!.dtype)).to_type(ScalarType.Float32);
        return logits.MoveToOuterDisposeScope();
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>
/// The Mamba-1 mixer's forward over a chunk that continues from a carried state (conv inputs and SSM state), which
/// the backbone's Mamba.Forward cannot do (its prefill always starts from zero; the scan takes no initial state).
///
/// The conv continues by prepending the last d_conv - 1 inputs held in the conv state. The SSM state h_0 (d_inner x n
/// per sequence) is loaded into the scan by n virtual steps in front of the chunk, using only the scan's own
/// recurrence h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t (Mamba paper, eq. 2): virtual step k has B = e_k (the k-th unit
/// vector, shared by all channels as B is), a small step Δ_v per channel, and
///   u_k[c] = h_0[c, k] · exp(-(n - 1 - k) Δ_v[c] A[c, k]) / Δ_v[c],
/// so that column k of the state is h_0[:, k] pre-compensated for the decay of the n - 1 - k virtual steps after it.
/// After the n virtual steps the state is exactly h_0 (up to rounding), the real positions follow, and the virtual
/// outputs are dropped. Cost: n extra positions per chunk; memory: the chunk's own. Δ_v = 1 / (n max|A|) (at most
/// 0.01) keeps the compensation factors below e.
/// </summary>
public static class ChunkedPrefill
{
    /// <summary>x (b, l, d_model) -> (b, l, d_model), continuing from <paramref name="state"/>, which is updated in place.</summary>
    public static Tensor Forward(Mamba m, Tensor x, LayerState state)
    {
        var cfg = m.Config;
        long b = x.shape[0], l = x.shape[1], n = cfg.DState, r = cfg.Rank, k = cfg.DConv, di = cfg.DInner;
        if (l == 0) return torch.empty(new[] { b, 0, cfg.DModel }, x.dtype, x.device);
        using var scope = torch.NewDisposeScope();
        var xz = m.in_proj.forward(x).transpose(1, 2);                              // (b 2di l)
        var halves = xz.chunk(2, 1);
        Tensor xs = halves[0], z = halves[1];                                       // (b di l)
        // conv: the carried last k inputs (oldest first) in front of the chunk; keep the chunk's outputs
        var history = torch.cat([state.Conv!.to_type(xs.dtype), xs], 2);           // (b di k+l)
        state.Conv!.copy_(history.narrow(2, l, k));                                 // the last k inputs
        var convIn = history.narrow(2, 1, k - 1 + l);                               // (b di k-1+l)
        xs = nn.functional.silu(CausalConv.Forward(m.conv1d, convIn).narrow(2, k - 1, l)); // (b di l)
        var dbc = m.x_proj.forward(xs.transpose(1, 2));                             // (b l r+2n)
        var parts = dbc.split(new[] { r, n, n }, -1);
        var delta = torch.matmul(m.dt_proj.weight!, parts[0].transpose(1, 2));      // (b di l), bias added in the scan
        var B = parts[1].transpose(1, 2);                                           // (b n l)
        var C = parts[2].transpose(1, 2);
        // the same float32 parameters Mamba.Forward hands the scan
        var A32 = -torch.exp(m.A_log.to_type(ScalarType.Float32));                   // (di n)
        var D32 = m.D.to_type(ScalarType.Float32);
        var bias32 = m.dt_proj.bias!.to_type(ScalarType.Float32);                   // (di)

        // n virtual steps that load h_0 (see the summary); everything in the scan's compute dtype
        var ct = xs.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var A = A32.to_type(ct);
        var bias = bias32.to_type(ct);
        double dtV = Math.Min(0.01, 1.0 / (n * Math.Max(1e-6, A.abs().max().to_type(ScalarType.Float64).item<double>())));
        var rawV = (Math.Log(Math.Exp(dtV) - 1) - bias).unsqueeze(0).unsqueeze(-1).expand(b, di, n);   // softplus(raw + bias) = Δ_v
        var dtActual = Discretization.StepSize(rawV.narrow(2, 0, 1), bias.unsqueeze(0).unsqueeze(-1), softplus: true); // (b di 1)
        var after = torch.arange(n - 1, -1, -1, ct, x.device);                     // n - 1 - k
        var uV = state.Ssm.to_type(ct) * torch.exp(-(dtActual * A) * after) / dtActual;  // (b di n)
        var BV = torch.eye(n, dtype: ct, device: x.device).unsqueeze(0).expand(b, n, n); // (b n n): step k reads e_k
        var (yAll, last) = SelectiveScan.Forward(
            torch.cat([uV, xs.to_type(ct)], 2),                                    // (b di n+l)
            torch.cat([rawV, delta.to_type(ct)], 2),
            A32, torch.cat([BV, B.to_type(ct)], 2).contiguous(), torch.cat([torch.zeros_like(BV), C.to_type(ct)], 2).contiguous(),
            D32, torch.cat([torch.zeros_like(uV), z.to_type(ct)], 2), bias32,
            deltaSoftplus: true, returnLastState: true, impl: m.Scan);
        state.Ssm.copy_(last!);
        var y = yAll.narrow(2, n, l).to_type(xs.dtype);                             // (b di l)
        return m.out_proj.forward(y.transpose(1, 2)).MoveToOuterDisposeScope();    // (b l d_model)
    }
}
