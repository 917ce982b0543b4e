using Vhostfsd.FusePassthrough;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseDevice;

/// <summary>How a <see cref="FuseDeviceSession"/> ended.</summary>
internal enum FuseDeviceSessionEnd
{
    /// <summary>Every reader saw ENODEV: the file system was unmounted (umount, fusermount3 -u) or
    /// its connection aborted.</summary>
    Unmounted,

    /// <summary>Stop was requested and the readers did not all see ENODEV within the grace period
    /// (a lazily unmounted file system still in use): they were left blocked in read(2), and the
    /// connection ends when the process closes its /dev/fuse fds.</summary>
    Abandoned,

    /// <summary>A reader stopped on an error other than ENODEV.</summary>
    Failed,
}

/// <summary>Serves one host FUSE connection with reader threads (<see cref="FuseDeviceReader"/>):
/// one per fd cloned from the session fd (one per CPU), each reading, running and answering its own
/// requests, so no request waits for a hand-off.
/// <para>A request that may block for long (SETLKW, FSYNC, FLUSH, ...; <see cref="FuseServer.Triage"/>)
/// runs on the reader that read it. So that lock waits never take every reader, the session keeps at
/// least as many readers outside such requests as it started with: when a reader enters one and that
/// would leave fewer, a spare reader is started on the session fd (shared by the spares; a reply goes
/// back through the fd its request came from). Spares stay, like the blocking-request pool's extra
/// threads, up to <see cref="MaxSpareReaders"/>.</para></summary>
internal sealed class FuseDeviceSession : IDisposable
{
    /// <summary>Spare readers started at most (each holds two buffers of
    /// <see cref="FuseDeviceReader.BufferSize"/>, resident only as far as used).</summary>
    public const int MaxSpareReaders = 64;

    private readonly FuseServer _server;
    private readonly SafeFd _sessionFd;
    private readonly Logger _log;
    private readonly int _baseReaders;
    private readonly object _lock = new();
    private readonly List<FuseDeviceReader> _pending = new();
    private readonly ManualResetEventSlim _allStopped = new(false);
    private int _readers;
    private int _live;
    private int _spares;
    private int _blocking;
    private bool _stopping;
    private string? _failure;
    private long _abandonedReplies;
    private long _requests;
    private long _steadyRequests;
    private long _steadyAllocatedBytes;
    private int _refusedReplyLogged;
    private long _splicedReplies;
    private long _copiedBackReplies;
    private long _splicedWrites;
    private long _fetchedWrites;

    /// <param name="sessionFd">The fd mount(2) was given; owned by the session from now on.</param>
    /// <param name="clones">Fds cloned from it (<see cref="DevFuse.Clone"/>), one reader each;
    /// owned by their readers from now on.</param>
    /// <param name="kernelChecksPermissions">The mount has default_permissions.</param>
    /// <param name="splicers">Per clone, its reader's pipes for READ replies by reference (null
    /// entries, or a null list: that reader copies); owned by the readers from now on. Spare readers
    /// copy: pipes grown past fs.pipe-max-size can only be made before the capability drop.</param>
    /// <param name="failSpliceAssembly">Test hook, see <see cref="FuseDeviceReader"/>.</param>
    public FuseDeviceSession(FuseServer server, SafeFd sessionFd, IReadOnlyList<SafeFd> clones, bool kernelChecksPermissions, Logger log,
        IReadOnlyList<FuseSplicePipes>? splicers = null, bool failSpliceAssembly = false)
    {
        KernelChecksPermissions = kernelChecksPermissions;
        if (clones.Count == 0)
        {
            throw new ArgumentException("a session needs at least one reader fd", nameof(clones));
        }
        _server = server;
        _sessionFd = sessionFd;
        _log = log;
        _baseReaders = clones.Count;
        for (int i = 0; i < clones.Count; i++)
        {
            FuseSplicePipes splicer = splicers != null && i < splicers.Count ? splicers[i] : default;
            _pending.Add(new FuseDeviceReader(this, server, clones[i].Fd, clones[i], $"fuse-reader-{i}", splicer, failSpliceAssembly));
        }
    }

    /// <summary>The mount has default_permissions: the kernel checks file modes before it asks.</summary>
    public bool KernelChecksPermissions { get; }

    /// <summary>Readers started so far, spares included.</summary>
    public int ReaderCount => Volatile.Read(ref _readers);

    /// <summary>Spare readers started so far.</summary>
    public int SpareCount => Volatile.Read(ref _spares);

    /// <summary>Replies the kernel no longer wanted (ENOENT: the request was interrupted meanwhile).</summary>
    public long AbandonedReplies => Interlocked.Read(ref _abandonedReplies);

