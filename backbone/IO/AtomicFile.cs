using System.Text;

namespace Ssm.Backbone.IO;

/// <summary>
/// Writes a file so that readers (and a crash) see either the old contents or the complete new ones, never a torn file:
/// the data goes to a uniquely named temp file in the same directory, is flushed to disk, then renamed over the target.
/// </summary>
public static class AtomicFile
{
    private delegate void Writer<T>(Stream stream, T state) where T : allows ref struct;

    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes) =>
        Commit(path, bytes, static (stream, b) => stream.Write(b));

    /// <summary>UTF-8 without a byte-order mark, like <see cref="File.WriteAllText(string, string)"/>.</summary>
    public static void WriteAllText(string path, string text) =>
        Commit(path, text, static (stream, t) => stream.Write(Encoding.UTF8.GetBytes(t)));

    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        Commit(path, write, static (stream, w) => w(stream));
    }

    // Generic over a ref struct state so WriteAllBytes can stream its span without copying it to an array.
    private static void Commit<T>(string path, T state, Writer<T> write) where T : allows ref struct
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        // Same directory: the rename must not cross file systems, or it is a copy and no longer atomic.
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                write(stream, state);
                // Without this the rename can reach the disk before the data, leaving an empty file after a crash.
                stream.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }
}
