// WAV (RIFF/WAVE) reading and writing, written from the format's public descriptions: Microsoft/IBM "Multimedia
// Programming Interface and Data Specifications 1.0" (1991, RIFF and the WAVE form), Microsoft's "Multiple Channel
// Audio Data and WAVE Files" (WAVE_FORMAT_EXTENSIBLE), and the WAVEFORMATEX / WAVEFORMATEXTENSIBLE structures.
//
// File layout (all integers little-endian):
//   "RIFF" u32 riffSize "WAVE"                     12-byte header; riffSize is NOT trusted (streaming writers leave it
//                                                  0 or 0xFFFFFFFF): chunks are walked up to the end of the file
//   chunks: id[4] u32 size, then size bytes, then one pad byte if size is odd (every chunk starts at an even offset)
//   "fmt "  u16 formatTag u16 channels u32 sampleRate u32 byteRate u16 blockAlign u16 bitsPerSample
//           [u16 cbSize [u16 validBits u32 channelMask GUID subFormat]]    (the bracketed part for 0xFFFE only)
//   "data"  the frames, interleaved: frame f = channel 0, channel 1, ... each bitsPerSample/8 bytes
//   anything else (LIST, fact, cue , bext, id3 , JUNK, ...) is skipped.
//
// Sample formats and their mapping to floats in [-1, 1] (read) and back (write):
//   Pcm8     formatTag 1, 8 bits, UNSIGNED, 128 = silence       x = (b - 128) / 128
//   Pcm16    formatTag 1, 16 bits, signed                       x = s / 2^15
//   Pcm24    formatTag 1, 24 bits, signed (3-byte packed)       x = s / 2^23
//   Pcm32    formatTag 1, 32 bits, signed                       x = s / 2^31
//   Float32  formatTag 3 (IEEE float), 32 bits                  x as stored (not clamped on read)
//   Float64  formatTag 3, 64 bits                               x as stored, rounded to float32
// formatTag 0xFFFE (WAVE_FORMAT_EXTENSIBLE) with sub-format GUID KSDATAFORMAT_SUBTYPE_PCM (00000001-0000-0010-8000-
// 00aa00389b71) or _IEEE_FLOAT (00000003-...) reads like tag 1 or 3; samples are decoded at the container width
// (bitsPerSample), which is right for any validBits <= bitsPerSample because valid bits are left-justified.
// Writing integers: s = round(x * 2^(b-1)) clamped to [-2^(b-1), 2^(b-1) - 1] (8-bit: plus 128), so reading a file
// and writing it back in its own format reproduces the bytes, and a float round trip is off by at most half a step
// (2^-b) except for x >= 1 - 2^-b, which clamps to the top code (error <= 2^-(b-1)). Floats are written as they are.
// The writer emits the 16-byte fmt of tag 1 (PCM), the 18-byte fmt (cbSize = 0) of tag 3, or with extensible: true the
// 40-byte 0xFFFE fmt (validBits = bitsPerSample; channel mask 0x4 for mono, 0x3 for stereo, 0 = unassigned otherwise),
// plus a "fact" chunk (frames per channel) for every non-PCM format as the specification asks. It writes atomically
// (Ssm.Backbone.IO.AtomicFile): a reader never sees a half-written file.
//
// Every malformed input gives an InvalidDataException with the one-line message "NAME: reason" (NAME = the path, or
// the name passed to Read(Stream, name)). The reasons, exactly:
//   not found
//   file is N bytes, too short for a RIFF/WAVE header (12 bytes)
//   not a RIFF file (starts with "XXXX")
//   big-endian RIFX files are not supported                                     (starts with "RIFX")
//   RF64 (64-bit RIFF) files are not supported                                  (starts with "RF64")
//   RIFF form type is "XXXX", not "WAVE"
//   no "fmt " chunk
//   no "data" chunk
//   "fmt " chunk appears after the "data" chunk
//   "fmt " chunk at byte P is cut off: it declares N bytes but only M remain
//   "data" chunk at byte P is truncated: it declares N bytes but only M remain
//   "XXXX" chunk at byte P is cut off: it declares N bytes but only M remain    (a skipped chunk, before "data")
//   "fmt " chunk is N bytes, at least 16 are needed
//   WAVE_FORMAT_EXTENSIBLE "fmt " chunk is N bytes, 40 are needed
//   unsupported format code 0xNNNN (NAME); supported: 1 (PCM), 3 (IEEE float), 0xFFFE (extensible)
//   unsupported WAVE_FORMAT_EXTENSIBLE sub-format {GUID}; supported: PCM and IEEE float
//   unsupported PCM bit depth N; supported: 8, 16, 24, 32
//   unsupported IEEE float bit depth N; supported: 32, 64
//   valid bits per sample N exceed the container's M bits
//   zero channels
//   sample rate is 0
//   block align N does not match C channels x B bits (expected E)
//   "data" chunk size N is not a whole number of E-byte frames
//   "data" chunk of N bytes is too large to read (limit 2 GiB)
// and from ReadMono with allowResample: false:
//   sample rate R Hz, expected T Hz (resampling not allowed)
// Lenient on purpose (real files do these): riffSize and byteRate are not checked; a chunk after "data" that runs past
// the end of the file ends the walk; bytes after the last whole chunk are ignored; a "data" size of 0xFFFFFFFF (a
// streamed file whose writer could not seek back) means "up to the end of the file, whole frames only"; only the
// first "fmt " and "data" chunks count.
using System.Buffers.Binary;
using System.Text;
using Ssm.Backbone.IO;

