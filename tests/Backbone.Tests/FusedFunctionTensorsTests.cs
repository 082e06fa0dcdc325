using Ssm.Backbone.Native;
using TorchSharp;
using static TorchSharp.torch;

namespace Backbone.Tests;

// The bookkeeping of the fused CUDA autograd functions' tensor wrappers (FusedFunctionTensors), on plain CPU tensors.
public class FusedFunctionTensorsTests
{
    [Fact]
    public void KeepDisposesIncomingButNotReturnedAndHandlesNullEntries()
    {
        var passedThrough = torch.ones(3);
        var incoming = new List<Tensor> { torch.ones(4), passedThrough, null! };
        List<Tensor> result;
        using (var scope = torch.NewDisposeScope())
        {
            var grad = torch.full(2, 5.0f);
            result = FusedFunctionTensors.Keep(new List<Tensor> { grad, null!, passedThrough }, incoming);
        }
        Assert.True(incoming[0].IsInvalid);                        // TorchSharp's wrapper of an incoming gradient: freed
        Assert.False(passedThrough.IsInvalid);                     // returned as a gradient: kept
        Assert.False(result[0].IsInvalid);                         // moved out of the backward's scope
        Assert.Equal(5.0f, result[0][0].item<float>());
        FusedFunctionTensors.Release();                            // the next fused call frees the returned wrappers
        Assert.True(result[0].IsInvalid);
        Assert.True(passedThrough.IsInvalid);
    }

    [Fact]
    public void ApplyDisposesWhatForwardTrackedOnly()
    {
        var kept = torch.ones(2);
        Tensor? tracked = null;
        var outs = FusedFunctionTensors.Apply(() =>
        {
            tracked = torch.zeros(2);
            FusedFunctionTensors.Track(tracked);
            return new List<Tensor> { kept };
        });
        Assert.True(tracked!.IsInvalid);
        Assert.False(outs[0].IsInvalid);
        FusedFunctionTensors.Track(torch.zeros(1));                // outside Apply: ignored, no throw
    }
}
