// What every ssm-* command shares: user errors become one line on stderr and a non-zero exit (never a stack trace),
// Ctrl+C asks long work to stop cleanly (the trainer checkpoints), and a few option parsers.
using System.Globalization;

namespace Ssm.Apps;

public static class Cli
{
    /// <summary>Exit codes: 0 ok, 1 a failure in the input or the run, 2 bad usage, 70 libtorch failed (out of memory, CUDA), 130 interrupted.</summary>
    public const int Ok = 0, Failed = 1, Usage = 2, Native = 70, Interrupted = 130;

    static readonly CancellationTokenSource Cancel = new();
    static bool _hooked;

    /// <summary>Cancelled on the first Ctrl+C; a second one kills the process as usual.</summary>
    public static CancellationToken Interrupt
    {
        get
        {
            if (!_hooked)
            {
                _hooked = true;
                Console.CancelKeyPress += (_, e) =>
                {
                    if (Cancel.IsCancellationRequested) return;
                    e.Cancel = true;
                    Console.Error.WriteLine("\ninterrupt: finishing the current step (Ctrl+C again to kill)");
                    Cancel.Cancel();
                };
            }
            return Cancel.Token;
        }
    }

    /// <summary>
    /// Parses and runs an ssm-* command line: a bare call shows the help (exit 0); a line that does not parse (an
    /// unknown command or option, a missing argument, a value of the wrong type) is bad usage, said in one line on
    /// stderr with exit 2 instead of System.CommandLine's full help and errors; --help works as usual.
    /// </summary>
    public static int Invoke(System.CommandLine.RootCommand root, string[] args) =>
        Parse(root, args, Console.Error) is { } parsed ? parsed.Invoke() : Usage;

    /// <summary><see cref="Invoke"/> with the output streams of <paramref name="config"/> (in-process use and tests).</summary>
    public static Task<int> InvokeAsync(System.CommandLine.RootCommand root, string[] args, System.CommandLine.InvocationConfiguration config) =>
        Parse(root, args, config.Error) is { } parsed ? parsed.InvokeAsync(config) : Task.FromResult(Usage);

    static System.CommandLine.ParseResult? Parse(System.CommandLine.RootCommand root, string[] args, TextWriter error)
    {
        var parsed = root.Parse(args.Length == 0 ? ["--help"] : args);
        if (parsed.Errors.Count == 0 || parsed.Action is System.CommandLine.Help.HelpAction) return parsed;
        // The last error is the most specific: "Unrecognized command or argument 'x'" follows "Required command was not
        // provided" when the command is misspelt.
        error.WriteLine($"error: {OneLine(parsed.Errors[^1].Message)} (see --help)");
        return null;
    }

    /// <summary>Runs a command body, turning the exceptions a user can cause into "error: ..." and exit code 1.</summary>
    public static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (UsageException e) { Console.Error.WriteLine($"error: {e.Message}"); return Usage; }
        catch (OperationCanceledException) { Console.Error.WriteLine("interrupted"); return Interrupted; }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException
                                  or NotSupportedException or FormatException or System.Text.Json.JsonException)
        {
            return Report(OneLine(e.Message), e, Failed);
        }
        // A run that cannot go on (the trainer's "loss is NaN", a model without a needed feature): the message says why.
        catch (InvalidOperationException e) when (e is not ObjectDisposedException)
        {
            return Report(OneLine(e.Message), e, Failed);
        }
        // libtorch's errors carry a C++ back trace after the first line: show the reason only.
        catch (System.Runtime.InteropServices.ExternalException e)
        {
            string first = e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? "";
            return Report($"{(first.Length > 0 ? first : "libtorch failed")} (libtorch)", e, Native);
        }
    }

    static int Report(string message, Exception e, int code)
    {
        Console.Error.WriteLine($"error: {message}");
        if (Environment.GetEnvironmentVariable("SSM_DEBUG") == "1") Console.Error.WriteLine(e);
        return code;
    }

    static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();

    /// <summary>The --device option of the ssm-* CLIs (resolved by Ssm.Backbone.Devices.Resolve).</summary>
    public static System.CommandLine.Option<string> DeviceOption() => new("--device")
    {
        Description = "cpu, cuda, cuda:N or auto (CUDA when available)",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary>The --precision option of the training commands (<paramref name="keptFp32"/>: what stays float32).</summary>
    public static System.CommandLine.Option<string> PrecisionOption(string keptFp32 = "fp32 SSM parameters and master weights") => new("--precision")
    {
        Description = $"fp32 or bf16 (bf16 compute, {keptFp32})",
        DefaultValueFactory = _ => "fp32",
    };

    /// <summary>A --precision value; anything but fp32/bf16 is a usage error.</summary>
    public static Ssm.Backbone.Training.Precision ParsePrecision(string? value)
    {
        try { return Ssm.Backbone.Training.MixedPrecision.Parse(value); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    /// <summary>The --json switch: <paramref name="what"/> printed as JSON on stdout.</summary>
    public static System.CommandLine.Option<bool> JsonOption(string what) => new("--json") { Description = $"print {what} as JSON on stdout" };

    /// <summary>--set FIELD=VALUE pairs (dashes in FIELD read as underscores); <paramref name="example"/> is shown on a bad one.</summary>
    public static IEnumerable<KeyValuePair<string, string>> ParseSets(string[]? sets, string example)
    {
        foreach (var s in sets ?? [])
        {
            int eq = s.IndexOf('=');
            if (eq <= 0) throw new UsageException($"--set '{s}': expected FIELD=VALUE (e.g. --set {example})");
            yield return new(s[..eq].Trim().Replace('-', '_'), s[(eq + 1)..].Trim());
        }
    }

    /// <summary>Creates the folder that will hold <paramref name="path"/>.</summary>
    public static void CreateParent(string path)
    {
        string? parent = Path.GetDirectoryName(Path.GetFullPath(path));
        if (parent is not null) Directory.CreateDirectory(parent);
    }

    /// <summary>"1,2,3" -> ids; a clear usage error otherwise.</summary>
    public static int[] ParseIds(string text, string option = "--ids")
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new UsageException($"{option}: no ids given");
        return parts.Select(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v
            : throw new UsageException($"{option}: '{p}' is not a non-negative integer")).ToArray();
    }

    /// <summary>Arguments that look like options but matched none are typos, not file names.</summary>
    public static void RejectOptionLike(IEnumerable<string> args)
    {
        foreach (var a in args)
            if (a.StartsWith('-') && a != "-") throw new UsageException($"unknown option '{a}' (see --help)");
    }
}

/// <summary>A mistake in how the command was called (exit code 2).</summary>
public sealed class UsageException(string message) : Exception(message);