namespace Ssm.Audio;

/// <summary>How the samples of a WAV file are stored.</summary>
public enum WavSampleFormat { Pcm8, Pcm16, Pcm24, Pcm32, Float32, Float64 }

/// <summary>
/// Audio as one float array per channel (samples nominally in [-1, 1]), its sample rate, and the format it was read
/// from (Float32 for audio that did not come from a file).
/// </summary>
public sealed record AudioClip(float[][] Channels, int SampleRate, WavSampleFormat Format = WavSampleFormat.Float32)
{
    public int ChannelCount => Channels.Length;
    public int Frames => Channels.Length == 0 ? 0 : Channels[0].Length;
    public double Seconds => (double)Frames / SampleRate;

    /// <summary>A one-channel clip.</summary>
    public static AudioClip Mono(float[] samples, int sampleRate) => new([samples], sampleRate);

    /// <summary>The mean of the channels (the first channel itself when there is only one).</summary>
    public float[] MixDown()
    {
        if (Channels.Length == 1) return Channels[0];
        var mono = new float[Frames];
        foreach (var ch in Channels) System.Numerics.Tensors.TensorPrimitives.Add(mono, ch, mono);
        System.Numerics.Tensors.TensorPrimitives.Multiply(mono, 1f / Channels.Length, mono);
        return mono;
    }
}

/// <summary>What a WAV header says, without decoding the samples.</summary>
public sealed record WavInfo(WavSampleFormat Format, bool Extensible, int Channels, int SampleRate, long Frames)
{
    public double Seconds => (double)Frames / SampleRate;
}

/// <summary>Reads and writes RIFF/WAVE files: PCM 8/16/24/32-bit, IEEE float 32/64-bit, WAVE_FORMAT_EXTENSIBLE.</summary>
public static class Wav
{
    const ushort TagPcm = 1, TagFloat = 3, TagExtensible = 0xFFFE;

    // KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT: the format tag in the first two bytes, then a fixed tail.
    static readonly byte[] GuidTail = [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71];

