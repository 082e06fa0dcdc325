// Tests for backbone/Native/ElfVersionPatcher.cs, which build/TorchSharpNative.targets runs after every build to mark
// libLibTorchSharp.so's GLIBCXX_3.4.32 requirement weak where the system libstdc++ lacks it (Debian 12).
// The patcher rewrites a binary that the dynamic loader trusts, so we test it on small hand-built ELF files whose
// every byte we know (SyntheticElf below), cross-check those files with binutils' readelf, and finally look at the
// real libstdc++ and the real, already patched libLibTorchSharp.so on this machine.
using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using Ssm.Backbone.Native;

namespace Ssm.Backbone.Tests;

public class ElfVersionPatcherTests
{
    const string Libstdcxx = "libstdc++.so.6";

    // libLibTorchSharp.so's situation in miniature: it needs three libstdc++ versions, one of which (3.4.32) Debian 12
    // lacks, and a libc version that must be left alone because it belongs to another library.
    static SyntheticElf TorchSharpLike() => new SyntheticElf()
        .Needs(Libstdcxx, "GLIBCXX_3.4.30", "GLIBCXX_3.4.32", "CXXABI_1.3.13")
        .Needs("libc.so.6", "GLIBC_2.34");

    // Debian 12's libstdc++ in miniature: defines versions up to GLIBCXX_3.4.30, not 3.4.32.
    static SyntheticElf Debian12Libstdcxx() => new SyntheticElf()
        .Defines(Libstdcxx, "GLIBCXX_3.4", "GLIBCXX_3.4.30", "CXXABI_1.3", "CXXABI_1.3.13");

    // A newer libstdc++ (GCC 13+) that has everything TorchSharp asks for.
    static SyntheticElf Gcc13Libstdcxx() => new SyntheticElf()
        .Defines(Libstdcxx, "GLIBCXX_3.4", "GLIBCXX_3.4.30", "GLIBCXX_3.4.32", "CXXABI_1.3", "CXXABI_1.3.13");

    // ---------------------------------------------------------------- reading

    [Fact]
    public void ReadVersionNeeds_ReturnsEveryEntryAsWritten()
    {
        // One entry is already weak on disk, so both values of the flag are read back, plus each entry's flag offset
        // (MarkWeak writes exactly there, so a wrong offset would corrupt the file).
        var img = new SyntheticElf()
            .Needs(Libstdcxx, ("GLIBCXX_3.4.30", 0), ("GLIBCXX_3.4.32", ElfVersionPatcher.VerFlgWeak), ("CXXABI_1.3.13", 0))
            .Needs("libc.so.6", ("GLIBC_2.34", 0))
            .Build();

        var expected = new[]
        {
            (Libstdcxx, "GLIBCXX_3.4.30", false, img.FlagsOffset(Libstdcxx, "GLIBCXX_3.4.30")),
            (Libstdcxx, "GLIBCXX_3.4.32", true, img.FlagsOffset(Libstdcxx, "GLIBCXX_3.4.32")),
            (Libstdcxx, "CXXABI_1.3.13", false, img.FlagsOffset(Libstdcxx, "CXXABI_1.3.13")),
            ("libc.so.6", "GLIBC_2.34", false, img.FlagsOffset("libc.so.6", "GLIBC_2.34")),
        };
        var actual = ElfVersionPatcher.ReadVersionNeeds(img.Bytes).Select(n => (n.File, n.Version, n.Weak, n.FlagsOffset));
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void ReadVersionNeeds_OnlyTheWeakBitCountsAsWeak()
    {
        // vna_flags may carry other bits (VER_FLG_BASE = 1, VER_FLG_INFO = 4); only bit 2 means weak.
        var img = new SyntheticElf().Needs(Libstdcxx, ("A_1", 0x1), ("B_1", 0x4), ("C_1", 0x6)).Build();
        Assert.Equal(new[] { false, false, true }, ElfVersionPatcher.ReadVersionNeeds(img.Bytes).Select(n => n.Weak));
    }

    [Fact]
    public void ReadVersionDefinitions_ReturnsDefinedNames()
    {
        var img = Debian12Libstdcxx().Build();
        // The first Verdef (VER_FLG_BASE) names the library itself; the patcher reports it like readelf does.
        var expected = new[] { Libstdcxx, "GLIBCXX_3.4", "GLIBCXX_3.4.30", "CXXABI_1.3", "CXXABI_1.3.13" };
        var actual = ElfVersionPatcher.ReadVersionDefinitions(img.Bytes);
        Assert.Equal(expected.OrderBy(s => s, StringComparer.Ordinal), actual.OrderBy(s => s, StringComparer.Ordinal));
    }

    [Fact]
    public void FilesWithoutVersionSectionsReadAsEmpty()
    {
        // A needer has no .gnu.version_d and a plain library no .gnu.version_r: that is not an error.
        Assert.Empty(ElfVersionPatcher.ReadVersionDefinitions(TorchSharpLike().Build().Bytes));
        Assert.Empty(ElfVersionPatcher.ReadVersionNeeds(Debian12Libstdcxx().Build().Bytes));
    }

    // ---------------------------------------------------------------- MissingVersions + MarkWeak

    [Fact]
    public void MarkWeak_FlagsOnlyTheMissingVersions_AndNoOtherByte()
    {
        var img = TorchSharpLike().Build();
        var bytes = (byte[])img.Bytes.Clone();
        var provided = ElfVersionPatcher.ReadVersionDefinitions(Debian12Libstdcxx().Build().Bytes);

        // Only 3.4.32 is missing. GLIBC_2.34 is not in libstdc++'s set either, but it is asked of libc.so.6.
        var missing = ElfVersionPatcher.MissingVersions(bytes, Libstdcxx, provided);
        Assert.Equal(new[] { "GLIBCXX_3.4.32" }, missing.Select(m => m.Version));

        Assert.Equal(1, ElfVersionPatcher.MarkWeak(bytes, missing));

        // Exactly one byte differs: the low byte of 3.4.32's vna_flags, 0 -> VER_FLG_WEAK.
        int flags = img.FlagsOffset(Libstdcxx, "GLIBCXX_3.4.32");
        Assert.Equal(new[] { flags }, DifferingOffsets(img.Bytes, bytes));
        Assert.Equal(ElfVersionPatcher.VerFlgWeak, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(flags)));

        // Reading back agrees: that entry is weak, all others are not.
        Assert.Equal(new[] { "GLIBCXX_3.4.32" },
            ElfVersionPatcher.ReadVersionNeeds(bytes).Where(n => n.Weak).Select(n => n.Version));
    }

