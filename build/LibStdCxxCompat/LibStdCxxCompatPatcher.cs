// Makes TorchSharp's libLibTorchSharp.so load on Linux systems whose libstdc++ predates GCC 13
// (Debian 12, Ubuntu 22.04). Compiled twice: as an MSBuild inline task (build/LibStdCxxCompat.targets)
// that patches the copy in a project's build output, and into the test project (with
// LIBSTDCXX_COMPAT_NO_TASK defined) so the patcher is unit tested.
//
// The only symbol of libLibTorchSharp.so that needs GLIBCXX_3.4.32 is std::ios_base_library_init()
// (_ZSt21ios_base_library_initv), which GCC 13 references from every translation unit that includes
// <iostream>. Three in-place edits, no change in file size:
//   1. .dynstr: the symbol's name becomes _ZNSt8ios_base4InitC1Ev (std::ios_base::Init::Init(), in every
//      libstdc++ since GCC 3.4; it also makes sure the standard streams are initialised), NUL padded;
//   2. .gnu.version: the symbol's version index becomes that of GLIBCXX_3.4;
//   3. .gnu.version_r: the GLIBCXX_3.4.32 requirement gets VER_FLG_WEAK, so the loader only warns.
//
// Written against netstandard2.0 APIs only, because MSBuild's inline task factory compiles it.
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace Microsoft.ML.Dpo.Build
{
    /// <summary>What <see cref="LibStdCxxCompatPatcher.Patch"/> did to a file.</summary>
    public enum LibStdCxxPatchOutcome
    {
        /// <summary>The file was rewritten (atomically) with the three edits.</summary>
        Patched,
        /// <summary>The file carries the edits already; nothing was written.</summary>
        AlreadyPatched,
        /// <summary>The file does not require GLIBCXX_3.4.32 through the known symbol; nothing was written.</summary>
        NotNeeded,
    }

    /// <summary>Raised when a file is not the ELF layout the patcher expects; the file is left untouched.</summary>
    public sealed class LibStdCxxPatchException : Exception
    {
        /// <summary>Creates the exception for <paramref name="path"/>.</summary>
        public LibStdCxxPatchException(string path, string reason)
            : base("Cannot apply the libstdc++ compatibility fix to '" + path + "': " + reason) { }
    }

    /// <summary>The ELF edits that let libLibTorchSharp.so load against a pre-GCC-13 libstdc++.</summary>
    public static class LibStdCxxCompatPatcher
    {
        /// <summary>The symbol that requires GLIBCXX_3.4.32.</summary>
        public const string OldSymbol = "_ZSt21ios_base_library_initv";
        /// <summary>The symbol it is redirected to (GLIBCXX_3.4).</summary>
        public const string NewSymbol = "_ZNSt8ios_base4InitC1Ev";
        /// <summary>The version that the system libstdc++ lacks.</summary>
        public const string NewVersion = "GLIBCXX_3.4.32";
        /// <summary>The version every libstdc++ since GCC 3.4 defines.</summary>
        public const string BaseVersion = "GLIBCXX_3.4";

        const uint ShtStrtab = 3, ShtDynamic = 6, ShtDynsym = 11;
        const uint ShtGnuVersym = 0x6fffffff, ShtGnuVerneed = 0x6ffffffe;
        const ushort VerFlgWeak = 0x2;
        const int SymEntrySize = 24, SectionHeaderSize = 64, DynEntrySize = 16;

        /// <summary>
        /// True where the libstdc++ the dynamic loader will use already defines GLIBCXX_3.4.32, so no patch is needed.
        /// Returns false when no libstdc++ is found in the usual places.
        /// </summary>
        public static bool SystemLibStdCxxHasNewVersion()
        {
            foreach (string dir in new[] { "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                                           "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib" })
            {
                string candidate = Path.Combine(dir, "libstdc++.so.6");
                if (File.Exists(candidate))
                    return IndexOf(File.ReadAllBytes(candidate), Encoding.ASCII.GetBytes(NewVersion + "\0"), 0) >= 0;
            }
            return false;
        }

        /// <summary>Applies the three edits to <paramref name="path"/>, writing a temporary copy and renaming it over the original.</summary>
        public static LibStdCxxPatchOutcome Patch(string path)
        {
            byte[] data = File.ReadAllBytes(path);
            LibStdCxxPatchOutcome outcome = PatchInMemory(path, data);
            if (outcome != LibStdCxxPatchOutcome.Patched)
                return outcome;

            // Copy first so the temporary file keeps the original's permissions, then overwrite and rename.
            // Renaming also breaks any hard link to the NuGet cache, which therefore is never modified.
            string temp = path + ".libstdcxx-compat.tmp";
            File.Copy(path, temp, overwrite: true);
            try
            {
                using (var stream = new FileStream(temp, FileMode.Open, FileAccess.Write))
                {
                    stream.SetLength(0);
                    stream.Write(data, 0, data.Length);
                    stream.Flush(flushToDisk: true);
                }
                File.Delete(path);
                File.Move(temp, path);
            }
            finally
            {
                if (File.Exists(temp)) File.Delete(temp);
            }
            return outcome;
        }

        /// <summary>
        /// Validates <paramref name="data"/> as an ELF64 little-endian shared object and applies the edits in memory.
        /// Throws <see cref="LibStdCxxPatchException"/> (before changing anything) when the layout is not as expected.
        /// </summary>
        public static LibStdCxxPatchOutcome PatchInMemory(string path, byte[] data)
        {
            var elf = new Elf(path, data);

            Section dynsym = elf.SingleSection(ShtDynsym, ".dynsym");
            Section versym = elf.SingleSection(ShtGnuVersym, ".gnu.version");
            Section verneed = elf.SingleSection(ShtGnuVerneed, ".gnu.version_r");
            Section dynstr = elf.Linked(dynsym, ShtStrtab);
            Section verneedStrings = elf.Linked(verneed, ShtStrtab);

            // Walk .gnu.version_r: find the version indices of GLIBCXX_3.4 and GLIBCXX_3.4.32.
            int baseIndex = -1, newIndex = -1;
            long newAuxOffset = -1;
            var verneedStringRefs = new List<long>();
            long entry = verneed.Offset;
            for (uint i = 0; i < verneed.Info; i++)
            {
                elf.Require(entry, 16, "a .gnu.version_r entry");
                verneedStringRefs.Add(elf.U32(entry + 4));
                ushort count = elf.U16(entry + 2);
                long aux = entry + elf.U32(entry + 8);
                for (int a = 0; a < count; a++)
                {
                    elf.Require(aux, 16, "a .gnu.version_r auxiliary entry");
                    uint nameOffset = elf.U32(aux + 8);
                    verneedStringRefs.Add(nameOffset);
                    string name = elf.String(verneedStrings, nameOffset);
                    if (name == BaseVersion) baseIndex = elf.U16(aux + 6) & 0x7fff;
                    if (name == NewVersion) { newIndex = elf.U16(aux + 6) & 0x7fff; newAuxOffset = aux; }
                    uint nextAux = elf.U32(aux + 12);
                    if (nextAux == 0) break;
                    aux += nextAux;
                }
                uint next = elf.U32(entry + 12);
                if (next == 0) break;
                entry += next;
            }
            if (newIndex < 0)
                return LibStdCxxPatchOutcome.NotNeeded;
            if (baseIndex < 0)
                throw new LibStdCxxPatchException(path, "it requires " + NewVersion + " but not " + BaseVersion + ", so there is no version to redirect to.");

            // Walk .dynsym: find the undefined references to the old symbol (and note every name offset in use).
            if (dynsym.Size % SymEntrySize != 0)
                throw new LibStdCxxPatchException(path, ".dynsym size " + dynsym.Size + " is not a multiple of " + SymEntrySize + ".");
            long symbolCount = dynsym.Size / SymEntrySize;
            if (versym.Size != symbolCount * 2)
                throw new LibStdCxxPatchException(path, ".gnu.version has " + versym.Size / 2 + " entries but .dynsym has " + symbolCount + ".");
            var targets = new List<long>();
            var nameRefs = new List<long>();
            bool newSymbolPresent = false;
            for (long s = 0; s < symbolCount; s++)
            {
                long sym = dynsym.Offset + s * SymEntrySize;
                uint nameOffset = elf.U32(sym);
                nameRefs.Add(nameOffset);
                string name = elf.String(dynstr, nameOffset);
                if (name == OldSymbol)
                {
                    if (elf.U16(sym + 6) != 0)
                        throw new LibStdCxxPatchException(path, OldSymbol + " is defined in the file, not imported.");
                    int version = elf.U16(versym.Offset + s * 2) & 0x7fff;
                    if (version != newIndex)
                        throw new LibStdCxxPatchException(path, OldSymbol + " has version index " + version + ", expected " + newIndex + " (" + NewVersion + ").");
                    targets.Add(s);
                }
                else if (name == NewSymbol)
                    newSymbolPresent = true;
            }

            bool weak = (elf.U16(newAuxOffset + 4) & VerFlgWeak) != 0;
            if (targets.Count == 0)
            {
                if (newSymbolPresent && weak)
                    return LibStdCxxPatchOutcome.AlreadyPatched;
                throw new LibStdCxxPatchException(path, "it requires " + NewVersion + " through symbols other than " + OldSymbol + "; this fix does not cover them.");
            }

            // The string is renamed in place: make sure nothing else shares its bytes (string tables share suffixes).
            foreach (Section dynamic in elf.SectionsOfType(ShtDynamic))
                for (long d = dynamic.Offset; d + DynEntrySize <= dynamic.Offset + dynamic.Size; d += DynEntrySize)
                {
                    long tag = (long)elf.U64(d);
                    if (tag == 1 || tag == 14 || tag == 15 || tag == 29) // DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH
                        nameRefs.Add((long)elf.U64(d + 8));
                }
            if (verneedStrings.Offset == dynstr.Offset)
                nameRefs.AddRange(verneedStringRefs);
            var renamed = new HashSet<long>();
            foreach (long s in targets)
                renamed.Add(elf.U32(dynsym.Offset + s * SymEntrySize));
            foreach (long start in renamed)
                foreach (long reference in nameRefs)
                    if (reference > start && reference < start + OldSymbol.Length)
                        throw new LibStdCxxPatchException(path, "another name shares the bytes of " + OldSymbol + " in .dynstr.");

            // All checks passed: edit.
            byte[] replacement = new byte[OldSymbol.Length];
            Encoding.ASCII.GetBytes(NewSymbol).CopyTo(replacement, 0);
            foreach (long start in renamed)
                Array.Copy(replacement, 0, data, dynstr.Offset + start, replacement.Length);
            foreach (long s in targets)
                elf.PutU16(versym.Offset + s * 2, (ushort)baseIndex);
            elf.PutU16(newAuxOffset + 4, (ushort)(elf.U16(newAuxOffset + 4) | VerFlgWeak));
            return LibStdCxxPatchOutcome.Patched;
        }

        static int IndexOf(byte[] haystack, byte[] needle, int start)
        {
            for (int i = start; i <= haystack.Length - needle.Length; i++)
            {
                int j = 0;
                while (j < needle.Length && haystack[i + j] == needle[j]) j++;
                if (j == needle.Length) return i;
            }
            return -1;
        }

        struct Section
        {
            public uint Type, Link, Info;
            public long Offset, Size;
        }

        /// <summary>A bounds-checked little-endian view of an ELF64 file's section headers.</summary>
        sealed class Elf
        {
            readonly string path;
            readonly byte[] data;
            readonly Section[] sections;

            public Elf(string path, byte[] data)
            {
                this.path = path;
                this.data = data;
                if (data.Length < 64 || data[0] != 0x7f || data[1] != (byte)'E' || data[2] != (byte)'L' || data[3] != (byte)'F')
                    throw new LibStdCxxPatchException(path, "not an ELF file.");
                if (data[4] != 2) throw new LibStdCxxPatchException(path, "not a 64-bit ELF file.");
                if (data[5] != 1) throw new LibStdCxxPatchException(path, "not a little-endian ELF file.");
                long shoff = (long)U64(0x28);
                ushort shentsize = U16(0x3A), shnum = U16(0x3C);
                if (shentsize != SectionHeaderSize)
                    throw new LibStdCxxPatchException(path, "section header size " + shentsize + ", expected " + SectionHeaderSize + ".");
                Require(shoff, (long)shnum * shentsize, "the section header table");
                sections = new Section[shnum];
                for (int i = 0; i < shnum; i++)
                {
                    long h = shoff + (long)i * shentsize;
                    sections[i] = new Section { Type = U32(h + 4), Offset = (long)U64(h + 24), Size = (long)U64(h + 32), Link = U32(h + 40), Info = U32(h + 44) };
                    if (sections[i].Type != 8) // SHT_NOBITS occupies no file bytes
                        Require(sections[i].Offset, sections[i].Size, "section " + i);
                }
            }

            public IEnumerable<Section> SectionsOfType(uint type)
            {
                foreach (Section s in sections) if (s.Type == type) yield return s;
            }

            public Section SingleSection(uint type, string name)
            {
                Section? found = null;
                foreach (Section s in SectionsOfType(type))
                {
                    if (found != null) throw new LibStdCxxPatchException(path, "more than one " + name + " section.");
                    found = s;
                }
                if (found == null) throw new LibStdCxxPatchException(path, "no " + name + " section.");
                return found.Value;
            }

            public Section Linked(Section s, uint expectedType)
            {
                if (s.Link >= sections.Length || sections[s.Link].Type != expectedType)
                    throw new LibStdCxxPatchException(path, "a section links to section " + s.Link + ", which is not a string table.");
                return sections[s.Link];
            }

            public void Require(long offset, long length, string what)
            {
                if (offset < 0 || length < 0 || offset + length > data.Length)
                    throw new LibStdCxxPatchException(path, what + " lies outside the file (offset " + offset + ", length " + length + ", file " + data.Length + " bytes).");
            }

            public string String(Section table, long offset)
            {
                if (offset >= table.Size) throw new LibStdCxxPatchException(path, "string offset " + offset + " lies outside its table.");
                long start = table.Offset + offset, end = start;
                long limit = table.Offset + table.Size;
                while (end < limit && data[end] != 0) end++;
                if (end == limit) throw new LibStdCxxPatchException(path, "unterminated string at offset " + offset + ".");
                return Encoding.ASCII.GetString(data, (int)start, (int)(end - start));
            }

            public ushort U16(long o) { Require(o, 2, "a field"); return (ushort)(data[o] | data[o + 1] << 8); }
            public uint U32(long o) { Require(o, 4, "a field"); return (uint)(data[o] | data[o + 1] << 8 | data[o + 2] << 16 | data[o + 3] << 24); }
            public ulong U64(long o) => U32(o) | (ulong)U32(o + 4) << 32;
            public void PutU16(long o, ushort v) { Require(o, 2, "a field"); data[o] = (byte)v; data[o + 1] = (byte)(v >> 8); }
        }
    }

#if !LIBSTDCXX_COMPAT_NO_TASK
    /// <summary>MSBuild task: patches each given libLibTorchSharp.so where the system needs it.</summary>
    public sealed class PatchLibTorchSharpForOldLibStdCxx : Microsoft.Build.Utilities.Task
    {
        /// <summary>The files to patch (copies in a build or publish output, never the NuGet cache).</summary>
        [Microsoft.Build.Framework.Required]
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        /// <summary>auto (patch on Linux when the system libstdc++ lacks GLIBCXX_3.4.32), always, or never.</summary>
        public string Mode { get; set; } = "auto";

        /// <inheritdoc />
        public override bool Execute()
        {
            string mode = (Mode ?? "auto").Trim().ToLowerInvariant();
            if (mode == "never") return true;
            if (mode == "auto")
            {
                if (!System.Runtime.InteropServices.RuntimeInformation.IsOSPlatform(System.Runtime.InteropServices.OSPlatform.Linux)) return true;
                if (LibStdCxxCompatPatcher.SystemLibStdCxxHasNewVersion()) return true;
            }
            else if (mode != "always")
            {
                Log.LogError("MlDpoLibStdCxxCompat must be auto, always or never; got '" + Mode + "'.");
                return false;
            }
            foreach (var item in Files)
            {
                try
                {
                    var outcome = LibStdCxxCompatPatcher.Patch(item.ItemSpec);
                    if (outcome == LibStdCxxPatchOutcome.Patched)
                        Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Normal, "libstdc++ compatibility fix applied to " + item.ItemSpec);
                }
                catch (Exception e)
                {
                    Log.LogError(e.Message);
                }
            }
            return !Log.HasLoggedErrors;
        }
    }
#endif
}
