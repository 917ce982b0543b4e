using Xunit;

// Each test starts daemons and measures their fds and memory: one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