    [Fact]
    public void MarkWeak_IsIdempotent()
    {
        var bytes = TorchSharpLike().Build().Bytes;
        var provided = ElfVersionPatcher.ReadVersionDefinitions(Debian12Libstdcxx().Build().Bytes);
        var missing = ElfVersionPatcher.MissingVersions(bytes, Libstdcxx, provided);
        Assert.Equal(1, ElfVersionPatcher.MarkWeak(bytes, missing));
        var once = (byte[])bytes.Clone();

        // A weak requirement no longer counts as missing (the build step re-runs on every build) ...
        Assert.Empty(ElfVersionPatcher.MissingVersions(bytes, Libstdcxx, provided));
        // ... and re-applying stale entries changes nothing and reports nothing.
        Assert.Equal(0, ElfVersionPatcher.MarkWeak(bytes, missing));
        Assert.Equal(once, bytes);
    }

    [Fact]
    public void MarkWeak_KeepsOtherFlagBits()
    {
        // Setting the flag must OR it in, not overwrite vna_flags (here VER_FLG_INFO and a high-byte bit are set).
        var img = new SyntheticElf().Needs(Libstdcxx, ("GLIBCXX_3.4.32", 0x0104)).Build();
        var bytes = img.Bytes;
        var missing = ElfVersionPatcher.MissingVersions(bytes, Libstdcxx, new HashSet<string>());
        Assert.Equal(1, ElfVersionPatcher.MarkWeak(bytes, missing));
        Assert.Equal(0x0106, BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(img.FlagsOffset(Libstdcxx, "GLIBCXX_3.4.32"))));
    }

    [Fact]
    public void MissingVersions_IsEmptyWhenEverythingIsProvided()
    {
        var provided = ElfVersionPatcher.ReadVersionDefinitions(Gcc13Libstdcxx().Build().Bytes);
        Assert.Empty(ElfVersionPatcher.MissingVersions(TorchSharpLike().Build().Bytes, Libstdcxx, provided));
    }

    [Fact]
    public void MarkWeak_RejectsAnOffsetOutsideTheImage()
    {
        // An entry read from another (larger) file must not write past this one.
        var bytes = TorchSharpLike().Build().Bytes;
        foreach (int offset in new[] { bytes.Length - 1, bytes.Length, -1 })
            Assert.Throws<InvalidDataException>(() =>
                ElfVersionPatcher.MarkWeak(bytes, new[] { new ElfVersionNeed(Libstdcxx, "X", false, offset) }));
    }

    // ---------------------------------------------------------------- PatchFile

    [Fact]
    public void PatchFile_Patches_KeepsTimestampAndMode_LeavesNoTempFiles()
    {
        using var dir = new TempDir();
        var original = TorchSharpLike().Build().Bytes;
        var lib = dir.Write("libLibTorchSharp.so", original);
        var system = dir.Write(Libstdcxx, Debian12Libstdcxx().Build().Bytes);
        // An old timestamp, so that "unchanged" cannot be an accident of the clock. MSBuild's incremental copy
        // compares timestamps; a changed one would make the next build copy the unpatched file back.
        var stamp = new DateTime(2021, 2, 3, 4, 5, 6, DateTimeKind.Utc);
        File.SetLastWriteTimeUtc(lib, stamp);
        // NuGet ships the library as 0744, not the 0644 a new file gets; the rewritten file must keep its mode.
        const UnixFileMode Mode0744 = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
            | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(lib, Mode0744);

        Assert.Equal(new[] { "GLIBCXX_3.4.32" }, ElfVersionPatcher.PatchFile(lib, system, Libstdcxx));

        var expected = (byte[])original.Clone();
        ElfVersionPatcher.MarkWeak(expected, ElfVersionPatcher.MissingVersions(expected, Libstdcxx, new[] { "GLIBCXX_3.4.30", "CXXABI_1.3.13" }));
        Assert.Equal(expected, File.ReadAllBytes(lib));
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(lib));
        if (!OperatingSystem.IsWindows()) Assert.Equal(Mode0744, File.GetUnixFileMode(lib));
        Assert.Equal(new[] { "libLibTorchSharp.so", Libstdcxx }, dir.FileNames()); // no *.tmp left behind

        // Second run (every build re-runs the step): nothing left to do, file untouched.
        Assert.Empty(ElfVersionPatcher.PatchFile(lib, system, Libstdcxx));
        Assert.Equal(expected, File.ReadAllBytes(lib));
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(lib));
    }

    [Fact]
    public void PatchFile_IsANoOpWhenTheSystemLibraryDefinesEverything()
    {
        using var dir = new TempDir();
        var original = TorchSharpLike().Build().Bytes;
        var lib = dir.Write("libLibTorchSharp.so", original);
        var system = dir.Write(Libstdcxx, Gcc13Libstdcxx().Build().Bytes);
        var stamp = new DateTime(2021, 2, 3, 4, 5, 6, DateTimeKind.Utc);
        File.SetLastWriteTimeUtc(lib, stamp);

        Assert.Empty(ElfVersionPatcher.PatchFile(lib, system, Libstdcxx));
        Assert.Equal(original, File.ReadAllBytes(lib));
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(lib));
        Assert.Equal(new[] { "libLibTorchSharp.so", Libstdcxx }, dir.FileNames());
    }

    [Fact]
    public void PatchFile_NeverWritesThroughAHardLink()
    {
        // The build hard-links the library from the NuGet cache into bin/; patching in place would patch the cache
        // for every project and every machine state. A rename-over gives bin/ its own file and leaves the cache alone.
        if (!OperatingSystem.IsLinux()) return; // link(2) below; the build step itself only runs on Linux
        using var dir = new TempDir();
        var original = TorchSharpLike().Build().Bytes;
        var cache = dir.Write("cache.so", original);
        var lib = Path.Combine(dir.Path, "libLibTorchSharp.so");
        Assert.Equal(0, link(cache, lib));
        var system = dir.Write(Libstdcxx, Debian12Libstdcxx().Build().Bytes);

        Assert.Equal(new[] { "GLIBCXX_3.4.32" }, ElfVersionPatcher.PatchFile(lib, system, Libstdcxx));
        Assert.Equal(original, File.ReadAllBytes(cache));
        Assert.NotEqual(original, File.ReadAllBytes(lib));
    }

    [Fact]
    public void PatchFile_NeverLeavesTheLibraryMissing()
    {
        // Replacing must be one rename: another process (a parallel build, a test host) may open the library at any
        // moment, and "delete, then move" leaves a moment with no file at all. A reader thread polls the path while
        // we patch the file over and over. With an atomic rename this cannot fail; a regression to delete+move is
        // caught with high (not certain) probability.
        using var dir = new TempDir();
        var original = TorchSharpLike().Build().Bytes;
        var lib = dir.Write("libLibTorchSharp.so", original);
        var system = dir.Write(Libstdcxx, Debian12Libstdcxx().Build().Bytes);
        var restore = Path.Combine(dir.Path, "restore.bin");

        int misses = 0;
        using var stop = new CancellationTokenSource();
        var reader = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
                if (!File.Exists(lib)) Interlocked.Increment(ref misses);
        });
        reader.Start();
        try
        {
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < 1000 && Volatile.Read(ref misses) == 0 && clock.Elapsed < TimeSpan.FromSeconds(1); i++)
            {
                File.WriteAllBytes(restore, original);
                File.Move(restore, lib, overwrite: true); // itself a rename, so it cannot cause a miss
                Assert.Equal(new[] { "GLIBCXX_3.4.32" }, ElfVersionPatcher.PatchFile(lib, system, Libstdcxx));
            }
        }
        finally
        {
            stop.Cancel();
            reader.Join();
        }
        Assert.Equal(0, misses);
    }

    [Fact]
    public void PatchFile_LeavesTheLibraryAloneWhenAFileIsMalformed()
    {
        using var dir = new TempDir();
        var good = TorchSharpLike().Build().Bytes;
        var lib = dir.Write("libLibTorchSharp.so", good);
        var badSystem = dir.Write("bad-libstdc++.so.6", new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' });
        var system = dir.Write(Libstdcxx, Debian12Libstdcxx().Build().Bytes);
        Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.PatchFile(lib, badSystem, Libstdcxx));
        Assert.Equal(good, File.ReadAllBytes(lib));

        var badLib = Malformed("vna_name outside the string table");
        var badLibPath = dir.Write("bad.so", badLib);
        Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.PatchFile(badLibPath, system, Libstdcxx));
        Assert.Equal(badLib, File.ReadAllBytes(badLibPath));
        Assert.Equal(new[] { "bad-libstdc++.so.6", "bad.so", "libLibTorchSharp.so", Libstdcxx }, dir.FileNames());
    }

    // ---------------------------------------------------------------- malformed input

    // Each case damages one thing in an otherwise good file (Malformed below).
    // Which readers must reject a case: header-level damage breaks both; damage inside one version section (or in
    // the string table only it uses) breaks the reader of that section.
    public enum Reader { Both, Needs, Definitions }

    public static TheoryData<string, Reader> MalformedCases() => new()
    {
        { "empty file", Reader.Both },
        { "shorter than the ELF header", Reader.Both },
        { "wrong magic", Reader.Both },
        { "32-bit class", Reader.Both },
        { "big-endian", Reader.Both },
        { "no section headers", Reader.Both },
        { "section header entries too small", Reader.Both },
        { "section header table beyond the end", Reader.Both },
        { "section header table offset overflows", Reader.Both },
        { "truncated section header table", Reader.Both },
        { "section offset beyond the end", Reader.Both },
        { "section size beyond the end", Reader.Both },
        { "section offset overflows", Reader.Both },
        { "unterminated string", Reader.Both },
        { "string table index out of range", Reader.Needs },
        { "string table link to a section lying outside the file", Reader.Needs },
        { "vn_aux pointing outside the file", Reader.Needs },
        { "vn_aux pointing outside the section", Reader.Needs },
        { "Vernaux cut off by the section end", Reader.Needs },
        { "vn_next pointing outside the file", Reader.Needs },
        { "vna_next pointing outside the file", Reader.Needs },
        { "vn_file outside the string table", Reader.Needs },
        { "vna_name outside the string table", Reader.Needs },
        { "vd_aux pointing outside the file", Reader.Definitions },
        { "vd_aux pointing outside the section", Reader.Definitions },
        { "vd_next pointing outside the file", Reader.Definitions },
        { "vda_name outside the string table", Reader.Definitions },
    };

    // Every reader must throw InvalidDataException (the build task turns it into a readable error), never
    // IndexOutOfRangeException, OverflowException or the like, and never read (or, in MarkWeak, write) bytes that are
    // not the structure it takes them for.
    [Theory]
    [MemberData(nameof(MalformedCases))]
    public void MalformedInputThrowsInvalidDataException(string @case, Reader reader)
    {
        var bytes = Malformed(@case);
        if (reader != Reader.Needs)
            Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.ReadVersionDefinitions(bytes));
        if (reader != Reader.Definitions)
        {
            Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.ReadVersionNeeds(bytes));
            Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.MissingVersions(bytes, Libstdcxx, new HashSet<string>()));
        }
    }

    [Fact]
    public void MalformedCasesAreDamageOfAGoodFile()
    {
        // The cases above only mean something if the undamaged file reads fine with both readers.
        var good = TorchSharpLike().Defines(Libstdcxx, "GLIBCXX_3.4").Build().Bytes;
        Assert.Equal(4, ElfVersionPatcher.ReadVersionNeeds(good).Count);
        Assert.Equal(2, ElfVersionPatcher.ReadVersionDefinitions(good).Count);
    }

    static byte[] Malformed(string @case)
    {
        // Needer and definer in one file (as real libraries are), so header-level damage hits both readers.
        var img = TorchSharpLike().Defines(Libstdcxx, "GLIBCXX_3.4").Build();
        var b = img.Bytes;
        int vn = img.VerneedOffset, vna = vn + 16, vd = img.VerdefOffset;
        int vnShdr = img.SectionHeader(img.VerneedIndex), vdShdr = img.SectionHeader(img.VerdefIndex);
        const uint FarAway = 0x7fff_fff0;
        switch (@case)
        {
            case "empty file": return Array.Empty<byte>();
            case "shorter than the ELF header": return b[..40];
            case "wrong magic": b[1] = (byte)'X'; break;
            case "32-bit class": b[4] = 1; break;                                   // ELFCLASS32
            case "big-endian": b[5] = 2; break;                                     // ELFDATA2MSB
            case "no section headers": W16(b, 0x3C, 0); break;                      // e_shnum
            case "section header entries too small": W16(b, 0x3A, 40); break;       // e_shentsize
            case "section header table beyond the end": W64(b, 0x28, (ulong)b.Length); break;
            case "section header table offset overflows": W64(b, 0x28, ulong.MaxValue - 63); break;
            case "truncated section header table": return b[..(img.SectionHeader(2) + 10)];
            case "section offset beyond the end": W64(b, vnShdr + 24, (ulong)b.Length + 16); break;
            case "section size beyond the end": W64(b, vnShdr + 32, (ulong)b.Length); break;
            case "section offset overflows": W64(b, vnShdr + 24, ulong.MaxValue - 7); break;
            case "string table index out of range": W32(b, vnShdr + 40, 99); break; // sh_link
            case "string table link to a section lying outside the file":
                // Section 0 (SHT_NULL) is not bounds-checked as a section; used as a string table it must be.
                W64(b, img.SectionHeader(0) + 24, (ulong)b.Length + 4096);
                W64(b, img.SectionHeader(0) + 32, 4096);
                W32(b, vnShdr + 40, 0);
                break;
            case "vn_aux pointing outside the file": W32(b, vn + 8, FarAway); break;
            case "vn_aux pointing outside the section":
                // Inside the file, but past .gnu.version_r, at the all-zero section header 0, which reads as a valid
                // Vernaux named "": MarkWeak would then flip a bit in the section header table.
                W32(b, vn + 8, (uint)(img.SectionHeader(0) - vn));
                break;
            case "Vernaux cut off by the section end": W64(b, vnShdr + 32, 24); break; // room for the Verneed only
            case "vn_next pointing outside the file": W32(b, vn + 12, FarAway); break;
            case "vna_next pointing outside the file": W32(b, vna + 12, FarAway); break;
            case "vn_file outside the string table": W32(b, vn + 4, uint.MaxValue); break;
            case "vna_name outside the string table": W32(b, vna + 8, (uint)img.DynstrSize); break;
            case "unterminated string":
                // Overwrite the table's final NUL: the last string (the last defined name) runs off the table's end.
                b[img.DynstrOffset + img.DynstrSize - 1] = (byte)'X';
                W32(b, vna + 8, (uint)(img.DynstrSize - 2)); // and make the needer use it too
                break;
            case "vd_aux pointing outside the file": W32(b, vd + 12, FarAway); break;
            case "vd_aux pointing outside the section": W32(b, vd + 12, (uint)(img.SectionHeader(0) - vd)); break;
            case "vd_next pointing outside the file": W32(b, vd + 16, FarAway); break;
            case "vda_name outside the string table": W32(b, vd + 20, (uint)img.DynstrSize + 3); break;
            default: throw new ArgumentException("unknown case " + @case);
        }
        return b;
    }

    // ---------------------------------------------------------------- cross-check with readelf

    [Fact]
    public void ReadelfReadsTheSyntheticFileTheSameWay()
    {
        // The synthetic files are only good evidence if a real ELF reader sees in them what we meant to write.
        // readelf is in binutils (installed here and on CI). Without it only the managed checks run.
        using var dir = new TempDir();
        var img = TorchSharpLike().Defines(Libstdcxx, "GLIBCXX_3.4", "CXXABI_1.3").Build();
        var bytes = img.Bytes;
        var path = dir.Write("synthetic.so", bytes);

        var before = Readelf(path);
        if (before != null)
        {
            Assert.Equal(Needs(bytes), before.Needs);
            Assert.Equal(new[] { Libstdcxx, "GLIBCXX_3.4", "CXXABI_1.3" }, before.Definitions);
        }

        // Patch the way the build does, then compare the flags readelf reports.
        var missing = ElfVersionPatcher.MissingVersions(bytes, Libstdcxx, ElfVersionPatcher.ReadVersionDefinitions(Debian12Libstdcxx().Build().Bytes));
        Assert.Equal(1, ElfVersionPatcher.MarkWeak(bytes, missing));
        File.WriteAllBytes(path, bytes);
        var expected = new[]
        {
            (Libstdcxx, "GLIBCXX_3.4.30", false), (Libstdcxx, "GLIBCXX_3.4.32", true), (Libstdcxx, "CXXABI_1.3.13", false),
            ("libc.so.6", "GLIBC_2.34", false),
        };
        Assert.Equal(expected, Needs(bytes));
        var after = Readelf(path);
        if (after != null) Assert.Equal(expected, after.Needs);
    }

    [Fact]
    public void ReadelfAgreesOnTheRealFiles()
    {
        var system = ElfVersionPatcher.FindSystemLibrary(Libstdcxx);
        Assert.NotNull(system);
        var sysElf = Readelf(system);
        if (sysElf != null)
            Assert.Equal(sysElf.Definitions.OrderBy(s => s, StringComparer.Ordinal),
                ElfVersionPatcher.ReadVersionDefinitions(File.ReadAllBytes(system)).OrderBy(s => s, StringComparer.Ordinal));
        foreach (var lib in TorchSharpNativeLibraries())
        {
            var libElf = Readelf(lib);
            if (libElf != null) Assert.Equal(libElf.Needs, Needs(File.ReadAllBytes(lib)));
        }
    }

    // ---------------------------------------------------------------- the real files on this machine

    [Fact]
    public void SystemLibstdcxxDefinesTheExpectedVersions()
    {
        var system = ElfVersionPatcher.FindSystemLibrary(Libstdcxx);
        Assert.NotNull(system);
        var defs = ElfVersionPatcher.ReadVersionDefinitions(File.ReadAllBytes(system));
        Assert.Contains("GLIBCXX_3.4", defs);
        Assert.Contains("CXXABI_1.3", defs);
        // Any libstdc++ from the last years (GCC 9+) defines some GLIBCXX_3.4.2x.
        Assert.Contains(defs, d => Regex.IsMatch(d, @"^GLIBCXX_3\.4\.2[0-9]$"));
    }

    [Fact]
    public void TorchSharpNativeLibraryWasPatchedExactlyAsNeeded()
    {
        // The build step (build/TorchSharpNative.targets) ran on this test project's output: GLIBCXX_3.4.32 is weak
        // exactly when the system lacks it, nothing else was touched, and nothing this system lacks is left strong.
        var system = ElfVersionPatcher.FindSystemLibrary(Libstdcxx);
        Assert.NotNull(system);
        var provided = ElfVersionPatcher.ReadVersionDefinitions(File.ReadAllBytes(system));
        bool systemHas3432 = provided.Contains("GLIBCXX_3.4.32");

        var libs = TorchSharpNativeLibraries();
        Assert.NotEmpty(libs);
        foreach (var lib in libs)
        {
            var bytes = File.ReadAllBytes(lib);
            var needs = ElfVersionPatcher.ReadVersionNeeds(bytes);
            var v3432 = Assert.Single(needs, n => n.File == Libstdcxx && n.Version == "GLIBCXX_3.4.32");
            Assert.Equal(!systemHas3432, v3432.Weak);
            Assert.All(needs.Where(n => n != v3432), n => Assert.False(n.Weak, $"{lib}: {n.File} {n.Version} is weak"));
            Assert.Empty(ElfVersionPatcher.MissingVersions(bytes, Libstdcxx, provided));
        }
    }

    // ---------------------------------------------------------------- helpers

    static List<string> TorchSharpNativeLibraries() =>
        Directory.GetFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).ToList();

    static List<(string File, string Version, bool Weak)> Needs(byte[] elf) =>
        ElfVersionPatcher.ReadVersionNeeds(elf).Select(n => (n.File, n.Version, n.Weak)).ToList();

    static int[] DifferingOffsets(byte[] a, byte[] b)
    {
        Assert.Equal(a.Length, b.Length);
        return Enumerable.Range(0, a.Length).Where(i => a[i] != b[i]).ToArray();
    }

    static void W16(byte[] b, int o, ushort v) => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(o), v);
    static void W32(byte[] b, int o, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(o), v);
    static void W64(byte[] b, int o, ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(o), v);

    [DllImport("libc", SetLastError = true)]
    static extern int link(string oldpath, string newpath);

    sealed record ReadelfView(List<(string File, string Version, bool Weak)> Needs, List<string> Definitions);

    /// <summary>What `readelf -V` reports about a file, or null when readelf is not installed.</summary>
    static ReadelfView? Readelf(string path)
    {
        var exe = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Where(d => d.Length > 0).Select(d => Path.Combine(d, "readelf")).FirstOrDefault(File.Exists);
        if (exe == null) return null;
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-V");
        psi.ArgumentList.Add("-W");
        psi.ArgumentList.Add(path);
        psi.Environment["LC_ALL"] = "C";
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, "readelf failed: " + stderr.Result);
        Assert.True(stderr.Result.Length == 0, "readelf complains about " + path + ": " + stderr.Result); // e.g. "Warning: ..."

        // Lines look like
        //   0x0010:   Name: GLIBCXX_3.4.30  Flags: WEAK  Version: 29           (in .gnu.version_r, after "File: ...")
        //   0x001c: Rev: 1  Flags: none  Index: 2  Cnt: 1  Name: GLIBCXX_3.4   (in .gnu.version_d)
        var needs = new List<(string, string, bool)>();
        var defs = new List<string>();
        string? file = null;
        foreach (var line in stdout.Split('\n'))
        {
            Match m;
            if ((m = Regex.Match(line, @"Version: \d+\s+File: (\S+)\s+Cnt:")).Success) file = m.Groups[1].Value;
            else if ((m = Regex.Match(line, @"^\s+0x[0-9a-f]+:\s+Name: (\S+)\s+Flags: (.*?)\s+Version:")).Success)
                needs.Add((file ?? throw new InvalidDataException("readelf: Name before File"), m.Groups[1].Value, m.Groups[2].Value.Contains("WEAK")));
            else if ((m = Regex.Match(line, @"Rev: \d+\s+Flags: .*?\s+Index: \d+\s+Cnt: \d+\s+Name: (\S+)")).Success)
                defs.Add(m.Groups[1].Value);
        }
        return new ReadelfView(needs, defs);
    }

    sealed class TempDir : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("ssm-elf-").FullName;
        public string Write(string name, byte[] bytes)
        {
            var p = System.IO.Path.Combine(Path, name);
            File.WriteAllBytes(p, bytes);
            return p;
        }
        public string[] FileNames() =>
            Directory.GetFiles(Path).Select(f => System.IO.Path.GetFileName(f)).OrderBy(f => f, StringComparer.Ordinal).ToArray();
        public void Dispose() => Directory.Delete(Path, recursive: true);
    }
}

