// Each test starts a daemon and mounts; on a small CI machine, running them side by side only
// makes the lock-wait timings less telling.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
