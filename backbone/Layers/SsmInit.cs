// Initialisation choices shared by the Mamba mixers (mamba_simple.py, mamba2.py).
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

public static class SsmInit
{
    /// <summary>
    /// The dt bias: softplus^-1(dt) with dt log-uniform in [dtMin, dtMax], floored at dtFloor, so that the initial
    /// Δ = softplus(bias) lies in the range the S4 papers found to work. softplus^-1(dt) = dt + log(-expm1(-dt)).
    /// </summary>
    public static Tensor DtBias(long count, double dtMin, double dtMax, double dtFloor)
    {
        using var scope = torch.NewDisposeScope();
        var dt = torch.exp(torch.rand(count) * (Math.Log(dtMax) - Math.Log(dtMin)) + Math.Log(dtMin)).clamp_min(dtFloor);
        return (dt + torch.log(-torch.expm1(-dt))).MoveToOuterDisposeScope();
    }
}
