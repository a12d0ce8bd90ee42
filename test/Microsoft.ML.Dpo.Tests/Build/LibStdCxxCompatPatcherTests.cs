using System.Text;
using Microsoft.ML.Dpo.Build;

namespace Microsoft.ML.Dpo.Tests.Build;

[TestClass]
public sealed class LibStdCxxCompatPatcherTests
{
    // ---- A minimal ELF64 shared-object fixture with .dynsym, .dynstr, .gnu.version and .gnu.version_r ----

    sealed class Fixture
    {
        public byte[] Bytes = [];
        public int DynstrOffset, OldNameOffset, VersymOffset, VerneedAux34, VerneedAux32;
    }

    static Fixture BuildElf(bool requireNewVersion = true, bool importOldSymbol = true)
    {
        var strtab = new MemoryStream();
        int Add(string s) { int o = (int)strtab.Length; var b = Encoding.ASCII.GetBytes(s + "\0"); strtab.Write(b); return o; }
        Add("");
        int lib = Add("libstdc++.so.6"), v34 = Add("GLIBCXX_3.4"), v32 = Add("GLIBCXX_3.4.32");
        int oldName = Add(importOldSymbol ? LibStdCxxCompatPatcher.OldSymbol : "_ZNSt6thread4joinEv");
        int other = Add("_ZNSt8ios_baseD2Ev");
        byte[] dynstr = strtab.ToArray();

        var dynsym = new byte[3 * 24];
        BitConverter.GetBytes(oldName).CopyTo(dynsym, 24);
        BitConverter.GetBytes(other).CopyTo(dynsym, 48);
        var versym = new byte[6];
        BitConverter.GetBytes((ushort)(requireNewVersion ? 3 : 2)).CopyTo(versym, 2);
        BitConverter.GetBytes((ushort)2).CopyTo(versym, 4);

        int auxCount = requireNewVersion ? 2 : 1;
        var verneed = new byte[16 + 16 * auxCount];
        BitConverter.GetBytes((ushort)1).CopyTo(verneed, 0);
        BitConverter.GetBytes((ushort)auxCount).CopyTo(verneed, 2);
        BitConverter.GetBytes(lib).CopyTo(verneed, 4);
        BitConverter.GetBytes(16).CopyTo(verneed, 8);
        void Aux(int at, ushort index, int name, int next)
        {
            BitConverter.GetBytes((ushort)index).CopyTo(verneed, at + 6);
            BitConverter.GetBytes(name).CopyTo(verneed, at + 8);
            BitConverter.GetBytes(next).CopyTo(verneed, at + 12);
        }
        Aux(16, 2, v34, requireNewVersion ? 16 : 0);
        if (requireNewVersion) Aux(32, 3, v32, 0);

        var file = new MemoryStream();
        file.Write(new byte[64]);
        long Put(byte[] b) { long o = file.Length; file.Write(b); return o; }
        long oSym = Put(dynsym), oStr = Put(dynstr), oVer = Put(versym), oNeed = Put(verneed);
        while (file.Length % 8 != 0) file.WriteByte(0);
        long shoff = file.Length;
        void Header(uint type, long offset, long size, uint link, uint info)
        {
            var h = new byte[64];
            BitConverter.GetBytes(type).CopyTo(h, 4);
            BitConverter.GetBytes(offset).CopyTo(h, 24);
            BitConverter.GetBytes(size).CopyTo(h, 32);
            BitConverter.GetBytes(link).CopyTo(h, 40);
            BitConverter.GetBytes(info).CopyTo(h, 44);
            file.Write(h);
        }
        Header(0, 0, 0, 0, 0);
        Header(11, oSym, dynsym.Length, 2, 1);
        Header(3, oStr, dynstr.Length, 0, 0);
        Header(0x6fffffff, oVer, versym.Length, 1, 0);
        Header(0x6ffffffe, oNeed, verneed.Length, 2, 1);
        byte[] bytes = file.ToArray();
        new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F', 2, 1, 1 }.CopyTo(bytes, 0);
        BitConverter.GetBytes(shoff).CopyTo(bytes, 0x28);
        BitConverter.GetBytes((ushort)64).CopyTo(bytes, 0x3A);
        BitConverter.GetBytes((ushort)5).CopyTo(bytes, 0x3C);
        return new Fixture
        {
            Bytes = bytes, DynstrOffset = (int)oStr, OldNameOffset = oldName, VersymOffset = (int)oVer,
            VerneedAux34 = (int)oNeed + 16, VerneedAux32 = (int)oNeed + 32,
        };
    }

    [TestMethod]
    public void PatchesTheThreePlacesAndNothingElse()
    {
        var f = BuildElf();
        byte[] before = (byte[])f.Bytes.Clone();
        Assert.AreEqual(LibStdCxxPatchOutcome.Patched, LibStdCxxCompatPatcher.PatchInMemory("fixture", f.Bytes));

        int nameAt = f.DynstrOffset + f.OldNameOffset;
        string renamed = Encoding.ASCII.GetString(f.Bytes, nameAt, LibStdCxxCompatPatcher.OldSymbol.Length);
        Assert.AreEqual(LibStdCxxCompatPatcher.NewSymbol + new string('\0', LibStdCxxCompatPatcher.OldSymbol.Length - LibStdCxxCompatPatcher.NewSymbol.Length), renamed);
        Assert.AreEqual(2, BitConverter.ToUInt16(f.Bytes, f.VersymOffset + 2), "symbol now bound to GLIBCXX_3.4's index");
        Assert.AreEqual(2, BitConverter.ToUInt16(f.Bytes, f.VerneedAux32 + 4) & 2, "GLIBCXX_3.4.32 marked weak");
        Assert.AreEqual(0, BitConverter.ToUInt16(f.Bytes, f.VerneedAux34 + 4), "GLIBCXX_3.4 left alone");

        var changed = Enumerable.Range(0, before.Length).Where(i => before[i] != f.Bytes[i]).ToArray();
        Assert.IsTrue(changed.All(i => (i >= nameAt && i < nameAt + LibStdCxxCompatPatcher.OldSymbol.Length)
                                       || i == f.VersymOffset + 2 || i == f.VerneedAux32 + 4), "only the three edits");
    }

