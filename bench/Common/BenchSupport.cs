// What every benchmark shares: timing with warm-ups and a median, peak extra resident memory, and the machine's name.
using System.Diagnostics;
using TorchSharp;

static class Measure
{
    /// <summary>
    /// Median wall time (ms) of <paramref name="reps"/> runs after <paramref name="warmups"/> warm-ups (the first calls
    /// also pay for thread-pool start and first-touch page faults); then, in one more run, the peak growth of the
    /// resident set (MB) over a baseline taken after handing the allocator's free memory back to the OS (malloc_trim),
    /// so memory merely cached by the allocator does not hide what the run needs.
    /// </summary>
    public static (double ms, double peakMb) Run(int warmups, int reps, Action body)
    {
        for (int i = 0; i < warmups; i++) Once(body);
        var times = new List<double>();
        for (int i = 0; i < reps; i++) times.Add(Once(body));
        times.Sort();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        malloc_trim(0);
        long baseline = Status("VmRSS");
        ResetPeak();
        Once(body);
        long peak = Status("VmHWM");
        return (times[times.Count / 2], Math.Max(0, peak - baseline) / 1024.0);
    }

    public static (double ms, double peakMb) Run(int reps, Action body) => Run(2, reps, body);

    [System.Runtime.InteropServices.DllImport("libc")]
    static extern int malloc_trim(nuint pad);

    static double Once(Action body)
    {
        using var scope = torch.NewDisposeScope();
        var sw = Stopwatch.StartNew();
        body();
        return sw.Elapsed.TotalMilliseconds;
    }

    /// <summary>Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM).</summary>
    static void ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>A /proc/self/status field in kB (0 where unavailable).</summary>
    public static long Status(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(key + ":", StringComparison.Ordinal))
                    return long.Parse(line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[1]);
        }
        catch (IOException) { }
        return 0;
    }
}

static class Machine
{
    /// <summary>CPU model, cores, memory, OS.</summary>
    public static string Describe()
    {
        string cpu = "unknown CPU";
        try { cpu = File.ReadLines("/proc/cpuinfo").First(x => x.StartsWith("model name", StringComparison.Ordinal)).Split(':', 2)[1].Trim(); }
        catch (Exception e) when (e is IOException or InvalidOperationException or UnauthorizedAccessException) { }
        double memGb = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1e9;
        return $"{cpu}, {Environment.ProcessorCount} cores, {memGb:F0} GB, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}";
    }
}
