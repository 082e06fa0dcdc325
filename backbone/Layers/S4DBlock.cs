// The S4D layer of state-spaces/s4 models/s4/s4d.py (class S4D), with the recurrent step beside the forward.
//
//   u (b, l, h) --transpose--> (b, h, l) --[ K * u + D u ]--> GELU --> dropout --> Conv1d(h -> 2h, k=1) --> GLU --> (b, l, h)
//   where K = S4DKernel.Kernel(log_dt, log_A_real, A_imag, C, l)  (h, l)
//
// Shapes: b batch, l length, h = d_model (the number of independent SSMs), n = d_state (n/2 complex pairs).
// Unlike s4d.py's default (transposed=True, (B, H, L)), this layer takes and returns (b, l, h), the layout of the
// rest of the suite; it transposes internally for the convolution over l.
// The state dict equals s4d.py's, so its checkpoints load unchanged:
//   D (h), kernel.C (h, n/2, 2) = view_as_real(C), kernel.log_dt (h), kernel.log_A_real (h, n/2), kernel.A_imag (h, n/2),
//   output_linear.0.weight (2h, h, 1), output_linear.0.bias (2h).
using Ssm.Backbone.Scans;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Ssm.Backbone.Layers;

/// <summary>The constructor arguments of <see cref="S4DBlock"/> (s4d.py's S4D(d_model, d_state, dropout, **kernel_args)).</summary>
/// <param name="DModel">h, the model width (number of independent SSMs).</param>
/// <param name="DState">n, the state size (even; n/2 complex conjugate pairs are stored).</param>
/// <param name="DtMin">lower end of the log-uniform initial step size.</param>
/// <param name="DtMax">upper end of the log-uniform initial step size.</param>
/// <param name="Init">the initialisation of A (S4D-Lin as in s4d.py, or S4D-Inv).</param>
/// <param name="Dropout">dropout after the activation, mask tied over the length (s4's DropoutNd); 0 = none.</param>
public sealed record S4DConfig(
    long DModel,
    long DState = 64,
    double DtMin = 0.001,
    double DtMax = 0.1,
    S4DInit Init = S4DInit.Lin,
    double Dropout = 0.0);

/// <summary>
/// The parameters of the diagonal SSM kernel (s4d.py's S4DKernel module, registered as <c>kernel</c>):
/// C (h, n/2, 2) stored as view_as_real, log_dt (h), log_A_real (h, n/2), A_imag (h, n/2); all float32 at creation.
/// </summary>
public sealed class S4DKernelParameters : Module
{
    // Field names = the official state-dict names, field order = s4d.py's registration order. The names must match
    // exactly and the fields must stay writable: TorchSharp's Module.to(dtype / device) re-creates each parameter and
    // assigns it back to the field of the same name (a [ComponentName] alias would leave a stale field behind).
#pragma warning disable IDE1006 // naming: state-dict names
    private Parameter C;                 // (h n/2 2)  real view of complex C
    private Parameter log_dt;            // (h)
    private Parameter log_A_real;        // (h n/2)
    private Parameter A_imag;            // (h n/2)
#pragma warning restore IDE1006

    public S4DKernelParameters(long h, long n, double dtMin, double dtMax, S4DInit init) : base("S4DKernel")
    {
        if (!(dtMin > 0 && dtMax >= dtMin)) throw new ArgumentOutOfRangeException(nameof(dtMin), $"need 0 < dtMin <= dtMax, got {dtMin}, {dtMax}");

        // dt log-uniform in [dtMin, dtMax]: log_dt = U[0, 1) (log dtMax - log dtMin) + log dtMin   (h)
        using var r = torch.rand(h);                                                      // (h)
        using var span = r * (Math.Log(dtMax) - Math.Log(dtMin));                         // (h)
        var ld = span + Math.Log(dtMin);                                                  // (h)

        // C ~ complex standard normal (E|C|^2 = 1, like torch.randn(..., dtype=cfloat)): real and imaginary parts
        // N(0, 1/2), stored as view_as_real                                             (h n/2 2)
        using var cr = torch.randn(h, n / 2, 2);                                          // (h n/2 2)
        var cs = cr * Math.Sqrt(0.5);                                                     // (h n/2 2)

        // A = -exp(log_A_real) + i A_imag: real part negative by construction (S4D-Lin or S4D-Inv)
        var (lar, ai) = S4DKernel.Init(init, h, n, ScalarType.Float32);                  // (h n/2), (h n/2)

        // s4d.py registers log_dt, log_A_real and A_imag with weight_decay 0 (see S4DBlock.NoWeightDecay); C is plain.
        C = Parameter(cs);
        log_dt = Parameter(ld);
        log_A_real = Parameter(lar);
        A_imag = Parameter(ai);
        RegisterComponents();
    }