/// <summary>
/// Writes a minimal ELF64 little-endian shared object with section headers only (no code, no program headers):
/// [0] NULL, [1] .shstrtab, [2] .dynstr, then .gnu.version_r (if anything is needed) and .gnu.version_d (if anything
/// is defined). The layout follows what GNU ld emits: Verneed/Vernaux and Verdef/Verdaux chained with relative
/// offsets, the last link 0, sh_link = .dynstr, sh_info = number of Verneed/Verdef entries.
/// </summary>
sealed class SyntheticElf
{
    readonly List<(string File, (string Version, ushort Flags)[] Versions)> needs = new();
    string? soname;
    readonly List<string> defs = new();

    public SyntheticElf Needs(string file, params string[] versions) => Needs(file, versions.Select(v => (v, (ushort)0)).ToArray());

    public SyntheticElf Needs(string file, params (string Version, ushort Flags)[] versions)
    {
        needs.Add((file, versions));
        return this;
    }

    /// <summary>Adds a .gnu.version_d: the VER_FLG_BASE entry naming <paramref name="name"/>, then each version.</summary>
    public SyntheticElf Defines(string name, params string[] versions)
    {
        soname = name;
        defs.AddRange(versions);
        return this;
    }

    public sealed class Image
    {
        public required byte[] Bytes { get; init; }
        public required int SectionHeaderTable { get; init; }
        public required int DynstrOffset { get; init; }
        public required int DynstrSize { get; init; }
        public required int VerneedIndex { get; init; }   // -1 when absent
        public required int VerneedOffset { get; init; }
        public required int VerdefIndex { get; init; }    // -1 when absent
        public required int VerdefOffset { get; init; }
        public required Dictionary<(string File, string Version), int> FlagsOffsets { get; init; }
        public int FlagsOffset(string file, string version) => FlagsOffsets[(file, version)];
        public int SectionHeader(int index) => SectionHeaderTable + 64 * index;
    }

