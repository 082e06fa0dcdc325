// WAV reader/writer and resampler. References: the format's byte layout written out by hand in the tests (an
// independent encoder/decoder for the PCM codes), the closed-form quantisation error of each format, and closed-form
// sines for the resampler.
using System.Buffers.Binary;
using System.Text;
using Ssm.Audio;

namespace Ssm.Audio.Tests;

public sealed class WavTests : IDisposable
{
    readonly string dir = Path.Combine(Path.GetTempPath(), "ssm-wav-tests-" + Guid.NewGuid().ToString("N"));

    public WavTests() => Directory.CreateDirectory(dir);
    public void Dispose() { try { Directory.Delete(dir, true); } catch (IOException) { } }

    static float[] Signal(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        // The edges of the range and values around the integer formats' clamping point.
        float[] edges = [-1f, 1f, 0f, -0.5f, 0.99999f, -0.99999f, 1 - 1f / 256, 1 - 1f / 65536];
        edges.CopyTo(x, 0);
        return x;
    }

    public static TheoryData<WavSampleFormat, bool, int> Formats()
    {
        var d = new TheoryData<WavSampleFormat, bool, int>();
        foreach (var f in Enum.GetValues<WavSampleFormat>())
            foreach (bool ext in new[] { false, true })
                foreach (int ch in new[] { 1, 2, 3 })
                    d.Add(f, ext, ch);
        return d;
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void RoundTripWithinTheFormatsQuantisationError(WavSampleFormat format, bool extensible, int channels)
    {
        var rng = new Random(1000 + (int)format * 10 + channels + (extensible ? 5 : 0));
        int n = 1001 + rng.Next(200);   // odd sizes exercise the pad byte of 8-bit and 24-bit data
        var chans = Enumerable.Range(0, channels).Select(_ => Signal(rng, n)).ToArray();
        int rate = new[] { 8000, 16000, 22050, 44100, 48000 }[rng.Next(5)];
        string path = Path.Combine(dir, $"{format}-{extensible}-{channels}.wav");
        Wav.Write(path, new AudioClip(chans, rate), format, extensible);

        var info = Wav.Probe(path);
        Assert.Equal((format, extensible, channels, rate, (long)n), (info.Format, info.Extensible, info.Channels, info.SampleRate, info.Frames));
        var back = Wav.Read(path);
        Assert.Equal(rate, back.SampleRate);
        Assert.Equal(format, back.Format);
        Assert.Equal(channels, back.ChannelCount);

        int bits = Wav.BitsPerSample(format);
        bool isFloat = format is WavSampleFormat.Float32 or WavSampleFormat.Float64;
        double step = Math.Pow(2, -(bits - 1));   // one integer code in [-1, 1]
        for (int c = 0; c < channels; c++)
            for (int i = 0; i < n; i++)
            {
                double x = chans[c][i], err = Math.Abs(x - back.Channels[c][i]);
                if (isFloat) Assert.Equal(chans[c][i], back.Channels[c][i]);
                else
                {
                    // Half a step by rounding (+ the float32 rounding of a 32-bit code), a full step where the top code clamps.
                    double bound = (x > 1 - step ? step : step / 2) + 6e-8;
                    Assert.True(err <= bound, $"{format} ch {c} i {i}: x = {x}, read {back.Channels[c][i]}, error {err} > {bound}");
                }
            }
    }

    [Theory]
    [InlineData(WavSampleFormat.Pcm8)]
    [InlineData(WavSampleFormat.Pcm16)]
    [InlineData(WavSampleFormat.Pcm24)]
    [InlineData(WavSampleFormat.Pcm32)]
    public void IntegerCodesInTheFileAreTheRoundedScaledSamples(WavSampleFormat format)
    {
        // An independent encoder: the codes computed here in float64 must be the bytes after the 44-byte header.
        var rng = new Random(7 + (int)format);
        var l = Signal(rng, 301);
        var r = Signal(rng, 301);
        var bytes = Wav.Encode(new AudioClip([l, r], 16000), format);
        int bits = Wav.BitsPerSample(format), w = bits / 8;
        Assert.Equal(44 + 2 * 301 * w + (2 * 301 * w) % 2, bytes.Length);
        Assert.Equal("RIFF", Encoding.ASCII.GetString(bytes, 0, 4));
        Assert.Equal((uint)(bytes.Length - 8), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(4)));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(20)));
        Assert.Equal("data", Encoding.ASCII.GetString(bytes, 36, 4));
        for (int i = 0; i < 301; i++)
            for (int c = 0; c < 2; c++)
            {
                double x = (c == 0 ? l : r)[i], scale = Math.Pow(2, bits - 1);
                long want = (long)Math.Clamp(Math.Round(x * scale, MidpointRounding.ToEven), -scale, scale - 1);
                int off = 44 + (i * 2 + c) * w;
                long got = format switch
                {
                    WavSampleFormat.Pcm8 => bytes[off] - 128,
                    WavSampleFormat.Pcm16 => BitConverter.ToInt16(bytes, off),
                    WavSampleFormat.Pcm24 => (bytes[off] | bytes[off + 1] << 8 | (sbyte)bytes[off + 2] << 16),
                    _ => BitConverter.ToInt32(bytes, off),
                };
                Assert.Equal(want, got);
            }
    }

    // A file assembled byte by byte: 24-bit stereo with a LIST chunk of odd size (pad byte) before the data, a JUNK
    // chunk after it, and a riffSize of 0 (as a streaming writer leaves it).
    [Fact]
    public void ReadsAHandBuiltFileWithExtraChunks()
    {
        int[][] codes = [[0, 8388607, -8388608, 12345, -1], [-4194304, 1, 2, -3, 4194304]];
        var ms = new MemoryStream();
        var bw = new BinaryWriter(ms);
        bw.Write("RIFF"u8); bw.Write(0u); bw.Write("WAVE"u8);
        bw.Write("LIST"u8); bw.Write(5u); bw.Write("INFOx"u8); bw.Write((byte)0);
        bw.Write("fmt "u8); bw.Write(16u); bw.Write((ushort)1); bw.Write((ushort)2); bw.Write(44100u);
        bw.Write(44100u * 6); bw.Write((ushort)6); bw.Write((ushort)24);
        bw.Write("data"u8); bw.Write(30u);
        for (int i = 0; i < 5; i++)
            for (int c = 0; c < 2; c++) { int v = codes[c][i]; bw.Write((byte)v); bw.Write((byte)(v >> 8)); bw.Write((byte)(v >> 16)); }
        bw.Write("JUNK"u8); bw.Write(2u); bw.Write((ushort)0);
        bw.Flush();
        ms.Position = 0;
        var clip = Wav.Read(ms, "hand.wav");
        Assert.Equal((2, 44100, 5, WavSampleFormat.Pcm24), (clip.ChannelCount, clip.SampleRate, clip.Frames, clip.Format));
        for (int c = 0; c < 2; c++)
            for (int i = 0; i < 5; i++)
                Assert.Equal(codes[c][i] / 8388608.0, clip.Channels[c][i], 9);
    }

    // fluidsynth writes float WAVs with a bare 16-byte fmt chunk (no cbSize) and no fact chunk: accepted.
    [Fact]
    public void ReadsFloatWithA16ByteFmtChunk()
    {
        float[] x = [0.25f, -0.75f, 1.5f];   // float data is not clamped on read
        var ms = new MemoryStream();
        var bw = new BinaryWriter(ms);
        bw.Write("RIFF"u8); bw.Write(4u + 24 + 8 + 12); bw.Write("WAVE"u8);
        bw.Write("fmt "u8); bw.Write(16u); bw.Write((ushort)3); bw.Write((ushort)1); bw.Write(8000u);
        bw.Write(32000u); bw.Write((ushort)4); bw.Write((ushort)32);
        bw.Write("data"u8); bw.Write(12u);
        foreach (var v in x) bw.Write(v);
        bw.Flush();
        ms.Position = 0;
        var clip = Wav.Read(ms, "f.wav");
        Assert.Equal(x, clip.Channels[0]);
        Assert.Equal(WavSampleFormat.Float32, clip.Format);
    }

    [Fact]
    public void ReadMonoAveragesTheChannels()
    {
        var rng = new Random(3);
        var chans = Enumerable.Range(0, 3).Select(_ => Signal(rng, 500)).ToArray();
        string path = Path.Combine(dir, "three.wav");
        Wav.Write(path, new AudioClip(chans, 16000), WavSampleFormat.Float32, extensible: true);
        var mono = Wav.ReadMono(path, 16000, allowResample: false);
        for (int i = 0; i < 500; i++)
            Assert.InRange(mono[i] - (chans[0][i] + (double)chans[1][i] + chans[2][i]) / 3, -1e-6, 1e-6);
    }

    [Fact]
    public void ReadMonoResamplesOrRefuses()
    {
        var x = Enumerable.Range(0, 4800).Select(i => (float)(0.5 * Math.Sin(2 * Math.PI * 440 * i / 48000))).ToArray();
        string path = Path.Combine(dir, "r48.wav");
        Wav.Write(path, x, 48000, WavSampleFormat.Float32);
        Assert.Equal(1600, Wav.ReadMono(path, 16000).Length);
        var e = Assert.Throws<InvalidDataException>(() => Wav.ReadMono(path, 16000, allowResample: false));
        Assert.Equal($"{path}: sample rate 48000 Hz, expected 16000 Hz (resampling not allowed)", e.Message);
    }

    [Fact]
    public void WriteReplacesAnExistingFileAndLeavesNoTempFiles()
    {
        string path = Path.Combine(dir, "a.wav");
        Wav.Write(path, new float[10], 8000);
        Wav.Write(path, new float[20], 8000, WavSampleFormat.Pcm24);
        Assert.Equal(20, Wav.Read(path).Frames);
        Assert.Single(Directory.GetFiles(dir));
    }

    // ---- malformed input: each documented message, exactly

    static byte[] Valid(WavSampleFormat format = WavSampleFormat.Pcm16, bool extensible = false, int channels = 2, int frames = 4) =>
        Wav.Encode(new AudioClip(Enumerable.Range(0, channels).Select(_ => new float[frames]).ToArray(), 16000), format, extensible);

    static byte[] With(byte[] b, Action<byte[]> edit) { var c = (byte[])b.Clone(); edit(c); return c; }
    static void U16(byte[] b, int at, int v) => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(at), (ushort)v);
    static void U32(byte[] b, int at, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(at), v);
    static void Ascii(byte[] b, int at, string s) => Encoding.ASCII.GetBytes(s).CopyTo(b, at);

    // PCM16 stereo, 4 frames: RIFF header 0..11, "fmt " 12..19 + 16 bytes (tag 20, channels 22, rate 24,
    // byteRate 28, blockAlign 32, bits 34), "data" 36..43, 16 data bytes 44..59.
    public static TheoryData<string, byte[], string> Malformed()
    {
        var v = Valid();
        var ext = Valid(WavSampleFormat.Pcm16, extensible: true);   // fmt 40 bytes at 20; fact chunk; GUID at 44
        return new TheoryData<string, byte[], string>
        {
            { "empty", [], "file is 0 bytes, too short for a RIFF/WAVE header (12 bytes)" },
            { "short", v[..11], "file is 11 bytes, too short for a RIFF/WAVE header (12 bytes)" },
            { "not riff", With(v, b => Ascii(b, 0, "OggS")), "not a RIFF file (starts with \"OggS\")" },
            { "rifx", With(v, b => Ascii(b, 0, "RIFX")), "big-endian RIFX files are not supported" },
            { "rf64", With(v, b => Ascii(b, 0, "RF64")), "RF64 (64-bit RIFF) files are not supported" },
            { "not wave", With(v, b => Ascii(b, 8, "AVI ")), "RIFF form type is \"AVI \", not \"WAVE\"" },
            { "no fmt", With(v, b => Ascii(b, 12, "junk")), "no \"fmt \" chunk" },
            { "fmt after data", [.. v[..12], .. v[36..], .. v[12..36]], "\"fmt \" chunk appears after the \"data\" chunk" },
            { "no fmt at all", v[..12], "no \"fmt \" chunk" },
            { "no data", v[..36], "no \"data\" chunk" },
            { "data renamed", With(v, b => Ascii(b, 36, "dat4")), "no \"data\" chunk" },
            { "fmt cut off", v[..30], "\"fmt \" chunk at byte 12 is cut off: it declares 16 bytes but only 10 remain" },
            { "data truncated", v[..50], "\"data\" chunk at byte 36 is truncated: it declares 16 bytes but only 6 remain" },
            { "chunk cut off", With(v, b => { Ascii(b, 12, "LIST"); U32(b, 16, 1000); }),
              "\"LIST\" chunk at byte 12 is cut off: it declares 1000 bytes but only 40 remain" },
            { "fmt too small", With(v, b => U32(b, 16, 14)), "\"fmt \" chunk is 14 bytes, at least 16 are needed" },
            { "extensible too small", With(v, b => U16(b, 20, 0xFFFE)), "WAVE_FORMAT_EXTENSIBLE \"fmt \" chunk is 16 bytes, 40 are needed" },
            { "a-law", With(v, b => U16(b, 20, 6)), "unsupported format code 0x0006 (A-law); supported: 1 (PCM), 3 (IEEE float), 0xFFFE (extensible)" },
            { "mp3", With(v, b => U16(b, 20, 0x55)), "unsupported format code 0x0055 (MP3); supported: 1 (PCM), 3 (IEEE float), 0xFFFE (extensible)" },
            { "sub-format", With(ext, b => U16(b, 44, 2)),
              "unsupported WAVE_FORMAT_EXTENSIBLE sub-format {00000002-0000-0010-8000-00aa00389b71}; supported: PCM and IEEE float" },
            { "pcm 12 bits", With(v, b => U16(b, 34, 12)), "unsupported PCM bit depth 12; supported: 8, 16, 24, 32" },
            { "float 16 bits", With(v, b => U16(b, 20, 3)), "unsupported IEEE float bit depth 16; supported: 32, 64" },
            { "valid bits", With(ext, b => U16(b, 38, 20)), "valid bits per sample 20 exceed the container's 16 bits" },
            { "zero channels", With(v, b => U16(b, 22, 0)), "zero channels" },
            { "zero rate", With(v, b => U32(b, 24, 0)), "sample rate is 0" },
            { "block align", With(v, b => U16(b, 32, 3)), "block align 3 does not match 2 channels x 16 bits (expected 4)" },
            { "partial frame", With(v, b => U32(b, 40, 14)), "\"data\" chunk size 14 is not a whole number of 4-byte frames" },
        };
    }

    [Theory]
    [MemberData(nameof(Malformed))]
    public void MalformedInputGivesTheDocumentedMessage(string what, byte[] bytes, string reason)
    {
        var e = Assert.Throws<InvalidDataException>(() => Wav.Read(new MemoryStream(bytes), "bad.wav"));
        Assert.True($"bad.wav: {reason}" == e.Message, $"{what}: got '{e.Message}'");
        // The same through a file path (the message names the path).
        string path = Path.Combine(dir, "bad.wav");
        File.WriteAllBytes(path, bytes);
        var e2 = Assert.Throws<InvalidDataException>(() => Wav.Read(path));
        Assert.Equal($"{path}: {reason}", e2.Message);
    }

    [Fact]
    public void MissingFileAndLenientCases()
    {
        string missing = Path.Combine(dir, "nope.wav");
        Assert.Equal($"{missing}: not found", Assert.Throws<InvalidDataException>(() => Wav.Read(missing)).Message);

        // A streamed file: data size 0xFFFFFFFF means "to the end of the file", whole frames only.
        var v = Valid(frames: 4);
        var streamed = With(v, b => U32(b, 40, uint.MaxValue)).Concat(new byte[] { 1, 2, 3 }).ToArray();
        Assert.Equal(4, Wav.Read(new MemoryStream(streamed), "s.wav").Frames);
        // Garbage after the data that looks like a chunk running past the end is ignored.
        var tail = v.Concat("LIST"u8.ToArray()).Concat(new byte[] { 0xFF, 0, 0, 0, 1 }).ToArray();
        Assert.Equal(4, Wav.Read(new MemoryStream(tail), "t.wav").Frames);
        // A wrong riffSize is not checked.
        Assert.Equal(4, Wav.Read(new MemoryStream(With(v, b => U32(b, 4, 7))), "r.wav").Frames);
    }

    // ---- resampling

    static float[] Sine(double f, double amp, int rate, int n) =>
        Enumerable.Range(0, n).Select(i => (float)(amp * Math.Sin(2 * Math.PI * f * i / rate))).ToArray();

    [Theory]
    [InlineData(48000, 16000, 1000.0)]
    [InlineData(48000, 16000, 6000.0)]
    [InlineData(16000, 48000, 2500.0)]
    [InlineData(44100, 16000, 3000.0)]
    [InlineData(22050, 16000, 440.0)]
    [InlineData(96000, 95999, 5000.0)]   // 95,999 phases: filters computed per output instead of a table
    public void ResampledSineKeepsFrequencyAndAmplitude(int from, int to, double f)
    {
        int n = from / 10;   // 0.1 s
        var y = Resample.Apply(Sine(f, 0.8, from, n), from, to);
        Assert.Equal((long)Math.Ceiling((double)n * to / from), y.Length);
        int margin = (int)(0.004 * to);   // the filter's half-length (< 4 ms) next to each edge sees the zero padding
        double worst = 0;
        for (int i = margin; i < y.Length - margin; i++)
            worst = Math.Max(worst, Math.Abs(y[i] - 0.8 * Math.Sin(2 * Math.PI * f * i / to)));
        Assert.True(worst < 1e-3, $"{from} -> {to} Hz, {f} Hz: max error {worst}");
    }

    [Theory]
    [InlineData(48000, 16000, 9000.0)]
    [InlineData(48000, 16000, 15000.0)]
    [InlineData(44100, 16000, 8100.0)]
    public void ToneAboveTheNewNyquistFrequencyIsRemoved(int from, int to, double f)
    {
        int n = from / 10;
        var y = Resample.Apply(Sine(f, 0.8, from, n), from, to);
        int margin = (int)(0.004 * to);
        double sum = 0;
        for (int i = margin; i < y.Length - margin; i++) sum += y[i] * (double)y[i];
        double rms = Math.Sqrt(sum / (y.Length - 2 * margin));
        // The tone's RMS is 0.57; 80 dB of attenuation leaves ~6e-5.
        Assert.True(rms < 3e-4, $"{f} Hz at {from} -> {to}: RMS {rms}");
    }

    [Fact]
    public void ConstantStaysConstantAndSameRateIsACopy()
    {
        var x = Enumerable.Repeat(0.3f, 5000).ToArray();
        var y = Resample.Apply(x, 44100, 16000);
        for (int i = 100; i < y.Length - 100; i++) Assert.Equal(0.3, y[i], 5);
        var same = Resample.Apply(x, 16000, 16000);
        Assert.NotSame(x, same);
        Assert.Equal(x, same);
        Assert.Throws<ArgumentOutOfRangeException>(() => Resample.Apply(x, 0, 16000));
    }

    [Fact]
    public void BesselI0MatchesKnownValues()
    {
        // I0(0) = 1, I0(1) = 1.2660658777520082, I0(8) = 427.56411572180474 (Abramowitz & Stegun table 9.8).
        Assert.Equal(1.0, Resample.BesselI0(0), 15);
        Assert.Equal(1.2660658777520082, Resample.BesselI0(1), 12);
        Assert.Equal(427.56411572180474, Resample.BesselI0(8), 9);
    }
}
