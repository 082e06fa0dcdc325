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
        long l = x.shape[2];
        using var full = conv.forward(x);                                        // (b c l+k-1)
        return full[.., .., ..(int)l].contiguous();
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
