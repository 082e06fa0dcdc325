// Marks symbol-version requirements of an ELF shared library as weak, so that the dynamic loader accepts a
// system library that lacks those versions.
//
// Why: TorchSharp 0.107's libLibTorchSharp.so was linked against GCC 13's libstdc++ and so asks for
// GLIBCXX_3.4.32 (for std::ios_base_library_init(), which it references but never calls). Debian 12 ships
// libstdc++ 12 (up to GLIBCXX_3.4.30), and the loader refuses the whole library. A requirement flagged
// VER_FLG_WEAK in .gnu.version_r is only a warning for ld.so (glibc elf/dl-version.c, match_symbol), so a
// copy with that one flag set loads. We only ever flag versions the system library does not define.
//
// The ELF structures (System V gABI, "Symbol Versioning" in the LSB core spec):
//   Elf64_Ehdr: e_shoff @0x28 (8), e_shentsize @0x3A, e_shnum @0x3C, e_shstrndx @0x3E (2 each)
//   Elf64_Shdr (64 bytes): sh_type @4, sh_offset @24, sh_size @32, sh_link @40 (string table), sh_info @44 (count)
//   Elf64_Verneed (16): vn_version, vn_cnt (2 each), vn_file, vn_aux, vn_next (4 each)
//   Elf64_Vernaux (16): vna_hash (4), vna_flags, vna_other (2 each), vna_name, vna_next (4 each)
//   Elf64_Verdef (20): vd_version, vd_flags, vd_ndx, vd_cnt (2 each), vd_hash, vd_aux, vd_next (4 each)
//   Elf64_Verdaux (8): vda_name, vda_next (4 each)
// This file is compiled twice: into Ssm.Backbone (SSM_LIBRARY defined) and, by MSBuild's RoslynCodeTaskFactory,
// into the build task at the bottom (netstandard2.0 references), so it sticks to APIs both have.
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace Ssm.Backbone.Native
{
    /// <summary>One entry of .gnu.version_r: library <see cref="File"/> must provide <see cref="Version"/>.</summary>
    public sealed class ElfVersionNeed
    {
        public ElfVersionNeed(string file, string version, bool weak, int flagsOffset)
        {
            File = file; Version = version; Weak = weak; FlagsOffset = flagsOffset;
        }
        public string File { get; }
        public string Version { get; }
        public bool Weak { get; }
        /// <summary>Byte offset of this entry's vna_flags in the file.</summary>
        public int FlagsOffset { get; }
    }

    public static class ElfVersionPatcher
    {
        public const ushort VerFlgWeak = 0x2;
        const uint ShtGnuVerdef = 0x6ffffffd;
        const uint ShtGnuVerneed = 0x6ffffffe;

        /// <summary>Every version requirement (.gnu.version_r) of a 64-bit little-endian ELF image.</summary>
        public static List<ElfVersionNeed> ReadVersionNeeds(byte[] elf)
        {
            var result = new List<ElfVersionNeed>();
            foreach (var sec in Sections(elf))
            {
                if (sec.Type != ShtGnuVerneed) continue;
                var strtab = StringTable(elf, sec.Link);
                long p = sec.Offset;
                for (uint i = 0; i < sec.Info; i++)
                {
                    Within(sec, p, 16, "Elf64_Verneed");
                    int cnt = U16(elf, p + 2);
                    string file = Str(elf, strtab, U32(elf, p + 4));
                    long a = p + U32(elf, p + 8);
                    for (int j = 0; j < cnt; j++)
                    {
                        Within(sec, a, 16, "Elf64_Vernaux");
                        int flags = U16(elf, a + 4);
                        string name = Str(elf, strtab, U32(elf, a + 8));
                        result.Add(new ElfVersionNeed(file, name, (flags & VerFlgWeak) != 0, checked((int)(a + 4))));
                        uint next = U32(elf, a + 12);
                        if (next == 0) break;
                        a += next;
                    }
                    uint vnNext = U32(elf, p + 12);
                    if (vnNext == 0) break;
                    p += vnNext;
                }
            }
            return result;
        }

        /// <summary>Every version name a library defines (.gnu.version_d), e.g. GLIBCXX_3.4.30.</summary>
        public static HashSet<string> ReadVersionDefinitions(byte[] elf)
        {
            var result = new HashSet<string>(StringComparer.Ordinal);
            foreach (var sec in Sections(elf))
            {
                if (sec.Type != ShtGnuVerdef) continue;
                var strtab = StringTable(elf, sec.Link);
                long p = sec.Offset;
                for (uint i = 0; i < sec.Info; i++)
                {
                    Within(sec, p, 20, "Elf64_Verdef");
                    int cnt = U16(elf, p + 6);
                    if (cnt > 0)
                    {
                        long aux = p + U32(elf, p + 12);
                        Within(sec, aux, 8, "Elf64_Verdaux");
                        result.Add(Str(elf, strtab, U32(elf, aux))); // the first Verdaux names the version itself
                    }
                    uint next = U32(elf, p + 16);
                    if (next == 0) break;
                    p += next;
                }
            }
            return result;
        }

        /// <summary>
        /// The versions that <paramref name="needer"/> requires (non-weak) from library <paramref name="soname"/>
        /// but that <paramref name="provided"/> does not define.
        /// </summary>
        public static List<ElfVersionNeed> MissingVersions(byte[] needer, string soname, ICollection<string> provided)
        {
            var missing = new List<ElfVersionNeed>();
            foreach (var n in ReadVersionNeeds(needer))
                if (n.File == soname && !n.Weak && !provided.Contains(n.Version)) missing.Add(n);
            return missing;
        }

        /// <summary>Sets VER_FLG_WEAK on the given requirements, in place. Returns how many changed.</summary>
        public static int MarkWeak(byte[] elf, IEnumerable<ElfVersionNeed> needs)
        {
            int changed = 0;
            foreach (var n in needs)
            {
                int flags = U16(elf, n.FlagsOffset);
                if ((flags & VerFlgWeak) != 0) continue;
                flags |= VerFlgWeak;
                elf[n.FlagsOffset] = (byte)flags;
                elf[n.FlagsOffset + 1] = (byte)(flags >> 8);
                changed++;
            }
            return changed;
        }

        /// <summary>The system's copy of a library (e.g. libstdc++.so.6) in the loader's default directories, or null.</summary>
        public static string? FindSystemLibrary(string soname)
        {
            string[] dirs =
            {
                "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                "/lib64", "/usr/lib64", "/lib", "/usr/lib",
            };
            foreach (var d in dirs)
            {
                var p = Path.Combine(d, soname);
                if (File.Exists(p)) return p;
            }
            return null;
        }

        /// <summary>
        /// Patches <paramref name="libraryPath"/> (atomically: temp file + rename, keeping its timestamp) so that
        /// its requirements on <paramref name="soname"/> that the system library at <paramref name="systemLibrary"/>
        /// lacks become weak. Returns the versions patched (empty: nothing to do, file untouched).
        /// </summary>
        public static List<string> PatchFile(string libraryPath, string systemLibrary, string soname)
        {
            var provided = ReadVersionDefinitions(File.ReadAllBytes(systemLibrary));
            var elf = File.ReadAllBytes(libraryPath);
            var missing = MissingVersions(elf, soname, provided);
            var names = new List<string>();
            if (missing.Count == 0) return names;
            MarkWeak(elf, missing);
            foreach (var m in missing) names.Add(m.Version);
            var stamp = File.GetLastWriteTimeUtc(libraryPath);
            var tmp = libraryPath + ".patch-" + Guid.NewGuid().ToString("N") + ".tmp";
            try
            {
                File.Copy(libraryPath, tmp); // a copy first, so the new file keeps the old one's mode (NuGet's 0744)
                File.WriteAllBytes(tmp, elf);
                File.SetLastWriteTimeUtc(tmp, stamp); // an unchanged timestamp keeps incremental copies from undoing us
                // Rename, never write in place: the output file may be a hard link into the NuGet cache. On Unix
                // File.Replace is one rename(2), so readers see the old or the new file, never none.
                File.Replace(tmp, libraryPath, null);
            }
            finally
            {
                if (File.Exists(tmp)) File.Delete(tmp);
            }
            return names;
        }

        // ---- raw ELF reading with bounds checks: malformed input is an InvalidDataException, never a crash ----

        struct Section
        {
            public uint Type; public long Offset; public long Size; public uint Link; public uint Info;
        }

        static List<Section> Sections(byte[] elf)
        {
            if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
                throw new InvalidDataException("not an ELF file");
            if (elf[4] != 2) throw new InvalidDataException("only 64-bit ELF files are supported");
            if (elf[5] != 1) throw new InvalidDataException("only little-endian ELF files are supported");
            long shoff = (long)U64(elf, 0x28);
            int shentsize = U16(elf, 0x3A), shnum = U16(elf, 0x3C);
            if (shoff == 0 || shnum == 0) throw new InvalidDataException("ELF file has no section headers");
            if (shentsize < 64) throw new InvalidDataException("ELF section header size " + shentsize + " is too small");
            var list = new List<Section>(shnum);
            for (int i = 0; i < shnum; i++)
            {
                long h = shoff + (long)i * shentsize;
                Need(elf, h, 64, "section header " + i);
                var s = new Section
                {
                    Type = U32(elf, h + 4),
                    Offset = (long)U64(elf, h + 24),
                    Size = (long)U64(elf, h + 32),
                    Link = U32(elf, h + 40),
                    Info = U32(elf, h + 44),
                };
                if (s.Type != 8 /* SHT_NOBITS */ && s.Type != 0) Need(elf, s.Offset, s.Size, "section " + i);
                list.Add(s);
            }
            return list;
        }

        static Section StringTable(byte[] elf, uint index)
        {
            var all = Sections(elf);
            if (index >= all.Count) throw new InvalidDataException("string table index " + index + " out of range");
            // Sections() bounds-checks only sections with contents; a string table must be one (SHT_STRTAB).
            if (all[(int)index].Type != 3) throw new InvalidDataException("section " + index + " is not a string table");
            return all[(int)index];
        }

        static string Str(byte[] elf, Section strtab, uint offset)
        {
            if (offset >= strtab.Size) throw new InvalidDataException("string offset " + offset + " outside its table");
            long start = strtab.Offset + offset, end = start;
            long limit = strtab.Offset + strtab.Size;
            while (end < limit && elf[end] != 0) end++;
            if (end >= limit) throw new InvalidDataException("unterminated string in ELF string table");
            return Encoding.ASCII.GetString(elf, (int)start, (int)(end - start));
        }

        static void Need(byte[] elf, long offset, long size, string what)
        {
            if (offset < 0 || size < 0 || offset > elf.Length || size > elf.Length - offset)
                throw new InvalidDataException(what + " lies outside the file (truncated or malformed ELF)");
        }

        // Version entries must lie inside their own section: anything else is garbage, and MarkWeak would write there.
        static void Within(Section sec, long offset, long size, string what)
        {
            if (offset < sec.Offset || size > sec.Size || offset - sec.Offset > sec.Size - size)
                throw new InvalidDataException(what + " lies outside its section (malformed ELF)");
        }

        static int U16(byte[] b, long o) { Need(b, o, 2, "field"); return b[o] | (b[o + 1] << 8); }
        static uint U32(byte[] b, long o) { Need(b, o, 4, "field"); return (uint)(b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)); }
        static ulong U64(byte[] b, long o) { Need(b, o, 8, "field"); return U32(b, o) | ((ulong)U32(b, o + 4) << 32); }
    }