    public Image Build()
    {
        var dynstr = new Strtab();
        foreach (var (file, versions) in needs)
        {
            dynstr.Add(file);
            foreach (var v in versions) dynstr.Add(v.Version);
        }
        var defNames = soname == null ? new List<string>() : new[] { soname }.Concat(defs).ToList();
        foreach (var d in defNames) dynstr.Add(d);
        var shstrtab = new Strtab();
        foreach (var n in new[] { ".shstrtab", ".dynstr", ".gnu.version_r", ".gnu.version_d" }) shstrtab.Add(n);

        // File layout: header, .shstrtab, .dynstr, .gnu.version_r, .gnu.version_d, section headers; 8-aligned.
        int verneedSize = needs.Sum(n => 16 + 16 * n.Versions.Length), verdefSize = 28 * defNames.Count;
        int off = 64;
        int shstrOff = off; off = Align8(off + shstrtab.Length);
        int dynstrOff = off; off = Align8(off + dynstr.Length);
        int verneedOff = off; off = Align8(off + verneedSize);
        int verdefOff = off; off = Align8(off + verdefSize);
        int shoff = off;
        int verneedIndex = needs.Count > 0 ? 3 : -1;
        int verdefIndex = defNames.Count > 0 ? (needs.Count > 0 ? 4 : 3) : -1;
        int shnum = 3 + (verneedIndex > 0 ? 1 : 0) + (verdefIndex > 0 ? 1 : 0);
        var b = new byte[shoff + 64 * shnum];

        // Elf64_Ehdr
        b[0] = 0x7f; b[1] = (byte)'E'; b[2] = (byte)'L'; b[3] = (byte)'F';
        b[4] = 2;  // ELFCLASS64
        b[5] = 1;  // ELFDATA2LSB
        b[6] = 1;  // EV_CURRENT
        W16(b, 0x10, 3);   // e_type ET_DYN
        W16(b, 0x12, 62);  // e_machine EM_X86_64
        W32(b, 0x14, 1);   // e_version
        W64(b, 0x28, (ulong)shoff);
        W16(b, 0x34, 64);  // e_ehsize
        W16(b, 0x3A, 64);  // e_shentsize
        W16(b, 0x3C, (ushort)shnum);
        W16(b, 0x3E, 1);   // e_shstrndx

        shstrtab.Bytes.CopyTo(b, shstrOff);
        dynstr.Bytes.CopyTo(b, dynstrOff);

        // .gnu.version_r: each Elf64_Verneed directly followed by its Elf64_Vernaux entries.
        var flagsOffsets = new Dictionary<(string, string), int>();
        int p = verneedOff;
        ushort versionIndex = 2; // vna_other: the index .gnu.version would use; 0 and 1 are reserved
        for (int i = 0; i < needs.Count; i++)
        {
            var (file, versions) = needs[i];
            W16(b, p, 1);                                  // vn_version
            W16(b, p + 2, (ushort)versions.Length);        // vn_cnt
            W32(b, p + 4, dynstr[file]);                   // vn_file
            W32(b, p + 8, 16);                             // vn_aux
            W32(b, p + 12, i == needs.Count - 1 ? 0u : (uint)(16 + 16 * versions.Length)); // vn_next
            int a = p + 16;
            for (int j = 0; j < versions.Length; j++, a += 16)
            {
                W32(b, a, ElfHash(versions[j].Version));     // vna_hash
                W16(b, a + 4, versions[j].Flags);            // vna_flags
                W16(b, a + 6, versionIndex++);               // vna_other
                W32(b, a + 8, dynstr[versions[j].Version]);  // vna_name
                W32(b, a + 12, j == versions.Length - 1 ? 0u : 16u); // vna_next
                flagsOffsets[(file, versions[j].Version)] = a + 4;
            }
            p = a;
        }

        // .gnu.version_d: each Elf64_Verdef directly followed by its one Elf64_Verdaux.
        p = verdefOff;
        for (int i = 0; i < defNames.Count; i++, p += 28)
        {
            W16(b, p, 1);                                  // vd_version
            W16(b, p + 2, (ushort)(i == 0 ? 1 : 0));       // vd_flags: VER_FLG_BASE on the first
            W16(b, p + 4, (ushort)(i + 1));                // vd_ndx
            W16(b, p + 6, 1);                              // vd_cnt
            W32(b, p + 8, ElfHash(defNames[i]));           // vd_hash
            W32(b, p + 12, 20);                            // vd_aux
            W32(b, p + 16, i == defNames.Count - 1 ? 0u : 28u); // vd_next
            W32(b, p + 20, dynstr[defNames[i]]);           // vda_name
            W32(b, p + 24, 0);                             // vda_next
        }

        const uint ShtStrtab = 3, ShtGnuVerneed = 0x6ffffffe, ShtGnuVerdef = 0x6ffffffd;
        const ulong ShfAlloc = 2;
        void Shdr(int index, string name, uint type, ulong flags, int offset, int size, uint link, uint info, ulong align)
        {
            int h = shoff + 64 * index;
            W32(b, h, shstrtab[name]);
            W32(b, h + 4, type);
            W64(b, h + 8, flags);
            W64(b, h + 16, flags == ShfAlloc ? (ulong)offset : 0); // sh_addr: loaded at its file offset
            W64(b, h + 24, (ulong)offset);
            W64(b, h + 32, (ulong)size);
            W32(b, h + 40, link);
            W32(b, h + 44, info);
            W64(b, h + 48, align);
        }
        Shdr(1, ".shstrtab", ShtStrtab, 0, shstrOff, shstrtab.Length, 0, 0, 1);
        Shdr(2, ".dynstr", ShtStrtab, ShfAlloc, dynstrOff, dynstr.Length, 0, 0, 1);
        if (verneedIndex > 0) Shdr(verneedIndex, ".gnu.version_r", ShtGnuVerneed, ShfAlloc, verneedOff, verneedSize, 2, (uint)needs.Count, 8);
        if (verdefIndex > 0) Shdr(verdefIndex, ".gnu.version_d", ShtGnuVerdef, ShfAlloc, verdefOff, verdefSize, 2, (uint)defNames.Count, 8);

        return new Image
        {
            Bytes = b, SectionHeaderTable = shoff, DynstrOffset = dynstrOff, DynstrSize = dynstr.Length,
            VerneedIndex = verneedIndex, VerneedOffset = verneedOff, VerdefIndex = verdefIndex, VerdefOffset = verdefOff,
            FlagsOffsets = flagsOffsets,
        };
    }

    static int Align8(int x) => (x + 7) & ~7;

    // The SysV ELF hash that vna_hash and vd_hash hold (readelf does not check it, ld.so compares it).
    static uint ElfHash(string s)
    {
        uint h = 0;
        foreach (char c in s)
        {
            h = (h << 4) + c;
            uint g = h & 0xf0000000;
            if (g != 0) h ^= g >> 24;
            h &= ~g;
        }
        return h;
    }

    static void W16(byte[] b, int o, ushort v) => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(o), v);
    static void W32(byte[] b, int o, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(o), v);
    static void W64(byte[] b, int o, ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(o), v);

    /// <summary>An ELF string table: starts with the empty string, each name once, NUL-terminated.</summary>
    sealed class Strtab
    {
        readonly List<byte> bytes = new() { 0 };
        readonly Dictionary<string, uint> index = new(StringComparer.Ordinal);
        public void Add(string s)
        {
            if (index.ContainsKey(s)) return;
            index[s] = (uint)bytes.Count;
            bytes.AddRange(Encoding.ASCII.GetBytes(s));
            bytes.Add(0);
        }
        public uint this[string s] => index[s];
        public int Length => bytes.Count;
        public byte[] Bytes => bytes.ToArray();
    }
}
