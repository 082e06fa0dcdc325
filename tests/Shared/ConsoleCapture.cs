// Running a CLI in-process with the process-wide Console redirected, and the checks every CLI test shares. Linked into
// each test project that runs a CLI; the tests that use it join ConsoleRedirectCollection so that no test writing to
// the console runs beside them.
namespace Ssm.Tests;

/// <summary>The tests redirect the process-wide Console, so they must not run beside tests that write to it.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ConsoleRedirectCollection
{
    public const string Name = "console redirected";
}

public static class ConsoleCapture
{
    /// <summary>Runs <paramref name="cli"/> with Console.Out and Console.Error captured: (exit code, stdout, stderr).</summary>
    public static (int Code, string Out, string Err) Run(Func<int> cli)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var o = new StringWriter();
        var e = new StringWriter();
        Console.SetOut(o);
        Console.SetError(e);
        try { return (cli(), o.ToString(), e.ToString()); }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
    }

    /// <summary>Non-empty trimmed lines.</summary>
    public static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>Asserts a failed run: non-zero exit, exactly one "error:" line on stderr, no stack trace; returns that line.</summary>
    public static string AssertOneLineError((int Code, string Out, string Err) r)
    {
        Assert.NotEqual(0, r.Code);
        var lines = Lines(r.Err);
        Assert.True(lines.Length == 1, r.Err);
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("   at ", r.Err);
        return lines[0];
    }

    /// <summary>
    /// The command-line contract every ssm-* CLI shares (Ssm.Apps.Cli.Invoke): a line that does not parse is one
    /// "error:" line naming the bad token, exit 2, nothing on stdout; a bare call shows the help and exits 0.
    /// </summary>
    public static void AssertParseErrorsAreOneLine(Func<string[], (int Code, string Out, string Err)> run)
    {
        string token = "no-such-command-" + Guid.NewGuid().ToString("N")[..6];
        foreach (var args in new[] { new[] { token }, new[] { "info", "--" + token } })
        {
            var r = run(args);
            Assert.Equal(2, r.Code);
            Assert.Contains(token, AssertOneLineError(r));
            Assert.Equal("", r.Out);
        }
        var bare = run([]);
        Assert.Equal(0, bare.Code);
        Assert.Contains("Usage:", bare.Out);
        Assert.Equal("", bare.Err);
    }
}
