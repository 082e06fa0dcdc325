// The pre-norm residual block around any mixer (HF MambaBlock; mamba_ssm's Block with fused add+norm):
//   out = residual + mixer(norm(x)),   residual = x kept in float32 when residualInFp32 (the references do,
//   so that bf16 activations do not accumulate rounding along the depth of the residual stream).
// Parameter names: norm.weight, mixer.* (as in the HF state dicts).
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

public sealed class ResidualBlock : nn.Module<Tensor, Tensor>, IPrefillLayer
{
    public RMSNorm norm;
    public nn.Module<Tensor, Tensor> mixer;
    public bool ResidualInFp32 { get; }

    public ResidualBlock(nn.Module<Tensor, Tensor> mixer, long dModel, double eps = 1e-5, bool residualInFp32 = true)
        : base(nameof(ResidualBlock))
    {
        this.mixer = mixer;
        norm = new RMSNorm(dModel, eps);
        ResidualInFp32 = residualInFp32;
        RegisterComponents();
    }

    /// <summary>x (b, l, d_model) -> (b, l, d_model) (float32 when residualInFp32).</summary>
    public override Tensor forward(Tensor x) => Forward(x, null);

    /// <summary>Forward; a fresh <paramref name="state"/> receives the mixer's state after x (prefill).</summary>
    public Tensor Forward(Tensor x, LayerState? state)
    {
        using var scope = torch.NewDisposeScope();
        var h = norm.forward(x.to_type(norm.weight.dtype));
        var y = state is null ? mixer.forward(h) : Prefill.Forward(h, state);
        var residual = ResidualInFp32 ? x.to_type(ScalarType.Float32) : x;
        return (residual + y).MoveToOuterDisposeScope();
    }

    IRecurrentLayer Recurrent => mixer as IRecurrentLayer
        ?? throw new NotSupportedException($"{mixer.GetType().Name} has no recurrent mode");

    IPrefillLayer Prefill => mixer as IPrefillLayer
        ?? throw new NotSupportedException($"{mixer.GetType().Name} cannot hand over its state after a forward pass");

    public LayerState AllocateState(long batch) => Recurrent.AllocateState(batch);

    /// <summary>One token: x (b, d_model) -> (b, d_model).</summary>
    public Tensor Step(Tensor x, LayerState state)
    {
        using var scope = torch.NewDisposeScope();
        var y = Recurrent.Step(norm.forward(x.to_type(norm.weight.dtype)), state);
        var residual = ResidualInFp32 ? x.to_type(ScalarType.Float32) : x;
        return (residual + y).MoveToOuterDisposeScope();
    }
}
