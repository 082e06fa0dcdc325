using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone;

/// <summary>The --device option of every CLI: cpu, cuda, cuda:N, or auto (CUDA when available, else the CPU).</summary>
public static class Devices
{
    /// <exception cref="ArgumentException">An unknown name, or CUDA asked for and not available.</exception>
    public static Device Resolve(string? name, TextWriter? log = null)
    {
        name = string.IsNullOrWhiteSpace(name) ? "auto" : name.Trim().ToLowerInvariant();
        if (name == "auto")
        {
            if (torch.cuda.is_available())
            {
                log?.WriteLine($"using CUDA ({torch.cuda.device_count()} device(s)); --device cpu to run on the CPU");
                return torch.CUDA;
            }
            return torch.CPU;
        }
        if (name == "cpu") return torch.CPU;
        if (name == "cuda" || name.StartsWith("cuda:", StringComparison.Ordinal))
        {
            if (!torch.cuda.is_available())
                throw new ArgumentException($"--device {name}: CUDA is not available here (this build's libtorch has no CUDA or no GPU is visible)");
            return torch.device(name);
        }
        throw new ArgumentException($"--device {name}: expected cpu, cuda, cuda:N or auto");
    }
}
