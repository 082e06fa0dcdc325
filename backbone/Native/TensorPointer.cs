using System.Runtime.InteropServices;
using TorchSharp;

namespace Ssm.Backbone.Native;

/// <summary>The raw data pointer of a tensor (storage offset included), from TorchSharp's native shim.</summary>
internal static class TensorPointer
{
    [DllImport("LibTorchSharp")]
    static extern IntPtr THSTensor_data(IntPtr handle);

    public static IntPtr Of(torch.Tensor t) => t.numel() == 0 ? IntPtr.Zero : THSTensor_data(t.Handle);

    // The arguments of the fused kernels' native calls (short names: a call passes a dozen of them): the data
    // pointer, null for an absent or empty tensor.
    public static unsafe void* P(torch.Tensor? t) => t is null ? null : (void*)Of(t);
    public static unsafe float* F(torch.Tensor? t) => (float*)P(t);
}
