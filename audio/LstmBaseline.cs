// An LSTM language model over quantised audio samples: the recurrent baseline that SaShiMi's NLL is compared with
// (the SaShiMi paper's SC09 and piano tables compare against SampleRNN and WaveNet; a plain sample-level LSTM of the same
// parameter count is the simplest recurrent model of the kind, and the one we can train the same way on the same split).
//
// Glossary:
//   b   batch size           l   number of samples (time steps)
//   V   number of classes (256 for 8-bit mu-law)
//   E   embedding width      H   LSTM hidden width      k   number of stacked LSTM layers
//
//   ids (b l) -> encoder: Embedding(V, E) -> (b l E) -> lstm: k x LSTM(H), batch first -> (b l H)
//             -> decoder: Linear(H, V) -> logits (b l V)
// Like Sashimi, logits[:, t] predict sample t + 1 from samples <= t (the caller shifts; see AudioModel.Score).
//
// Recurrent mode (generation): AllocateState(b) gives zero (h, c), each (k, b, H); Step(ids (b)) applies the LSTM
// cell equations to the same parameters, one sample at a time (tested equal to the forward).
// Training (autograd on) runs nn.LSTM (cuDNN on a GPU); scoring on the CPU without autograd runs the same equations
// written out, because libtorch's own no-autograd CPU LSTM was measured wrong for some widths (see forward).
// State-dict names: encoder.weight, lstm.weight_ih_l{i}, lstm.weight_hh_l{i}, lstm.bias_ih_l{i}, lstm.bias_hh_l{i}
// (PyTorch's nn.LSTM names), decoder.weight, decoder.bias.
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Ssm.Audio;

/// <summary>The constructor arguments of <see cref="LstmBaseline"/>.</summary>
public sealed record LstmBaselineConfig
{
    /// <summary>V, the number of input and output classes (256 for 8-bit mu-law).</summary>
    public long Classes { get; init; } = 256;

    /// <summary>E, the width of the class embedding.</summary>
    public long EmbeddingDim { get; init; } = 256;

    /// <summary>H, the hidden (and cell) width of every LSTM layer.</summary>
    public long HiddenSize { get; init; } = 588;

    /// <summary>k, the number of stacked LSTM layers.</summary>
    public long NumLayers { get; init; } = 2;

    /// <summary>Dropout between stacked LSTM layers (nn.LSTM's dropout; training only).</summary>
    public double Dropout { get; init; }

    /// <summary>
    /// The baseline for the default SaShiMi: 2 layers of 588 units over a 256-wide embedding, 4.98 M parameters
    /// (SashimiConfig.Default has 4.99 M): 256 E + 4H(E + H + 2) + 4H(2H + 2) + (H V + V).
    /// </summary>
    public static LstmBaselineConfig Default { get; } = new();

    /// <summary>The baseline for SashimiConfig.Small: 2 layers of 361 units, 2.10 M parameters (Small has 2.10 M) (same formula).</summary>
    public static LstmBaselineConfig Small { get; } = new() { HiddenSize = 361 };

    /// <summary>A few thousand parameters for tests.</summary>
    public static LstmBaselineConfig Tiny { get; } = new() { EmbeddingDim = 8, HiddenSize = 16, NumLayers = 2 };

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first invalid option.</summary>
    public LstmBaselineConfig Validate()
    {
        static void Need(bool ok, string option, object value, string rule)
        {
            if (!ok) throw new ArgumentException($"LstmBaselineConfig.{option} = {value}: {rule}", option);
        }
        Need(Classes >= 2, nameof(Classes), Classes, "must be at least 2");
        Need(EmbeddingDim >= 1, nameof(EmbeddingDim), EmbeddingDim, "must be at least 1");
        Need(HiddenSize >= 1, nameof(HiddenSize), HiddenSize, "must be at least 1");
        Need(NumLayers >= 1, nameof(NumLayers), NumLayers, "must be at least 1");
        Need(Dropout >= 0.0 && Dropout < 1.0, nameof(Dropout), Dropout, "must be in [0, 1)");
        return this;
    }
}

/// <summary>The recurrent state of an <see cref="LstmBaseline"/>: hidden and cell states, each (k, b, H).</summary>
public sealed class LstmBaselineState : IDisposable
{
    internal LstmBaselineState(Tensor h, Tensor c, long batch) { H = h; C = c; Batch = batch; }

