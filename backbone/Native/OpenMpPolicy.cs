using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Ssm.Backbone.Native;

/// <summary>
/// libtorch's OpenMP workers busy-wait between parallel regions by default; the fused CPU kernels run on .NET's thread
/// pool, and on a 2-core machine the spinning workers starve them (a Vim layer measured 5-15x slower under load).
/// Unless the user chose a policy, ask OpenMP to sleep instead. This must reach the native environment before libgomp
/// initialises (when TorchSharp loads libtorch), hence setenv from the module initializer; .NET's own
/// Environment.SetEnvironmentVariable does not change the native environment on Unix.
/// </summary>
internal static class OpenMpPolicy
{
    [DllImport("libc", SetLastError = true)]
    static extern int setenv(string name, string value, int overwrite);

#pragma warning disable CA2255 // a library initialiser on purpose: it must run before libtorch loads
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Apply()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is not null) return;
        try { setenv("OMP_WAIT_POLICY", "PASSIVE", 0); }
        catch (DllNotFoundException) { }
        catch (EntryPointNotFoundException) { }
    }
}
