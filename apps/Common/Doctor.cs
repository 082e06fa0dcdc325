// `doctor`, shared by every CLI: what the machine offers (backend, libtorch, CUDA, fused kernels) and the backbone's
// device self-test (each op on the device vs float64 on the CPU), pass/fail per op; exit code 1 if any op fails.
using System.CommandLine;
using System.Globalization;
using Ssm.Backbone;
using Ssm.Backbone.Diagnostics;

namespace Ssm.Apps;

public static class Doctor
{
    public static Command Create()
    {
        var device = new Option<string>("--device") { Description = "device to test: cpu, cuda, cuda:N or auto", DefaultValueFactory = _ => "auto" };
        var cmd = new Command("doctor", "Show the backend, libtorch and CUDA devices, and self-test every backbone op on the device against float64 on the CPU.") { device };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            foreach (var (k, v) in SelfTest.Environment()) Console.WriteLine($"{k,-16} {v}");
            var dev = Devices.Resolve(pr.GetValue(device));
            Console.WriteLine($"{"device",-16} {dev}");
            Console.WriteLine();
            var results = SelfTest.Run(dev);
            Console.WriteLine($"{"op",-44} {"result",-6} {"rel. error",10} {"tolerance",9} {"ms",8}");
            foreach (var r in results)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{r.Op,-44} {(r.Passed ? "pass" : "FAIL"),-6} {r.RelErr,10:0.0e+0} {r.Tolerance,9:0e+0} {r.Milliseconds,8:0}") + (r.Error is null ? "" : "  " + r.Error));
            int failed = results.Count(r => !r.Passed);
            Console.WriteLine(failed == 0 ? $"all {results.Count} ops pass on {dev}" : $"{failed} of {results.Count} ops FAIL on {dev}");
            return failed == 0 ? Cli.Ok : Cli.Failed;
        }));
        return cmd;
    }
}