    public static int BitsPerSample(WavSampleFormat f) => f switch
    {
        WavSampleFormat.Pcm8 => 8, WavSampleFormat.Pcm16 => 16, WavSampleFormat.Pcm24 => 24,
        WavSampleFormat.Pcm32 or WavSampleFormat.Float32 => 32, WavSampleFormat.Float64 => 64,
        _ => throw new ArgumentOutOfRangeException(nameof(f), f, "unknown WAV sample format"),
    };

    static bool IsFloat(WavSampleFormat f) => f is WavSampleFormat.Float32 or WavSampleFormat.Float64;

    // ---------------------------------------------------------------------------------------------------- reading

    /// <summary>Reads a WAV file: every channel, at its own rate.</summary>
    /// <exception cref="InvalidDataException">"PATH: reason" for a missing or malformed file (see the file header).</exception>
    public static AudioClip Read(string path)
    {
        using var stream = OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>Reads WAV data from a stream (the whole stream, from its start, is the file); <paramref name="name"/> is used in error messages.</summary>
    public static AudioClip Read(Stream stream, string name)
    {
        var s = Seekable(stream);
        var h = ReadHeader(s, name, out long dataOffset);
        long bytes = h.Frames * h.BlockAlign;
        if (bytes > int.MaxValue) throw Bad(name, $"\"data\" chunk of {bytes} bytes is too large to read (limit 2 GiB)");
        var data = new byte[bytes];
        s.Position = dataOffset;
        s.ReadExactly(data);
        return new AudioClip(Decode(data, h), h.SampleRate, h.Format);
    }

    /// <summary>The header of a WAV file (format, channels, rate, length) without reading the samples.</summary>
    public static WavInfo Probe(string path)
    {
        using var stream = OpenRead(path);
        var h = ReadHeader(stream, path, out _);
        return new WavInfo(h.Format, h.Extensible, h.Channels, h.SampleRate, h.Frames);
    }

    /// <summary>
    /// Reads a WAV file as one channel (the mean of its channels) at <paramref name="targetRate"/>: resampled with
    /// <see cref="Resample.Apply"/> when the file's rate differs, or an error if <paramref name="allowResample"/> is false.
    /// </summary>
    public static float[] ReadMono(string path, int targetRate, bool allowResample = true)
    {
        if (targetRate <= 0) throw new ArgumentOutOfRangeException(nameof(targetRate), targetRate, "sample rate must be positive");
        var clip = Read(path);
        var mono = clip.MixDown();
        if (clip.SampleRate == targetRate) return mono;
        if (!allowResample)
            throw Bad(path, $"sample rate {clip.SampleRate} Hz, expected {targetRate} Hz (resampling not allowed)");
        return Resample.Apply(mono, clip.SampleRate, targetRate);
    }

    static FileStream OpenRead(string path)
    {
        try { return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16); }
        catch (FileNotFoundException) { throw Bad(path, "not found"); }
        catch (DirectoryNotFoundException) { throw Bad(path, "not found"); }
    }

    static Stream Seekable(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (stream.CanSeek) return stream;
        var copy = new MemoryStream();
        stream.CopyTo(copy);
        copy.Position = 0;
        return copy;
    }

    static InvalidDataException Bad(string name, string reason) => new($"{name}: {reason}");

    sealed record Header(WavSampleFormat Format, bool Extensible, int Channels, int SampleRate, int BlockAlign, long Frames);

    static string Id(ReadOnlySpan<byte> b)
    {
        var sb = new StringBuilder(4);
        foreach (byte c in b) sb.Append(c is >= 0x20 and < 0x7F ? (char)c : '?');
        return sb.ToString();
    }

    static string TagName(int tag) => tag switch
    {
        0x0000 => "unknown", 0x0002 => "MS ADPCM", 0x0006 => "A-law", 0x0007 => "mu-law", 0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10", 0x0050 => "MPEG", 0x0055 => "MP3", 0x00FF => "AAC", 0x2000 => "AC-3", 0xF1AC => "FLAC",
        _ => "not a known code",
    };

