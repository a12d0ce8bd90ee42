using System.CommandLine;
using Microsoft.ML.Dpo.Runtime;

namespace MlDpo.Commands;

/// <summary><c>mldpo info</c>: library and runtime versions, device and threads.</summary>
internal static class InfoCommand
{
    public static Command Create()
    {
        var command = new Command("info", "Print the library version, TorchSharp and libtorch versions, device and thread count.");
        command.SetAction(_ =>
        {
            DpoRuntimeInfo info = DpoRuntime.Describe();
            Console.WriteLine($"Microsoft.ML.Dpo {info.LibraryVersion}");
            Console.WriteLine($"TorchSharp       {info.TorchSharpVersion}");
            Console.WriteLine($"libtorch         {info.LibTorchVersion}");
            Console.WriteLine($"device           {info.DefaultDevice}{(info.CudaAvailable ? "" : " (CUDA not available)")}");
            Console.WriteLine($"threads          {info.Threads}");
            return 0;
        });
        return command;
    }
}
