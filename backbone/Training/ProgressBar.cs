using System.Diagnostics;
using System.Globalization;

namespace Ssm.Backbone.Training;

/// <summary>
/// A one-line progress bar on stderr (tqdm-like: bar, count, rate, elapsed &lt; remaining, and a caller's status text).
/// On a terminal it redraws in place at most 10 times a second; when stderr is redirected (CI, logs) it prints a plain
/// line every <see cref="PlainInterval"/> instead, so logs stay readable. stdout is never touched: it is for results.
/// </summary>
public sealed class ProgressBar : IDisposable
{
    readonly string _label;
    readonly long _total;
    readonly string _unit;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly bool _interactive;
    readonly TextWriter _out;
    readonly long _start;
    TimeSpan _lastDraw = TimeSpan.FromDays(-1);
    long _done, _drawnDone = -1;
    string _drawnStatus = "";
    string _status = "";
    bool _finished;

    public static TimeSpan PlainInterval { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Set to false to silence every bar (e.g. --quiet).</summary>
    public static bool Enabled { get; set; } = true;

    /// <param name="total">Units of work in all (0 or less: unknown, no bar or remaining time).</param>
    /// <param name="start">Units already done before this bar (a resumed run), counted in the bar but not the rate.</param>
    public ProgressBar(string label, long total, string unit = "it", long start = 0, TextWriter? output = null)
    {
        _label = label; _total = total; _unit = unit; _start = start; _done = start;
        _out = output ?? Console.Error;
        _interactive = output is null && !Console.IsErrorRedirected;
    }

    public void Report(long done, string? status = null)
    {
        _done = done;
        if (status is not null) _status = status;
        var now = _clock.Elapsed;
        var interval = _interactive ? TimeSpan.FromMilliseconds(100) : PlainInterval;
        if (now - _lastDraw >= interval || (_total > 0 && done >= _total)) Draw(now, final: false);
    }

    public void Advance(long by = 1, string? status = null) => Report(_done + by, status);

    void Draw(TimeSpan now, bool final)
    {
        if (!Enabled) return;
        // A plain log gets no second copy of a line it already has (the final state is usually drawn by Report).
        if (final && !_interactive && _done == _drawnDone && _status == _drawnStatus) return;
        _lastDraw = now; _drawnDone = _done; _drawnStatus = _status;
        double secs = Math.Max(now.TotalSeconds, 1e-9);
        double rate = (_done - _start) / secs;
        var sb = new System.Text.StringBuilder();
        sb.Append(_label).Append(' ');
        if (_total > 0)
        {
            double frac = Math.Clamp((double)_done / _total, 0, 1);
            const int width = 24;
            int filled = (int)(frac * width);
            sb.Append(CultureInfo.InvariantCulture, $"{frac * 100,3:0}% |").Append('#', filled).Append('.', width - filled)
              .Append(CultureInfo.InvariantCulture, $"| {_done}/{_total}");
        }
        else sb.Append(CultureInfo.InvariantCulture, $"{_done}");
        string remaining = _total > 0 && rate > 0 ? Format(TimeSpan.FromSeconds((_total - _done) / rate)) : "?";
        sb.Append(CultureInfo.InvariantCulture, $" [{Format(now)}<{remaining}, {FormatRate(rate)} {_unit}/s]");
        if (_status.Length > 0) sb.Append(' ').Append(_status);
        if (_interactive) _out.Write("\r" + sb + "\u001b[K" + (final ? "\n" : ""));
        else _out.WriteLine(sb.ToString());
        _out.Flush();
    }

    static string Format(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t.Minutes:00}:{t.Seconds:00}" : $"{t.Minutes:00}:{t.Seconds:00}";

    static string FormatRate(double r) => r >= 1e6 ? (r / 1e6).ToString("0.00", CultureInfo.InvariantCulture) + "M"
        : r >= 1e4 ? (r / 1e3).ToString("0.0", CultureInfo.InvariantCulture) + "k"
        : r >= 10 ? r.ToString("0", CultureInfo.InvariantCulture) : r.ToString("0.00", CultureInfo.InvariantCulture);

    /// <summary>Draws the final state and ends the line.</summary>
    public void Dispose()
    {
        if (_finished) return;
        _finished = true;
        Draw(_clock.Elapsed, final: true);
    }
}