#if !SSM_LIBRARY
    /// <summary>
    /// MSBuild task (build/TorchSharpNative.targets): after a build or publish, patch the output folder's
    /// libLibTorchSharp.so when the system libstdc++ lacks a version it asks for. A no-op on newer systems.
    /// </summary>
    public class PatchElfVersionNeeds : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required]
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = new Microsoft.Build.Framework.ITaskItem[0];
        public string Soname { get; set; } = "libstdc++.so.6";
        public string SystemLibrary { get; set; } = "";

        public override bool Execute()
        {
            if (!System.Runtime.InteropServices.RuntimeInformation.IsOSPlatform(System.Runtime.InteropServices.OSPlatform.Linux)) return true;
            var system = string.IsNullOrEmpty(SystemLibrary) ? ElfVersionPatcher.FindSystemLibrary(Soname) : SystemLibrary;
            if (system == null)
            {
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low, "no system " + Soname + " found; nothing to patch");
                return true;
            }
            foreach (var f in Files)
            {
                var path = f.ItemSpec;
                if (!File.Exists(path)) continue;
                try
                {
                    var patched = ElfVersionPatcher.PatchFile(path, system, Soname);
                    if (patched.Count > 0)
                        Log.LogMessage(Microsoft.Build.Framework.MessageImportance.High,
                            "ssm: " + system + " lacks " + string.Join(", ", patched) + "; marked weak in " + path);
                }
                catch (Exception e)
                {
                    Log.LogError("ssm: cannot patch " + path + ": " + e.Message);
                    return false;
                }
            }
            return true;
        }
    }
#endif
}