    /// <summary>Starts the readers and waits until the connection is gone or <paramref name="stop"/>
    /// is cancelled; after a stop, waits up to <paramref name="grace"/> for the readers to see ENODEV
    /// (whoever unmounts the file system makes them see it).</summary>
    public FuseDeviceSessionEnd Run(CancellationToken stop, TimeSpan grace)
    {
        lock (_lock)
        {
            foreach (var reader in _pending)
            {
                StartLocked(reader);
            }
            _pending.Clear();
        }
        WaitHandle.WaitAny([_allStopped.WaitHandle, stop.WaitHandle]);
        if (!_allStopped.IsSet)
        {
            lock (_lock)
            {
                _stopping = true;
            }
            _allStopped.Wait(grace);
        }
        lock (_lock)
        {
            _stopping = true;
            if (_live > 0)
            {
                return FuseDeviceSessionEnd.Abandoned;
            }
            return _failure != null ? FuseDeviceSessionEnd.Failed : FuseDeviceSessionEnd.Unmounted;
        }
    }

    /// <summary>Why a reader stopped on an error, when one did.</summary>
    public string? Failure
    {
        get
        {
            lock (_lock)
            {
                return _failure;
            }
        }
    }

    private void StartLocked(FuseDeviceReader reader)
    {
        _readers++;
        _live++;
        reader.Start();
    }

    /// <summary>A reader is about to run a request that may block for long.</summary>
    public void EnterBlocking()
    {
        int blocking = Interlocked.Increment(ref _blocking);
        if (Volatile.Read(ref _readers) - blocking >= _baseReaders)
        {
            return;
        }
        lock (_lock)
        {
            if (_stopping || _spares >= MaxSpareReaders || _readers - Volatile.Read(ref _blocking) >= _baseReaders)
            {
                return;
            }
            _spares++;
            var spare = new FuseDeviceReader(this, _server, _sessionFd.Fd, ownedFd: null, $"fuse-spare-{_spares}");
            StartLocked(spare);
            _log.Debug("Started spare FUSE reader {Spare}: {Blocking} request(s) may block", _spares, Volatile.Read(ref _blocking));
        }
    }

    public void LeaveBlocking() => Interlocked.Decrement(ref _blocking);

    public void CountAbandonedReply() => Interlocked.Increment(ref _abandonedReplies);

    /// <summary>Requests served by the readers that stopped.</summary>
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>Managed bytes the stopped readers allocated after their first
    /// <see cref="FuseDeviceReader.WarmUpRequests"/> requests, and how many requests they served
    /// meanwhile: the steady state allocates nothing per request.</summary>
    public (long Bytes, long Requests) SteadyAllocation => (Interlocked.Read(ref _steadyAllocatedBytes), Interlocked.Read(ref _steadyRequests));

    /// <summary>A stopping reader's counts.</summary>
    public void CountServed(long requests, long steadyRequests, long steadyAllocatedBytes)
    {
        Interlocked.Add(ref _requests, requests);
        Interlocked.Add(ref _steadyRequests, steadyRequests);
        Interlocked.Add(ref _steadyAllocatedBytes, steadyAllocatedBytes);
    }

    /// <summary>READ replies sent by reference through the readers' pipes, and those whose data had
    /// to be copied back into the reply buffer (stopped readers).</summary>
    public (long Spliced, long CopiedBack) SplicedReplies => (Interlocked.Read(ref _splicedReplies), Interlocked.Read(ref _copiedBackReplies));

    /// <summary>WRITEs whose data went from the pipe to the file, and those whose data had to be read
    /// into memory instead (stopped readers).</summary>
    public (long Spliced, long Fetched) SplicedWrites => (Interlocked.Read(ref _splicedWrites), Interlocked.Read(ref _fetchedWrites));

    public void CountSpliced(long spliced, long copiedBack, long splicedWrites, long fetchedWrites)
    {
        Interlocked.Add(ref _splicedReplies, spliced);
        Interlocked.Add(ref _copiedBackReplies, copiedBack);
        Interlocked.Add(ref _splicedWrites, splicedWrites);
        Interlocked.Add(ref _fetchedWrites, fetchedWrites);
    }

    /// <summary>The kernel refused a reply (a malformed reply is a bug in the server): logged once.</summary>
    public void ReplyRefused(Errno errno)
    {
        if (Interlocked.Exchange(ref _refusedReplyLogged, 1) == 0)
        {
            _log.Error("The kernel refused a FUSE reply: {Error} (further refusals are not logged)", PosixException.Describe(errno));
        }
    }

    public void ReaderStopped(FuseDeviceReader reader, string? failure)
    {
        lock (_lock)
        {
            if (failure != null)
            {
                _failure ??= failure;
                _log.Error("A FUSE reader stopped: {Failure}", failure);
            }
            // One ENODEV means the connection is gone for every reader: start no more spares.
            _stopping = true;
            if (--_live == 0)
            {
                _allStopped.Set();
            }
        }
    }

    /// <summary>Closes the session fd once no reader uses it; after <see cref="FuseDeviceSessionEnd.Abandoned"/>
    /// it stays open (a reader still blocks on it) until the process exits.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_live == 0)
            {
                _sessionFd.Dispose();
            }
        }
    }
}
