// The causal depthwise convolution in front of the SSM in Mamba and Mamba-2 (causal_conv1d in mamba_ssm):
// nn.Conv1d(c, c, k, groups = c, padding = k - 1) truncated to the first l outputs, so y_t sees x_{t-k+1..t}.
// Its recurrent form keeps the last k inputs as the conv state (b, c, k), oldest first.
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

public static class CausalConv
{
    /// <summary>A depthwise Conv1d over c channels with kernel k and padding k - 1 (weight (c, 1, k)).</summary>
    public static Conv1d Create(long channels, long kernel, bool bias)
        => nn.Conv1d(channels, channels, kernel, padding: kernel - 1, groups: channels, bias: bias);

    /// <summary>x (b, c, l) -> (b, c, l), causal.</summary>
    public static Tensor Forward(Conv1d conv, Tensor x)
    {
        using var y = Causal(x, conv.weight!, conv.bias);
        return y.contiguous();
    }

    /// <summary>The first l outputs of the depthwise convolution padded by k - 1 (a view): weight (c, 1, k), bias (c) or null.</summary>
    static Tensor Causal(Tensor x, Tensor weight, Tensor? bias)
    {
        long l = x.shape[2], k = weight.shape[^1];
        using var full = nn.functional.conv1d(x, weight, bias, padding: k - 1, groups: x.shape[1]);   // (b c l+k-1)
        return full[.., .., ..(int)l];
    }

    /// <summary>
    /// silu(Forward(conv, x)), x (b, c, l) -> (b, c, l): on CUDA one fused kernel (CausalConvCudaKernel) when
    /// libssm_cuda.so is loaded, else the convolution and the SiLU as tensor ops.
    /// </summary>
    public static Tensor ForwardSilu(Conv1d conv, Tensor x) => ForwardSilu(x, conv.weight!, conv.bias);

    /// <summary>The same with the parameters given: weight (c, 1, k), bias (c) or null.</summary>
    public static Tensor ForwardSilu(Tensor x, Tensor weight, Tensor? bias)
    {
        if (CausalConvCudaKernel.Takes(x, weight)) return CausalConvCudaKernel.Apply(x, weight, bias);
        using var y = Causal(x, weight, bias);
        return nn.functional.silu(y);
    }

    /// <summary>
    /// One step: x (b, c) enters the state (b, c, k) (updated in place: shift left, append x);
    /// returns the convolution output (b, c) for this step.
    /// </summary>
    public static Tensor Step(Conv1d conv, Tensor state, Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var rolled = state.roll(-1, -1);                                         // (b c k)
        state.copy_(rolled);
        state[.., .., -1] = x.to_type(state.dtype);
        var w = conv.weight!.squeeze(1);                                          // (c k)
        var y = (state * w).sum(-1);                                             // (b c)
        if (conv.bias is not null) y = y + conv.bias;
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>The state after a whole prefix x (b, c, l): its last k inputs, left-padded with zeros.</summary>
    public static Tensor StateAfter(Tensor x, long kernel)
    {
        long l = x.shape[2];
        return l >= kernel
            ? x[.., .., (int)(l - kernel)..].contiguous()
            : nn.functional.pad(x, new long[] { kernel - l, 0 });
    }
}
