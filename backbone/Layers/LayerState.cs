// The explicit inference state of one recurrent layer (mamba_simple.py: allocate_inference_cache / step).
// Shapes (b = batch, d_inner = expanded width, d_conv = conv width, n = state size, h = heads, p = head dim):
//   Mamba:   Conv (b, d_inner, d_conv)           Ssm (b, d_inner, n)             float32 (float64 for a float64 model)
//   Mamba2:  Conv (b, d_inner + 2 g n, d_conv)   Ssm (b, h, p, n)                float32 (float64 for a float64 model)
//   S4D:     Conv null                            Ssm (b, d_model, n/2) complex64 (complex128 for a float64 model)
// The SSM state stays float32 under bf16/fp16 weights, as the references keep it; a float64 model (the tests' oracle
// runs) steps in float64 so that step == forward holds to float64 rounding.
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

public sealed class LayerState : IDisposable
{
    public LayerState(Tensor? conv, Tensor ssm) { Conv = conv; Ssm = ssm; }

    /// <summary>The last d_conv inputs of the causal depthwise convolution (oldest first), or null.</summary>
    public Tensor? Conv { get; set; }

    /// <summary>The SSM hidden state h.</summary>
    public Tensor Ssm { get; set; }

    public void Dispose() { Conv?.Dispose(); Ssm.Dispose(); }
}

/// <summary>A layer that can run one time step at a time with constant memory (generation, streaming).</summary>
public interface IRecurrentLayer
{
    /// <summary>A zero state for a batch of <paramref name="batch"/> sequences on the layer's device.</summary>
    LayerState AllocateState(long batch);

    /// <summary>One step: x (b, d_model) -> y (b, d_model); updates <paramref name="state"/> in place.</summary>
    Tensor Step(Tensor x, LayerState state);
}

/// <summary>
/// Replaces the products of a layer's projections in its recurrent step (decode weights kept in bf16/int8, custom
/// kernels): the step logic stays in the layer, only x W^T (+ b) is computed elsewhere.
/// </summary>
public interface IStepProjection
{
    /// <summary>x (b, in) -> x W^T (+ bias when <paramref name="withBias"/>) for this layer, or null to use the layer itself.</summary>
    Tensor? Project(TorchSharp.Modules.Linear layer, Tensor x, bool withBias);
}

/// <summary>A recurrent layer whose full-sequence forward can also hand over its final state (prefill, then step).</summary>
public interface IPrefillLayer : IRecurrentLayer
{
    /// <summary>x (b, l, d_model) -> (b, l, d_model); a freshly allocated <paramref name="state"/> receives the state after x.</summary>
    Tensor Forward(Tensor x, LayerState? state);
}