    /// <summary>Walks the chunks of a seekable stream; leaves the position unspecified.</summary>
    static Header ReadHeader(Stream s, string name, out long dataOffset)
    {
        long length = s.Length;
        s.Position = 0;
        Span<byte> head = stackalloc byte[12];
        if (length < 12) throw Bad(name, $"file is {length} bytes, too short for a RIFF/WAVE header (12 bytes)");
        s.ReadExactly(head);
        string riff = Id(head[..4]);
        if (riff == "RIFX") throw Bad(name, "big-endian RIFX files are not supported");
        if (riff == "RF64") throw Bad(name, "RF64 (64-bit RIFF) files are not supported");
        if (riff != "RIFF") throw Bad(name, $"not a RIFF file (starts with \"{riff}\")");
        string form = Id(head[8..12]);
        if (form != "WAVE") throw Bad(name, $"RIFF form type is \"{form}\", not \"WAVE\"");

        Header? h = null;
        long fmtPos = -1, dataPos = -1, dataSize = -1;
        dataOffset = -1;
        bool streamed = false;
        long pos = 12;
        Span<byte> ch = stackalloc byte[8];
        while (length - pos >= 8)
        {
            s.Position = pos;
            s.ReadExactly(ch);
            string id = Id(ch[..4]);
            long size = BinaryPrimitives.ReadUInt32LittleEndian(ch[4..]);
            long body = pos + 8, remain = length - body;
            if (id == "data")
            {
                if (dataPos < 0)
                {
                    if (size == uint.MaxValue) { size = remain; streamed = true; }   // up to the end of the file
                    else if (size > remain)
                        throw Bad(name, $"\"data\" chunk at byte {pos} is truncated: it declares {size} bytes but only {remain} remain");
                    dataPos = pos;
                    dataOffset = body;
                    dataSize = size;
                }
            }
            else if (size > remain)
            {
                if (id == "fmt ") throw Bad(name, $"\"fmt \" chunk at byte {pos} is cut off: it declares {size} bytes but only {remain} remain");
                if (dataPos >= 0) break;                                // junk after the audio: ignore it
                throw Bad(name, $"\"{id}\" chunk at byte {pos} is cut off: it declares {size} bytes but only {remain} remain");
            }
            else if (id == "fmt " && fmtPos < 0)
            {
                var fmt = new byte[size];
                s.ReadExactly(fmt);
                h = ParseFormat(fmt, name);
                fmtPos = pos;
            }
            pos = body + size + (size & 1);
        }
        if (h is null) throw Bad(name, "no \"fmt \" chunk");
        if (dataPos < 0) throw Bad(name, "no \"data\" chunk");
        if (fmtPos > dataPos) throw Bad(name, "\"fmt \" chunk appears after the \"data\" chunk");

        if (streamed) dataSize -= dataSize % h.BlockAlign;             // whole frames only
        if (dataSize % h.BlockAlign != 0)
            throw Bad(name, $"\"data\" chunk size {dataSize} is not a whole number of {h.BlockAlign}-byte frames");
        return h with { Frames = dataSize / h.BlockAlign };
    }