    /// <summary>log_dt (h).</summary>
    public Parameter LogDt => log_dt;

    /// <summary>log_A_real (h, n/2); Re A = -exp(log_A_real).</summary>
    public Parameter LogAReal => log_A_real;

    /// <summary>A_imag (h, n/2).</summary>
    public Parameter AImag => A_imag;

    /// <summary>C as stored: (h, n/2, 2), the real view of the complex C.</summary>
    public Parameter CReal => C;

    /// <summary>The complex C (h, n/2), a view sharing the parameter's storage (caller disposes the view).</summary>
    public Tensor ComplexC() => torch.view_as_complex(C);

    /// <summary>The SSM convolution kernel K (h, l) (s4d.py S4DKernel.forward(L)).</summary>
    public Tensor Kernel(long l)
    {
        using var cc = ComplexC();                                                        // (h n/2) complex
        return S4DKernel.Kernel(log_dt, log_A_real, A_imag, cc, l);                       // (h l)
    }

    /// <summary>(A_bar, B_bar), each (h, n/2) complex, for the recurrent mode.</summary>
    public (Tensor ABar, Tensor BBar) Discretize() => S4DKernel.Discretize(log_dt, log_A_real, A_imag);
}

/// <summary>
/// The S4D layer (s4d.py S4D): diagonal SSM convolution + D skip, GELU, dropout, then a 1x1 Conv1d to 2h and GLU.
/// Input and output are (b, l, h) (not transposed). Convolution mode in <see cref="forward"/>, recurrent mode in
/// <see cref="Step"/>; both use the same parameters.
/// </summary>
public sealed class S4DBlock : Module<Tensor, Tensor>, IRecurrentLayer
{
    /// <summary>The parameters s4d.py registers with weight decay 0 (its <c>register(..., lr)</c>).</summary>
    public static IReadOnlyList<string> NoWeightDecay { get; } = ["kernel.log_dt", "kernel.log_A_real", "kernel.A_imag"];

    // Field names = the official state-dict names, in s4d.py's registration order; writable, because
    // Module.to(dtype / device) assigns re-created parameters back to the field of the same name.
#pragma warning disable IDE1006 // naming: state-dict names
    private Parameter D;                                           // (h)
    private readonly S4DKernelParameters kernel;                   // C, log_dt, log_A_real, A_imag
    private readonly Module<Tensor, Tensor> activation;            // GELU
    private readonly Module<Tensor, Tensor> dropout;               // Dropout1d or Identity
    private readonly Sequential output_linear;                     // Conv1d(h, 2h, 1), GLU(dim=-2)
#pragma warning restore IDE1006

    /// <param name="dModel">h, the model width.</param>
    /// <param name="dState">n, the state size (even).</param>
    /// <param name="dtMin">smallest initial step size.</param>
    /// <param name="dtMax">largest initial step size.</param>
    /// <param name="init">initialisation of A: S4D-Lin (s4d.py's) or S4D-Inv.</param>
    /// <param name="dropout">dropout probability after the activation, tied over the length.</param>
    public S4DBlock(long dModel, long dState = 64, double dtMin = 0.001, double dtMax = 0.1, S4DInit init = S4DInit.Lin, double dropout = 0.0)
        : base(nameof(S4DBlock))
    {
        if (dModel < 1) throw new ArgumentOutOfRangeException(nameof(dModel), dModel, "d_model must be at least 1");
        if (dState < 2 || dState % 2 != 0) throw new ArgumentOutOfRangeException(nameof(dState), dState, "d_state must be even and at least 2");
        if (!(dropout >= 0.0 && dropout < 1.0)) throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "dropout must be in [0, 1)");