    [TestMethod]
    public void SecondPatchIsANoOp()
    {
        var f = BuildElf();
        LibStdCxxCompatPatcher.PatchInMemory("fixture", f.Bytes);
        byte[] once = (byte[])f.Bytes.Clone();
        Assert.AreEqual(LibStdCxxPatchOutcome.AlreadyPatched, LibStdCxxCompatPatcher.PatchInMemory("fixture", f.Bytes));
        CollectionAssert.AreEqual(once, f.Bytes);
    }

    [TestMethod]
    public void FileThatDoesNotNeedTheNewVersionIsLeftAlone()
    {
        var f = BuildElf(requireNewVersion: false);
        byte[] before = (byte[])f.Bytes.Clone();
        Assert.AreEqual(LibStdCxxPatchOutcome.NotNeeded, LibStdCxxCompatPatcher.PatchInMemory("fixture", f.Bytes));
        CollectionAssert.AreEqual(before, f.Bytes);
    }

    [TestMethod]
    public void NewVersionThroughAnotherSymbolIsRefused()
    {
        var f = BuildElf(importOldSymbol: false);
        var e = Assert.ThrowsExactly<LibStdCxxPatchException>(() => LibStdCxxCompatPatcher.PatchInMemory("fixture.so", f.Bytes));
        StringAssert.Contains(e.Message, "fixture.so");
    }

    [TestMethod]
    public void InvalidFilesFailWithAClearMessageAndAreNotWritten()
    {
        using var dir = new TempDirectory();
        var cases = new Dictionary<string, byte[]>
        {
            ["not-elf.so"] = Encoding.ASCII.GetBytes("this is not an ELF file, just text padding it to more than sixty-four bytes....."),
            ["truncated.so"] = BuildElf().Bytes[..200],
            ["elf32.so"] = WithByte(BuildElf().Bytes, 4, 1),
            ["big-endian.so"] = WithByte(BuildElf().Bytes, 5, 2),
        };
        foreach (var (name, bytes) in cases)
        {
            string path = dir.Combine(name);
            File.WriteAllBytes(path, bytes);
            var e = Assert.ThrowsExactly<LibStdCxxPatchException>(() => LibStdCxxCompatPatcher.Patch(path), name);
            StringAssert.Contains(e.Message, path);
            CollectionAssert.AreEqual(bytes, File.ReadAllBytes(path), name + " must be untouched");
            Assert.AreEqual(1, Directory.GetFiles(dir.Path, name + "*").Length, "no temporary file left behind");
        }
    }

    [TestMethod]
    public void PatchOnDiskReplacesTheFileAtomically()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("lib.so");
        var f = BuildElf();
        File.WriteAllBytes(path, f.Bytes);
        Assert.AreEqual(LibStdCxxPatchOutcome.Patched, LibStdCxxCompatPatcher.Patch(path));
        Assert.AreEqual(LibStdCxxPatchOutcome.AlreadyPatched, LibStdCxxCompatPatcher.Patch(path));
        Assert.AreEqual(f.Bytes.Length, new FileInfo(path).Length);
        CollectionAssert.AreEquivalent(new[] { path }, Directory.GetFiles(dir.Path));
    }

    [TestMethod]
    public void RealLibTorchSharpFromTheNuGetCacheIsPatched()
    {
        string home = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string original = Path.Combine(home, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (!File.Exists(original)) Assert.Inconclusive("Skipped: TorchSharp's Linux native library is not in the NuGet cache at " + original);
        using var dir = new TempDirectory();
        string copy = dir.Combine("libLibTorchSharp.so");
        File.Copy(original, copy);
        Assert.AreEqual(LibStdCxxPatchOutcome.Patched, LibStdCxxCompatPatcher.Patch(copy));
        Assert.AreEqual(LibStdCxxPatchOutcome.AlreadyPatched, LibStdCxxCompatPatcher.Patch(copy));
        byte[] a = File.ReadAllBytes(original), b = File.ReadAllBytes(copy);
        Assert.AreEqual(a.Length, b.Length);
        int changedBytes = Enumerable.Range(0, a.Length).Count(i => a[i] != b[i]);
        Assert.IsTrue(changedBytes is > 0 and <= 30, $"{changedBytes} bytes changed; the fix touches one name, one version index and one flag");
        int at = IndexOf(b, Encoding.ASCII.GetBytes(LibStdCxxCompatPatcher.NewSymbol + "\0"));
        Assert.IsTrue(at > 0);
        // The static symbol table (.strtab) may keep the old name; the dynamic one the loader reads loses it.
        byte[] old = Encoding.ASCII.GetBytes(LibStdCxxCompatPatcher.OldSymbol + "\0");
        Assert.AreEqual(Count(a, old) - 1, Count(b, old));
    }

    static byte[] WithByte(byte[] bytes, int index, byte value) { bytes[index] = value; return bytes; }

    static int IndexOf(byte[] haystack, byte[] needle) => haystack.AsSpan().IndexOf(needle);

    static int Count(byte[] haystack, byte[] needle)
    {
        int n = 0;
        for (int i = 0, j; (j = haystack.AsSpan(i).IndexOf(needle)) >= 0; i += j + 1) n++;
        return n;
    }
}