    static Header ParseFormat(byte[] fmt, string name)
    {
        if (fmt.Length < 16) throw Bad(name, $"\"fmt \" chunk is {fmt.Length} bytes, at least 16 are needed");
        var f = fmt.AsSpan();
        int tag = BinaryPrimitives.ReadUInt16LittleEndian(f);
        int channels = BinaryPrimitives.ReadUInt16LittleEndian(f[2..]);
        long rate = BinaryPrimitives.ReadUInt32LittleEndian(f[4..]);
        int blockAlign = BinaryPrimitives.ReadUInt16LittleEndian(f[12..]);
        int bits = BinaryPrimitives.ReadUInt16LittleEndian(f[14..]);
        bool extensible = tag == TagExtensible;
        if (extensible)
        {
            if (fmt.Length < 40) throw Bad(name, $"WAVE_FORMAT_EXTENSIBLE \"fmt \" chunk is {fmt.Length} bytes, 40 are needed");
            int validBits = BinaryPrimitives.ReadUInt16LittleEndian(f[18..]);
            var guid = f.Slice(24, 16);
            int sub = BinaryPrimitives.ReadUInt16LittleEndian(guid);
            if (!guid[2..].SequenceEqual(GuidTail) || (sub != TagPcm && sub != TagFloat))
                throw Bad(name, $"unsupported WAVE_FORMAT_EXTENSIBLE sub-format {{{new Guid(guid)}}}; supported: PCM and IEEE float");
            if (validBits > bits) throw Bad(name, $"valid bits per sample {validBits} exceed the container's {bits} bits");
            tag = sub;
        }
        WavSampleFormat format = tag switch
        {
            TagPcm => bits switch
            {
                8 => WavSampleFormat.Pcm8, 16 => WavSampleFormat.Pcm16, 24 => WavSampleFormat.Pcm24, 32 => WavSampleFormat.Pcm32,
                _ => throw Bad(name, $"unsupported PCM bit depth {bits}; supported: 8, 16, 24, 32"),
            },
            TagFloat => bits switch
            {
                32 => WavSampleFormat.Float32, 64 => WavSampleFormat.Float64,
                _ => throw Bad(name, $"unsupported IEEE float bit depth {bits}; supported: 32, 64"),
            },
            _ => throw Bad(name, $"unsupported format code 0x{tag:X4} ({TagName(tag)}); supported: 1 (PCM), 3 (IEEE float), 0xFFFE (extensible)"),
        };
        if (channels == 0) throw Bad(name, "zero channels");
        if (rate == 0) throw Bad(name, "sample rate is 0");
        if (rate > int.MaxValue) throw Bad(name, $"sample rate {rate} Hz is out of range");
        int expected = channels * (bits / 8);
        if (blockAlign != expected)
            throw Bad(name, $"block align {blockAlign} does not match {channels} channels x {bits} bits (expected {expected})");
        return new Header(format, extensible, channels, (int)rate, blockAlign, 0);
    }