        Config = new S4DConfig(dModel, dState, dtMin, dtMax, init, dropout);
        D = Parameter(torch.randn(dModel));                                               // (h)  D ~ N(0, 1) as in s4d.py
        kernel = new S4DKernelParameters(dModel, dState, dtMin, dtMax, init);
        activation = GELU();                                                              // exact (erf) GELU, nn.GELU()
        // s4's DropoutNd ties the mask over l: one Bernoulli per (b, h), which is Dropout1d on (b, h, l).
        this.dropout = dropout > 0.0 ? Dropout1d(dropout) : Identity();
        // position-wise output transform mixing the h channels: (b h l) -> (b 2h l) -> GLU over channels -> (b h l)
        output_linear = Sequential(("0", Conv1d(dModel, 2 * dModel, 1)), ("1", GLU(dim: -2)));
        RegisterComponents();
    }

    public S4DBlock(S4DConfig config)
        : this(config.DModel, config.DState, config.DtMin, config.DtMax, config.Init, config.Dropout) { }

    public S4DConfig Config { get; }

    /// <summary>The kernel parameters (module <c>kernel</c>).</summary>
    public S4DKernelParameters KernelParameters => kernel;

    /// <summary>Convolution mode. x (b, l, h) -> y (b, l, h).</summary>
    public override Tensor forward(Tensor x)
    {
        CheckInput(x, 3, "(b, l, h)");
        long l = x.size(1);
        using var u = x.transpose(-1, -2);                                                // (b h l)
        using var k = kernel.Kernel(l);                                                   // (h l)
        using var yConv = S4DKernel.FftConv(u, k);                                        // (b h l)
        using var dCol = D.unsqueeze(-1);                                                 // (h 1)
        using var skip = u * dCol;                                                        // (b h l)  D u
        using var y = yConv + skip;                                                       // (b h l)
        using var act = activation.call(y);                                               // (b h l)
        using var dropped = dropout.call(act);                                            // (b h l)
        using var mixed = output_linear.call(dropped);                                    // (b h l)
        using var back = mixed.transpose(-1, -2);                                         // (b l h)
        return back.contiguous();                                                         // (b l h)
    }

    /// <summary>A zero state: Conv null, Ssm (b, h, n/2) complex (complex64 for float32 parameters) on the layer's device.</summary>
    public LayerState AllocateState(long batch)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "batch must be at least 1");
        var complexType = D.dtype == ScalarType.Float64 ? ScalarType.ComplexFloat64 : ScalarType.ComplexFloat32;
        var ssm = torch.zeros(batch, Config.DModel, Config.DState / 2, dtype: complexType, device: D.device); // (b h n/2)
        return new LayerState(null, ssm);
    }

    /// <summary>
    /// Recurrent mode, one token: x (b, h) -> y (b, h); replaces <paramref name="state"/>.Ssm with the new state
    /// (the old tensor is disposed). Inference path: dropout is not applied (as in eval mode).
    /// </summary>
    public Tensor Step(Tensor x, LayerState state)
    {
        CheckInput(x, 2, "(b, h)");
        var (aBar, bBar) = kernel.Discretize();                                           // (h n/2), (h n/2)
        using var ab = aBar;
        using var bb = bBar;
        using var cc = kernel.ComplexC();                                                 // (h n/2)
        var (ySsm, next) = S4DKernel.Step(state.Ssm, x, ab, bb, cc);                      // (b h), (b h n/2)
        using var ys = ySsm;
        state.Ssm.Dispose();
        state.Ssm = next;                                                                 // (b h n/2)
        using var skip = x * D;                                                           // (b h)  D u
        using var y = ys + skip;                                                          // (b h)
        using var act = activation.call(y);                                               // (b h)
        using var y3 = act.unsqueeze(-1);                                                 // (b h 1)
        using var mixed = output_linear.call(y3);                                         // (b h 1)
        return mixed.squeeze(-1);                                                         // (b h)
    }

    private void CheckInput(Tensor x, int dims, string expected)
    {
        if (x.dim() != dims || x.size(-1) != Config.DModel)
            throw new ArgumentException($"S4DBlock expects {expected} with h = {Config.DModel}, got [{string.Join(", ", x.shape)}]", nameof(x));
    }
}
