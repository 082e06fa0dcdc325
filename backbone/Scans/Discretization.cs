// Discretisation of the continuous SSM  h'(t) = A h(t) + B x(t)  with step size delta (Mamba paper, eq. 4;
// S4D paper, section 3.2). Two rules are in use and are deliberately kept apart:
//   zero-order hold (ZOH):  A_bar = exp(delta A),   B_bar = (delta A)^-1 (exp(delta A) - I) delta B = (exp(delta A) - 1) / A * B
//   Euler (first order):                            B_bar = delta B
// S4D uses ZOH for both A and B. Mamba (selective_scan_ref in mamba_ssm) uses ZOH for A but Euler for B,
// i.e. deltaB_u = delta * B * u. Every function broadcasts, works for real and complex tensors, and takes
// device and dtype from its inputs.
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Scans;

public static class Discretization
{
    /// <summary>ZOH for the (diagonal) state matrix: A_bar = exp(delta * A).</summary>
    public static Tensor ZohA(Tensor delta, Tensor A) => torch.exp(delta * A);

    /// <summary>ZOH for the input matrix with diagonal A: B_bar = (exp(delta * A) - 1) / A * B (S4D).</summary>
    public static Tensor ZohB(Tensor delta, Tensor A, Tensor B)
    {
        using var dA = delta * A;
        using var e = torch.expm1(dA);
        using var q = e / A;
        return q * B;
    }

    /// <summary>Euler step for the input matrix: B_bar = delta * B (Mamba's selective scan).</summary>
    public static Tensor EulerB(Tensor delta, Tensor B) => delta * B;

    /// <summary>
    /// The step size from its raw projection, as both mamba_ssm scans do: delta + bias, then softplus (torch's:
    /// beta 1, linear above 20) when asked, then clamped to [min, max] (Mamba-2's dt_limit; no clamp by default).
    /// <paramref name="bias"/> must broadcast against <paramref name="delta"/>.
    /// </summary>
    public static Tensor StepSize(Tensor delta, Tensor? bias, bool softplus,
        double min = double.NegativeInfinity, double max = double.PositiveInfinity)
    {
        var d = bias is null ? delta.alias() : delta + bias;
        if (softplus) d = torch.nn.functional.softplus(d);
        return double.IsNegativeInfinity(min) && double.IsPositiveInfinity(max) ? d : d.clamp(min, max);
    }
}
