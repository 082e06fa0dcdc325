// A tied LM head must be one parameter, not two wrappers of one storage: AdamW keeps one set of moments per parameter
// object, so two wrappers would update the shared matrix twice per step with two different moment estimates.
using Ssm.Backbone.Models;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Backbone.Tests;

public class TiedWeightsTests
{
    static long StoragePtr(Tensor t) => (long)Ssm.Backbone.Native.TensorPointer.Of(t);

    [Fact]
    public void AFreshTiedLmHasOneParameterPerStorageAndAdamWUpdatesItOnce()
    {
        torch.manual_seed(Environment.TickCount);
        using var lm = new MambaLM(new MambaLMConfig(VocabSize: 16, DModel: 8, NLayer: 1, Mamba: new Ssm.Backbone.Layers.MambaConfig(8, DState: 4)));
        var ps = lm.parameters().ToList();
        Assert.Equal(ps.Select(StoragePtr).Distinct().Count(), ps.Select(p => p.Handle).Distinct().Count());
        Assert.Equal(StoragePtr(lm.backbone.embeddings.weight!), StoragePtr(lm.lm_head.weight!));

        // One AdamW step from zero moments moves every entry with a non-zero gradient by lr (bias-corrected first step:
        // m / sqrt(v) = sign(g)); a second wrapper of the tied matrix would move it by 2 lr.
        using var before = lm.lm_head.weight!.detach().clone();
        var opt = new AdamW(lm.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), weightDecay: 0);
        using var ids = torch.randint(0, 16, new long[] { 2, 5 });
        using (var loss = lm.call(ids).square().mean()) loss.backward();
        opt.Step(1e-2);
        using var moved = (lm.lm_head.weight!.detach() - before).abs();
        using var hasGrad = lm.lm_head.weight!.grad!.abs() > 1e-12;
        double max = moved.masked_select(hasGrad).max().item<float>();
        Assert.True(Math.Abs(max - 1e-2) < 1e-4, $"largest move {max}, want lr = 0.01");
    }

    // MixedPrecision.Apply converts module by module; a tied matrix registered in two modules must come out as one bf16
    // parameter registered in both (a bf16 run once saved a checkpoint without backbone.embeddings.weight), and a cast
    // back to fp32 must reach both owners.
    [Fact]
    public void MixedPrecisionKeepsTheTiedMatrixInBothOwnersBothWays()
    {
        torch.manual_seed(Environment.TickCount);
        using var lm = new MambaLM(new MambaLMConfig(VocabSize: 16, DModel: 8, NLayer: 1, Mamba: new Ssm.Backbone.Layers.MambaConfig(8, DState: 4)));
        using var original = lm.backbone.embeddings.weight!.detach().clone();
        MixedPrecision.Apply(lm, Precision.Bf16);
        var weights = Ssm.Backbone.IO.ModelFolder.Weights(lm);
        Assert.True(weights.ContainsKey("backbone.embeddings.weight"), "the saved weights lost the embedding");
        Assert.Equal(ScalarType.BFloat16, lm.backbone.embeddings.weight!.dtype);
        Assert.Equal(StoragePtr(lm.backbone.embeddings.weight!), StoragePtr(lm.lm_head.weight!));
        Assert.Equal(ScalarType.Float32, ((Ssm.Backbone.Layers.Mamba)lm.backbone.layers[0].mixer).A_log.dtype);
        Assert.True(lm.backbone.embeddings.weight!.to_type(ScalarType.Float32).allclose(original, rtol: 1e-2, atol: 1e-3));
        MixedPrecision.Apply(lm, Precision.Fp32);
        Assert.Equal(ScalarType.Float32, lm.backbone.embeddings.weight!.dtype);
        Assert.Equal(ScalarType.Float32, lm.lm_head.weight!.dtype);
        Assert.Equal(StoragePtr(lm.backbone.embeddings.weight!), StoragePtr(lm.lm_head.weight!));
    }

    // MoveTo converts the model module by module (TorchSharp's Module.to), which would give lm_head and the embeddings
    // two copies; afterwards they must again be one parameter object in both owners, with the converted values.
    [Fact]
    public void MoveToWithADtypeKeepsTheTiedMatrixOneParameter()
    {
        torch.manual_seed(Environment.TickCount);
        using var lm = new MambaLM(new MambaLMConfig(VocabSize: 16, DModel: 8, NLayer: 1, Mamba: new Ssm.Backbone.Layers.MambaConfig(8, DState: 4)));
        using var original = lm.backbone.embeddings.weight!.detach().to_type(ScalarType.Float64);
        MixedPrecision.MoveTo(lm, torch.CPU, ScalarType.Float64);
        Assert.Equal(ScalarType.Float64, lm.lm_head.weight!.dtype);
        Assert.Equal(StoragePtr(lm.backbone.embeddings.weight!), StoragePtr(lm.lm_head.weight!));
        var ps = lm.named_parameters().ToList();
        Assert.Equal(ps.Count, ps.Select(p => p.parameter.Handle).Distinct().Count());
        Assert.Contains(ps, p => p.name == "backbone.embeddings.weight");
        Assert.True(lm.backbone.embeddings.weight!.allclose(original, rtol: 0, atol: 0));
    }
}
