// The S4D layer of state-spaces/s4 models/s4/s4d.py (class S4D), with the recurrent step beside the forward.
//
//   u (b, l, h) --transpose--> (b, h, l) --[ K * u + D u ]--> GELU --> dropout --> Conv1d(h -> 2h, k=1) --> GLU --> (b, l, h)
//   where K = S4DKernel.Kernel(log_dt, log_A_real, A_imag, C, l)  (h, l)
// The 1x1 Conv1d is a position-wise linear map; it is applied as F.linear with weight.squeeze(-1) (2h, h) on the
// (b, l, h) layout (the same math; libtorch's conv path prints "Could not initialize NNPACK!" on every call on CPUs
// without NNPACK support, and the linear needs no transposes). The Conv1d module stays, so the state dict is s4d.py's.
//
// Recurrent mode: AllocateState also discretises the parameters once (A_bar, B_bar, 2C; S4DKernel.Discretize) and
// Step reuses that cache, so a step is a handful of small ops. The cache is rebuilt by every AllocateState and
// whenever a parameter tensor is replaced (Module.to(dtype / device)); parameters changed in place (an optimizer
// step, load_state_dict) are NOT seen: the parameters must not change while a state is in use (allocate a new state,
// or call ResetStepCache, after changing them). Step is inference only: it runs without autograd.
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

    // The discretisation for Step (not a module field: RegisterComponents must not see it). Null until the first
    // AllocateState / Step; rebuilt by AllocateState, ResetStepCache, or when a parameter tensor is replaced.
    private StepCache? stepCache;

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
        using var y = torch.addcmul(yConv, u, dCol, 1);                                   // (b h l)  K * u + D u
        using var act = activation.call(y);                                               // (b h l)
        using var dropped = dropout.call(act);                                            // (b h l)  mask tied over l
        using var back = dropped.transpose(-1, -2);                                       // (b l h)
        return OutputLinear(back);                                                        // (b l h)
    }

    /// <summary>
    /// output_linear on the (..., h) layout: GLU( z W^T + bias ) over the last dim, W = output_linear.0.weight
    /// squeezed to (2h, h); the same as s4d.py's Conv1d(h, 2h, 1) + GLU(dim=-2) on (..., h, l).
    /// </summary>
    private Tensor OutputLinear(Tensor z)
    {
        var conv = (Conv1d)output_linear[0];
        using var w = conv.weight!.squeeze(-1);                                           // (2h h)
        using var mixed = nn.functional.linear(z, w, conv.bias);                          // (... 2h)
        return nn.functional.glu(mixed, -1);                                              // (... h)  first half * sigmoid(second)
    }

    /// <summary>
    /// A zero state: Conv null, Ssm (b, h, n/2) complex (complex64 for float32 parameters, complex128 for float64) on
    /// the layer's device. Also (re)computes the discretisation that <see cref="Step"/> reuses, from the current
    /// parameters: they must not change while the state is in use.
    /// </summary>
    public LayerState AllocateState(long batch)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "batch must be at least 1");
        ResetStepCache();
        var complexType = D.dtype == ScalarType.Float64 ? ScalarType.ComplexFloat64 : ScalarType.ComplexFloat32;
        var ssm = torch.zeros(batch, Config.DModel, Config.DState / 2, dtype: complexType, device: D.device); // (b h n/2)
        return new LayerState(null, ssm);
    }

    /// <summary>Drops the cached discretisation; the next <see cref="Step"/> recomputes it from the current parameters.</summary>
    public void ResetStepCache()
    {
        stepCache?.Dispose();
        stepCache = null;
    }

    /// <summary>
    /// Recurrent mode, one token: x (b, h) -> y (b, h); updates <paramref name="state"/>.Ssm in place (the same tensor
    /// before and after), x &lt;- A_bar x + B_bar u. Inference only: runs without autograd, dropout is not applied (as
    /// in eval mode), and A_bar, B_bar come from the discretisation cached by <see cref="AllocateState"/>.
    /// </summary>
    public Tensor Step(Tensor x, LayerState state)
    {
        CheckInput(x, 2, "(b, h)");
        var ssm = state.Ssm;
        if (ssm.dim() != 3 || ssm.size(1) != Config.DModel || ssm.size(2) != Config.DState / 2 || ssm.size(0) != x.size(0) || !ssm.is_complex())
            throw new ArgumentException($"S4DBlock state must be complex (b, h, n/2) = ({x.size(0)}, {Config.DModel}, {Config.DState / 2}), got {ssm.dtype} [{string.Join(", ", ssm.shape)}]", nameof(state));
        using var noGrad = torch.no_grad();
        var cache = CurrentStepCache();
        using var ySsm = S4DKernel.StepInPlace(ssm, x, cache.ABar, cache.BBar, cache.C2); // (b h)     2 Re(C x')
        using var y = torch.addcmul(ySsm, x, D, 1);                                       // (b h)     + D u
        using var act = activation.call(y);                                               // (b h)
        return OutputLinear(act);                                                         // (b h)
    }

    /// <summary>The cached discretisation, rebuilt when missing or when a parameter tensor was replaced (to(dtype/device)).</summary>
    private StepCache CurrentStepCache()
    {
        if (stepCache is null || !stepCache.Matches(kernel))
        {
            stepCache?.Dispose();
            stepCache = StepCache.Build(kernel);
        }
        return stepCache;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) ResetStepCache();
        base.Dispose(disposing);
    }

    /// <summary>A_bar, B_bar and 2C (each (h, n/2) complex, detached) of one set of kernel parameters.</summary>
    private sealed class StepCache : IDisposable
    {
        private readonly Tensor[] source;                                                  // the parameters it was built from

        private StepCache(Tensor aBar, Tensor bBar, Tensor c2, Tensor[] source)
        {
            ABar = aBar; BBar = bBar; C2 = c2; this.source = source;
        }

        public Tensor ABar { get; }
        public Tensor BBar { get; }
        public Tensor C2 { get; }

        public static StepCache Build(S4DKernelParameters p)
        {
            using var noGrad = torch.no_grad();
            using var scope = torch.NewDisposeScope();
            var (aBar, bBar) = p.Discretize();                                            // (h n/2), (h n/2)
            var c2 = p.ComplexC() * 2.0;                                                  // (h n/2)  2 C: the conjugate half
            return new StepCache(aBar.DetachFromDisposeScope(), bBar.DetachFromDisposeScope(), c2.DetachFromDisposeScope(),
                [p.LogDt, p.LogAReal, p.AImag, p.CReal]);
        }

        /// <summary>True while the module still holds the same parameter tensors (to(dtype / device) replaces them).</summary>
        public bool Matches(S4DKernelParameters p) =>
            ReferenceEquals(source[0], p.LogDt) && ReferenceEquals(source[1], p.LogAReal)
            && ReferenceEquals(source[2], p.AImag) && ReferenceEquals(source[3], p.CReal);

        public void Dispose() { ABar.Dispose(); BBar.Dispose(); C2.Dispose(); }
    }

    private void CheckInput(Tensor x, int dims, string expected)
    {
        if (x.dim() != dims || x.size(-1) != Config.DModel)
            throw new ArgumentException($"S4DBlock expects {expected} with h = {Config.DModel}, got [{string.Join(", ", x.shape)}]", nameof(x));
    }
}
