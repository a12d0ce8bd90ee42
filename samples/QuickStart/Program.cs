using Microsoft.ML.Dpo.Runtime;

// The quick start grows with the library: today it checks that the native runtime loads and says where it runs.
DpoRuntimeInfo info = DpoRuntime.Describe();
Console.WriteLine($"Microsoft.ML.Dpo {info.LibraryVersion} on TorchSharp {info.TorchSharpVersion} (libtorch {info.LibTorchVersion}), device {info.DefaultDevice}, {info.Threads} threads.");
