using Xunit;

// The fuzz targets count the process's fds and mappings before and after cases, and each run is
// CPU-bound: one target at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