    static float[][] Decode(byte[] data, Header h)
    {
        int c = h.Channels, n = checked((int)h.Frames), width = BitsPerSample(h.Format) / 8;
        var channels = new float[c][];
        for (int k = 0; k < c; k++) channels[k] = new float[n];
        var d = data.AsSpan();
        for (int k = 0; k < c; k++)
        {
            var dst = channels[k];
            int off = k * width, stride = h.BlockAlign;
            switch (h.Format)
            {
                case WavSampleFormat.Pcm8:
                    for (int i = 0; i < n; i++, off += stride) dst[i] = (d[off] - 128) * (1f / 128);
                    break;
                case WavSampleFormat.Pcm16:
                    for (int i = 0; i < n; i++, off += stride) dst[i] = BinaryPrimitives.ReadInt16LittleEndian(d[off..]) * (1f / 32768);
                    break;
                case WavSampleFormat.Pcm24:
                    // Sign-extend the 3 bytes by placing them in the top of an int and shifting back arithmetically.
                    for (int i = 0; i < n; i++, off += stride)
                        dst[i] = ((d[off] << 8 | d[off + 1] << 16 | d[off + 2] << 24) >> 8) * (1f / 8388608);
                    break;
                case WavSampleFormat.Pcm32:
                    for (int i = 0; i < n; i++, off += stride)
                        dst[i] = (float)(BinaryPrimitives.ReadInt32LittleEndian(d[off..]) * (1.0 / 2147483648.0));
                    break;
                case WavSampleFormat.Float32:
                    for (int i = 0; i < n; i++, off += stride) dst[i] = BinaryPrimitives.ReadSingleLittleEndian(d[off..]);
                    break;
                case WavSampleFormat.Float64:
                    for (int i = 0; i < n; i++, off += stride) dst[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(d[off..]);
                    break;
            }
        }
        return channels;
    }

    // ---------------------------------------------------------------------------------------------------- writing

    /// <summary>Writes one channel atomically.</summary>
    public static void Write(string path, float[] samples, int sampleRate,
                             WavSampleFormat format = WavSampleFormat.Pcm16, bool extensible = false) =>
        Write(path, AudioClip.Mono(samples, sampleRate), format, extensible);

    /// <summary>Writes every channel of <paramref name="clip"/> atomically (a temp file renamed over the target).</summary>
    public static void Write(string path, AudioClip clip, WavSampleFormat format = WavSampleFormat.Pcm16, bool extensible = false)
    {
        Validate(clip, format);
        AtomicFile.Write(path, stream => Write(stream, clip, format, extensible));
    }

    /// <summary>Writes a complete WAV file to <paramref name="stream"/> (which need not be seekable).</summary>
    public static void Write(Stream stream, AudioClip clip, WavSampleFormat format = WavSampleFormat.Pcm16, bool extensible = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Validate(clip, format);
        int c = clip.ChannelCount, width = BitsPerSample(format) / 8, blockAlign = c * width;
        long frames = clip.Frames;
        long dataBytes = frames * blockAlign;
        bool fact = IsFloat(format) || extensible;
        int fmtSize = extensible ? 40 : IsFloat(format) ? 18 : 16;
        long riffSize = 4 + (8 + fmtSize) + (fact ? 12 : 0) + 8 + dataBytes + (dataBytes & 1);
        if (riffSize > uint.MaxValue)
            throw new ArgumentException($"{frames} frames x {blockAlign} bytes are too long for a WAV file (4 GiB limit)", nameof(clip));

        var head = new byte[12 + 8 + fmtSize + (fact ? 12 : 0) + 8];
        var h = head.AsSpan();
        Encoding.ASCII.GetBytes("RIFF", h);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], (uint)riffSize);
        Encoding.ASCII.GetBytes("WAVEfmt ", h[8..]);
        BinaryPrimitives.WriteUInt32LittleEndian(h[16..], (uint)fmtSize);
        var f = h[20..];
        ushort tag = IsFloat(format) ? TagFloat : TagPcm;
        BinaryPrimitives.WriteUInt16LittleEndian(f, extensible ? TagExtensible : tag);
        BinaryPrimitives.WriteUInt16LittleEndian(f[2..], (ushort)c);
        BinaryPrimitives.WriteUInt32LittleEndian(f[4..], (uint)clip.SampleRate);
        BinaryPrimitives.WriteUInt32LittleEndian(f[8..], (uint)((long)clip.SampleRate * blockAlign));
        BinaryPrimitives.WriteUInt16LittleEndian(f[12..], (ushort)blockAlign);
        BinaryPrimitives.WriteUInt16LittleEndian(f[14..], (ushort)(width * 8));
        if (fmtSize > 16) BinaryPrimitives.WriteUInt16LittleEndian(f[16..], (ushort)(fmtSize - 18));   // cbSize
        if (extensible)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(f[18..], (ushort)(width * 8));                   // valid bits
            uint mask = c switch { 1 => 0x4u, 2 => 0x3u, _ => 0u };
            BinaryPrimitives.WriteUInt32LittleEndian(f[20..], mask);
            BinaryPrimitives.WriteUInt16LittleEndian(f[24..], tag);
            GuidTail.CopyTo(f[26..]);
        }
        var rest = h[(20 + fmtSize)..];
        if (fact)
        {
            Encoding.ASCII.GetBytes("fact", rest);
            BinaryPrimitives.WriteUInt32LittleEndian(rest[4..], 4);
            BinaryPrimitives.WriteUInt32LittleEndian(rest[8..], (uint)Math.Min(frames, uint.MaxValue));
            rest = rest[12..];
        }
        Encoding.ASCII.GetBytes("data", rest);
        BinaryPrimitives.WriteUInt32LittleEndian(rest[4..], (uint)dataBytes);
        stream.Write(head);

        // Interleave and encode in blocks of frames so a long clip never needs a second full-size buffer.
        const int BlockFrames = 1 << 14;
        var buf = new byte[BlockFrames * blockAlign];
        for (long start = 0; start < frames; start += BlockFrames)
        {
            int count = (int)Math.Min(BlockFrames, frames - start);
            for (int k = 0; k < c; k++)
                EncodeChannel(clip.Channels[k].AsSpan((int)start, count), buf.AsSpan(k * width), blockAlign, format);
            stream.Write(buf, 0, count * blockAlign);
        }
        if ((dataBytes & 1) != 0) stream.WriteByte(0);                  // pad byte of an odd-sized chunk
    }

    /// <summary>The bytes of a complete WAV file.</summary>
    public static byte[] Encode(AudioClip clip, WavSampleFormat format = WavSampleFormat.Pcm16, bool extensible = false)
    {
        var ms = new MemoryStream();
        Write(ms, clip, format, extensible);
        return ms.ToArray();
    }

    static void Validate(AudioClip clip, WavSampleFormat format)
    {
        ArgumentNullException.ThrowIfNull(clip);
        BitsPerSample(format);
        if (clip.ChannelCount is 0 or > ushort.MaxValue)
            throw new ArgumentException($"a WAV file needs 1 to 65535 channels, the clip has {clip.ChannelCount}", nameof(clip));
        if (clip.SampleRate <= 0) throw new ArgumentException($"sample rate must be positive, got {clip.SampleRate}", nameof(clip));
        for (int k = 0; k < clip.ChannelCount; k++)
            if (clip.Channels[k] is null || clip.Channels[k].Length != clip.Frames)
                throw new ArgumentException($"channel {k} has {clip.Channels[k]?.Length ?? 0} samples, channel 0 has {clip.Frames}", nameof(clip));
    }

    static void EncodeChannel(ReadOnlySpan<float> src, Span<byte> dst, int stride, WavSampleFormat format)
    {
        int off = 0;
        switch (format)
        {
            case WavSampleFormat.Pcm8:
                for (int i = 0; i < src.Length; i++, off += stride) dst[off] = (byte)(ToInt(src[i], 8) + 128);
                break;
            case WavSampleFormat.Pcm16:
                for (int i = 0; i < src.Length; i++, off += stride) BinaryPrimitives.WriteInt16LittleEndian(dst[off..], (short)ToInt(src[i], 16));
                break;
            case WavSampleFormat.Pcm24:
                for (int i = 0; i < src.Length; i++, off += stride)
                {
                    int v = ToInt(src[i], 24);
                    dst[off] = (byte)v; dst[off + 1] = (byte)(v >> 8); dst[off + 2] = (byte)(v >> 16);
                }
                break;
            case WavSampleFormat.Pcm32:
                for (int i = 0; i < src.Length; i++, off += stride) BinaryPrimitives.WriteInt32LittleEndian(dst[off..], ToInt(src[i], 32));
                break;
            case WavSampleFormat.Float32:
                for (int i = 0; i < src.Length; i++, off += stride) BinaryPrimitives.WriteSingleLittleEndian(dst[off..], src[i]);
                break;
            case WavSampleFormat.Float64:
                for (int i = 0; i < src.Length; i++, off += stride) BinaryPrimitives.WriteDoubleLittleEndian(dst[off..], src[i]);
                break;
        }
    }

    /// <summary>round(x 2^(bits-1)) clamped to the signed range of <paramref name="bits"/>; NaN -> 0.</summary>
    static int ToInt(float x, int bits)
    {
        double scale = 1L << (bits - 1);
        double v = Math.Round(x * scale, MidpointRounding.ToEven);
        if (double.IsNaN(v)) return 0;
        return (int)Math.Clamp(v, -scale, scale - 1);
    }
}