    /// <summary>Hidden state (k, b, H).</summary>
    public Tensor H { get; internal set; }

    /// <summary>Cell state (k, b, H).</summary>
    public Tensor C { get; internal set; }

    /// <summary>b, the batch this state was allocated for.</summary>
    public long Batch { get; }

    /// <summary>Samples consumed so far.</summary>
    public long Steps { get; internal set; }

    public void Dispose() { H.Dispose(); C.Dispose(); }
}

/// <summary>
/// Embedding -> stacked nn.LSTM -> Linear over class ids: (b, l) int64 -> (b, l, V) logits, logits[:, t] predicting
/// sample t + 1. <see cref="Step"/> is the same network one sample at a time.
/// </summary>
public sealed class LstmBaseline : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // naming: state-dict names
    public Embedding encoder;                                                     // (V, E)
    public LSTM lstm;                                                             // k layers, batch first
    public Linear decoder;                                                        // (V, H)
#pragma warning restore IDE1006

    public LstmBaseline(LstmBaselineConfig config) : base(nameof(LstmBaseline))
    {
        Config = config.Validate();
        encoder = Embedding(config.Classes, config.EmbeddingDim);
        // nn.LSTM's default initialisation U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as in PyTorch.
        lstm = LSTM(config.EmbeddingDim, config.HiddenSize, config.NumLayers, batchFirst: true, dropout: config.Dropout);
        decoder = Linear(config.HiddenSize, config.Classes);
        RegisterComponents();
    }

    public LstmBaselineConfig Config { get; }

    /// <summary>
    /// ids (b, l) int64 in [0, V) -> logits (b, l, V), from a zero state. With autograd on (training), and on any device
    /// but the CPU, this is nn.LSTM. Without autograd on the CPU (scoring), the layers run as <see cref="Recurrence"/>:
    /// libtorch 2.10's CPU LSTM without autograd takes another kernel path that was measured wrong on this project's
    /// machine for some widths (logits off by 0.09 at H = 16 and by 2.4e-3 at H = 588 against float64, while with
    /// autograd on it agrees to 5e-8; H = 24, 32, 64 agree either way); a test pins the two paths together.
    /// </summary>
    public override Tensor forward(Tensor ids)
    {
        CheckIds(ids, 2, "(b, l)");
        if (ids.size(1) < 1) throw new ArgumentException("LstmBaseline: the sequence is empty (l = 0)", nameof(ids));
        using var scope = torch.NewDisposeScope();
        var x = encoder.forward(ids);                                             // (b l E)
        Tensor y;
        if (!torch.is_grad_enabled() && ids.device_type == DeviceType.CPU)
        {
            var p = Parameters();
            for (long k = 0; k < Config.NumLayers; k++) x = Recurrence(x, p, k);  // (b l H)
            y = x;
        }
        else
        {
            (y, _, _) = lstm.forward(x, null);                                    // (b l H)
        }
        return Ssm.Backbone.Training.MixedPrecision.Widen(decoder.forward(y)).MoveToOuterDisposeScope(); // (b l V), float32 under mixed precision
    }

    /// <summary>nn.LSTM's parameters by name (looked up on each call: Module.to replaces the tensors).</summary>
    private Dictionary<string, Tensor> Parameters() => lstm.named_parameters().ToDictionary(t => t.name, t => (Tensor)t.parameter);

    /// <summary>
    /// One LSTM layer over a sequence from a zero state, written out: the input projection of every step as one matmul,
    /// then the recurrence step by step (<see cref="Cell"/>). x (b, l, in) -> h (b, l, H).
    /// </summary>
    private Tensor Recurrence(Tensor x, Dictionary<string, Tensor> p, long k)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.size(0), l = x.size(1), H = Config.HiddenSize;
        var xin = nn.functional.linear(x, p[$"weight_ih_l{k}"], p[$"bias_ih_l{k}"]);           // (b l 4H)
        var whhT = p[$"weight_hh_l{k}"].t();                                                    // (H 4H)
        var bhh = p[$"bias_hh_l{k}"];                                                           // (4H)
        var outputs = torch.empty(new[] { b, l, H }, x.dtype, x.device);                       // (b l H)
        var h = torch.zeros(new[] { b, H }, x.dtype, x.device).DetachFromDisposeScope();       // (b H)
        var c = torch.zeros(new[] { b, H }, x.dtype, x.device).DetachFromDisposeScope();       // (b H)
        try
        {
            for (long t = 0; t < l; t++)
            {
                using var step = torch.NewDisposeScope();
                var gates = torch.addmm(bhh, h, whhT, 1, 1).add_(xin.select(1, t));                // (b 4H)
                var (hn, cn) = Cell(gates, c);
                outputs.select(1, t).copy_(hn);
                h.Dispose(); c.Dispose();
                h = hn.DetachFromDisposeScope();
                c = cn.DetachFromDisposeScope();
            }
        }
        finally { h.Dispose(); c.Dispose(); }
        return outputs.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// PyTorch's LSTM cell from the summed pre-activations (gates in nn.LSTM's order i, f, g, o), gates (b, 4H) and
    /// c (b, H): c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c').
    /// </summary>
    private static (Tensor H, Tensor C) Cell(Tensor gates, Tensor c)
    {
        var g = gates.chunk(4, 1);                                                // i, f, g, o: (b H) each
        var cn = g[1].sigmoid() * c + g[0].sigmoid() * g[2].tanh();               // (b H)
        var hn = g[3].sigmoid() * cn.tanh();                                      // (b H)
        return (hn, cn);
    }

    /// <summary>Zero hidden and cell states for <paramref name="batch"/> sequences, on the parameters' device and dtype.</summary>
    public LstmBaselineState AllocateState(long batch)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "batch must be at least 1");
        var w = decoder.weight!;
        var h = torch.zeros(new[] { Config.NumLayers, batch, Config.HiddenSize }, w.dtype, w.device).DetachFromDisposeScope();  // (k b H)
        var c = torch.zeros(new[] { Config.NumLayers, batch, Config.HiddenSize }, w.dtype, w.device).DetachFromDisposeScope();  // (k b H)
        return new LstmBaselineState(h, c, batch);
    }

    /// <summary>
    /// One sample: ids (b) int64 -> logits (b, V) for the next sample; replaces the state's tensors. Inference only
    /// (no autograd, no dropout). The cell is written out (<see cref="Cell"/>, PyTorch's LSTM equations) rather than
    /// calling nn.LSTM on a length-1 sequence: for the default size at batch 1 on a busy 2-core CPU, nn.LSTM measured
    /// 4 to 60 ms per call (1 or 2 threads; a large fixed cost per call in libtorch's CPU RNN path), these few matmuls
    /// 1.5 to 2.8 ms (and see <see cref="forward"/> on that path's accuracy).
    /// </summary>
    public Tensor Step(Tensor ids, LstmBaselineState state)
    {
        CheckIds(ids, 1, "(b)");
        if (ids.size(0) != state.Batch)
            throw new ArgumentException($"LstmBaseline.Step: ids has batch {ids.size(0)}, the state was allocated for {state.Batch}", nameof(ids));
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var p = Parameters();
        var x = encoder.forward(ids);                                             // (b E)
        var hs = new Tensor[Config.NumLayers];
        var cs = new Tensor[Config.NumLayers];
        for (long k = 0; k < Config.NumLayers; k++)
        {
            var gates = nn.functional.linear(x, p[$"weight_ih_l{k}"], p[$"bias_ih_l{k}"])
                      + nn.functional.linear(state.H[k], p[$"weight_hh_l{k}"], p[$"bias_hh_l{k}"]);   // (b 4H)
            (hs[k], cs[k]) = Cell(gates, state.C[k]);                             // (b H), (b H)
            x = hs[k];                                                            // next layer's input (no dropout at inference)
        }
        state.H.Dispose();
        state.C.Dispose();
        state.H = torch.stack(hs).DetachFromDisposeScope();                       // (k b H)
        state.C = torch.stack(cs).DetachFromDisposeScope();                       // (k b H)
        state.Steps++;
        return Ssm.Backbone.Training.MixedPrecision.Widen(decoder.forward(x)).MoveToOuterDisposeScope(); // (b V), float32 under mixed precision
    }

    private void CheckIds(Tensor ids, int dims, string expected)
    {
        if (ids.dim() != dims || ids.dtype != ScalarType.Int64)
            throw new ArgumentException($"LstmBaseline expects class ids {expected} of int64, got {ids.dtype} [{string.Join(", ", ids.shape)}]", nameof(ids));
    }
}
