namespace Vhostfsd.FusePassthrough;

/// <summary>What <see cref="FuseServer.Triage"/> tells the device loop about a request before it runs.</summary>
public enum RequestTriage
{
    /// <summary>Quick: run it on the ring's own thread.</summary>
    Short,
    /// <summary>May wait for long (a lock, a sync, a flush, a big copy or allocation).</summary>
    MayBlock,
    /// <summary>A READ at or above the size the caller asked about: a long copy, but no wait.</summary>
    LargeRead,
}
