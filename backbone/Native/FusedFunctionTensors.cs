// Device memory held by the .NET wrappers of the tensors a fused CUDA autograd function creates (the selective scan,
// the causal conv1d + SiLU). TorchSharp's custom-function machinery keeps its own native references to what it needs:
// the saved tensors (as SavedVariables, taken after forward returns), the outputs (rewrapped), and the gradients a
// backward returns. Our wrappers would otherwise hold that memory until the .NET GC finalises them: about 1 GB per
// training step of a small LM for the backward's gradients (the OOM the fused scan once hit), and a copy of every
// saved activation for the forward. So:
//   - forward registers every tensor it creates with Track, and Apply disposes them once the function node has taken
//     its references (apply has returned);
//   - backward frees its temporaries in a dispose scope and hands the gradients it returns to Keep; they are disposed
//     at the next forward or backward of any fused function (Release), when the node has long taken its references;
//     Keep also disposes TorchSharp's wrappers of the incoming gradients.
//     (Autograd runs backward on its own device thread on CUDA, where no scope of the caller is active.)
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Native;

internal static class FusedFunctionTensors
{
    static readonly System.Collections.Concurrent.ConcurrentQueue<Tensor> Returned = new();
    [ThreadStatic] static List<Tensor>? created;

    /// <summary>Runs a custom function's apply and disposes the wrappers its forward registered with <see cref="Track"/>.</summary>
    public static List<Tensor> Apply(Func<List<Tensor>> apply)
    {
        var outer = created;
        created = new List<Tensor>();
        try { return apply(); }
        finally
        {
            foreach (var t in created) t.Dispose();
            created = outer;
        }
    }

    /// <summary>Registers tensors a forward created (and returns or saves) for disposal after <see cref="Apply"/>.</summary>
    public static void Track(params Tensor[] tensors)
    {
        if (created is null) return;                                             // not under Apply: left to the GC
        foreach (var t in tensors) if (t is not null) created.Add(t);
    }

    /// <summary>Disposes the wrappers returned by earlier backward calls.</summary>
    public static void Release()
    {
        while (Returned.TryDequeue(out var t)) t.Dispose();
    }

    /// <summary>
    /// Moves the non-null gradients out of the backward's dispose scope and remembers them for <see cref="Release"/>;
    /// disposes the wrappers TorchSharp made for the incoming gradients (it never does: each would hold an
    /// activation-sized gradient until the GC ran). The backward's kernels are already enqueued on the stream, which
    /// orders any reuse of that memory after them.
    /// </summary>
    public static List<Tensor> Keep(List<Tensor> result, List<Tensor> incoming)
    {
        foreach (var t in result)
            if (t is not null) { t.MoveToOuterDisposeScope(); Returned.Enqueue(t); }
        // By reference: Tensor.Equals compares values (and throws on the null entries a backward returns).
        foreach (var g in incoming)
            if (g is not null && !g.IsInvalid && !result.Any(r => ReferenceEquals(r, g))) g.Dispose();
        return result;
    }
}
