using System.Diagnostics;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>A worker that polls its ring for a while after it ran dry (VhostUserBackendOptions.PollMax):
/// the driver is told not to kick meanwhile, so a request it publishes without a kick must still be
/// served; and the window adapts as <see cref="PollWindow"/> says.</summary>
public sealed class VringPollingTests : IDisposable
{
    private readonly VhostUserTestDevice _device = new(queueCount: 2, maxQueueSize: 1024);
    private readonly VhostUserTestGuest _guest = new(queueCount: 2, queueSize: 64);
    private VhostUserBackendHarness? _h;

    public void Dispose()
    {
        _h?.Dispose();
        _guest.Dispose();
    }

    private void Start(TimeSpan pollMax)
    {
        // Echo handler (the test device's default): each chain is completed inline with its bytes transformed.
        _h = new VhostUserBackendHarness(_device, new VhostUserBackendOptions { PollMax = pollMax, WorkerStopTimeout = TimeSpan.FromMinutes(1) });
        _h.Frontend.Initialize(2);
        _h.Frontend.Start(_guest.RingFeatures, _guest.MemoryRegions, _guest.Setups);
    }

    /// <summary>Publishes a 16-byte request in <paramref name="slot"/>; kicks only when told to and the
    /// ring asks for it. Returns whether the ring asked for a kick.</summary>
    private bool Publish(int slot, bool kick)
    {
        var q = _guest.Queue(0);
        ulong rd = _guest.SlotGpa(0, slot, false), wr = _guest.SlotGpa(0, slot, true);
        _guest.Bytes(rd, 16).Fill((byte)slot);
        Assert.True(q.TryAdd([(rd, 16u)], [(wr, 16u)]) >= 0);
        bool wanted = q.PublishAndCheckKick();
        if (kick && wanted)
        {
            _guest.Kick(0).Signal();
        }
        return wanted;
    }

    private bool TryReap(int slot, TimeSpan within)
    {
        var q = _guest.Queue(0);
        var deadline = DateTime.UtcNow + within;
        while (!q.TryReapUsed(out _, out uint len))
        {
            if (DateTime.UtcNow >= deadline)
            {
                return false;
            }
            _guest.WaitCall(0, 20);
        }
        Assert.Equal(EchoVringHandler.Transform((byte)slot, 1), _guest.Bytes(_guest.SlotGpa(0, slot, true), 2)[1]);
        return true;
    }

    /// <summary>Waits until the ring's next publish would (or would not) ask for a kick, and has for
    /// 100 ms: the worker has gone to sleep on its kick fd, or is polling. (While it drains, kicks
    /// are suppressed for a moment whatever it does next: a glimpse of that state proves nothing.)</summary>
    private void WaitUntilKickWanted(bool wanted)
    {
        var q = _guest.Queue(0);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        var steady = Stopwatch.StartNew();
        while (steady.ElapsedMilliseconds < 100)
        {
            if (q.WouldKickNext() != wanted)
            {
                steady.Restart();
            }
            Assert.True(DateTime.UtcNow < deadline, wanted ? "the worker never asked for kicks again" : "the worker never suppressed kicks");
            Thread.Sleep(1);
        }
    }

    [Fact]
    public void WhileTheWorkerPollsARequestPublishedWithoutAKickIsServed()
    {
        // A window far longer than the test: the worker is still polling when the second request comes.
        Start(TimeSpan.FromSeconds(30));
        Publish(0, kick: true);
        Assert.True(TryReap(0, TimeSpan.FromSeconds(10)), "the kicked request was not served");
        WaitUntilKickWanted(false);
        Assert.False(Publish(1, kick: false), "the driver was asked to kick while the worker polls");
        Assert.True(TryReap(1, TimeSpan.FromSeconds(10)), "an unkicked request was not served while the worker polled");
    }

    /// <summary>After a first request, the worker sleeps on its kick fd: a request published without
    /// a kick waits for one.</summary>
    private void AssertAnUnkickedRequestWaitsForItsKick()
    {
        Publish(0, kick: true);
        Assert.True(TryReap(0, TimeSpan.FromSeconds(10)));
        WaitUntilKickWanted(true);
        Assert.True(Publish(1, kick: false));
        Assert.False(TryReap(1, TimeSpan.FromMilliseconds(300)), "served without a kick although the worker does not poll");
        _guest.Kick(0).Signal();
        Assert.True(TryReap(1, TimeSpan.FromSeconds(10)), "not served after the kick");
    }

    [Fact]
    public void WithoutPollingAnUnkickedRequestWaitsForItsKick()
    {
        Start(TimeSpan.Zero);
        AssertAnUnkickedRequestWaitsForItsKick();
    }

    [Fact]
    public void ARingTheDeviceKeepsFromPollingSleepsAtOnce()
    {
        // Ring 0 may not poll although the back-end's maximum is far longer than the test.
        _device.PollingAllowed = index => index != 0;
        Start(TimeSpan.FromSeconds(30));
        AssertAnUnkickedRequestWaitsForItsKick();
    }

    [Fact]
    public void AfterALongRequestTheWorkerPollsLongerThanTheWindow()
    {
        // Each request keeps the worker busy 400 ms; the window is 20 ms, at most halved once by
        // the wait for the first request, and stretches up to 16 times (320 ms) after that work.
        _device.HandlerFactory = _ => new SlowEchoHandler(TimeSpan.FromMilliseconds(400));
        Start(TimeSpan.FromMilliseconds(20));
        Publish(0, kick: true);
        Assert.True(TryReap(0, TimeSpan.FromSeconds(10)));
        // Four 20 ms windows later the worker still polls: an unkicked request is served.
        Thread.Sleep(80);
        Assert.False(Publish(1, kick: false), "the driver was asked to kick 80 ms after a 400 ms request: the window did not stretch");
        Assert.True(TryReap(1, TimeSpan.FromSeconds(10)), "an unkicked request was not served while the worker polled");
    }

    /// <summary>The worker times its requests by the clock, so on a loaded machine a short request can
    /// be descheduled long enough to look long and stretch the window once; a worker that stretches
    /// after every short request fails all three tries.</summary>
    [Fact]
    public void AfterAShortRequestTheWindowDoesNotStretch()
    {
        Start(TimeSpan.FromMilliseconds(20));
        int slot = 0;
        bool askedForKick = false;
        for (int attempt = 0; attempt < 3 && !askedForKick; attempt++)
        {
            Publish(slot, kick: true);
            Assert.True(TryReap(slot, TimeSpan.FromSeconds(10)));
            Thread.Sleep(80);
            askedForKick = Publish(++slot, kick: false);
            _guest.Kick(0).Signal();
            Assert.True(TryReap(slot, TimeSpan.FromSeconds(10)));
            slot++;
        }
        Assert.True(askedForKick, "80 ms after a short request the worker still polled a 20 ms window, three times");
    }

    /// <summary>Echoes each chain after keeping the worker busy for <paramref name="busy"/>.</summary>
    private sealed class SlowEchoHandler(TimeSpan busy) : IVringHandler
    {
        public void HandleChain(OwnedChain chain, RingBacklog backlog)
        {
            Thread.Sleep(busy);
            chain.Complete(EchoVringHandler.Echo(chain));
        }
    }

    [Fact]
    public void StoppingARingWhoseWorkerPollsDoesNotWaitForTheWindowToEnd()
    {
        Start(TimeSpan.FromSeconds(30));
        Publish(0, kick: true);
        Assert.True(TryReap(0, TimeSpan.FromSeconds(10)));
        var watch = Stopwatch.StartNew();
        Assert.Equal(1u, _h!.Frontend.GetVringBase(0));
        // Far below the 30 s window (and the one-minute worker stop timeout): the poll loop saw the stop.
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"GET_VRING_BASE took {watch.Elapsed}");
        Assert.False(_h.Backend.Vrings[0].IsProcessing);
    }
}

/// <summary>The adaptive polling window, on its own.</summary>
public sealed class PollWindowTests
{
    private static long Ticks(double microseconds) => (long)(microseconds * Stopwatch.Frequency / 1_000_000);

    [Fact]
    public void StartsAtTheMaximumAndHalvesAfterEachWaitLongerThanItUntilZero()
    {
        var window = new PollWindow(TimeSpan.FromMicroseconds(50));
        Assert.Equal(Ticks(50), window.Ticks, Ticks(0.01));
        window.Waited(Ticks(20), 0);
        Assert.Equal(Ticks(50), window.Ticks, Ticks(0.01));
        // One late request halves the window; it does not throw it away.
        window.Waited(Ticks(51), 0);
        Assert.Equal(Ticks(25), window.Ticks, Ticks(0.01));
        window.Waited(Ticks(1000), 0);
        Assert.Equal(Ticks(12.5), window.Ticks, Ticks(0.01));
        window.Waited(Ticks(1000), 0);
        Assert.Equal(Ticks(6.25), window.Ticks, Ticks(0.01));
        // Half of 6.25 µs is below the smallest step (4 µs): polling stops.
        window.Waited(Ticks(1000), 0);
        Assert.Equal(0, window.Ticks);
        window.Waited(Ticks(1000), 0);
        Assert.Equal(0, window.Ticks);
    }

    [Fact]
    public void ShortWaitsGrowItFromTheSmallestStepByDoublingUpToTheMaximum()
    {
        var window = new PollWindow(TimeSpan.FromMicroseconds(50));
        while (window.Ticks > 0)
        {
            window.Waited(Ticks(1000), 0);
        }
        window.Waited(Ticks(30), 0);
        Assert.Equal(Ticks(PollWindow.Smallest.TotalMicroseconds), window.Ticks, Ticks(0.01));
        window.Waited(Ticks(30), 0);
        Assert.Equal(2 * Ticks(PollWindow.Smallest.TotalMicroseconds), window.Ticks, Ticks(0.02));
        // A wait the window already covers (the worker was woken for another reason) changes nothing.
        window.Waited(Ticks(1), 0);
        Assert.Equal(2 * Ticks(PollWindow.Smallest.TotalMicroseconds), window.Ticks, Ticks(0.02));
        for (int i = 0; i < 10; i++)
        {
            window.Waited(Ticks(49), 0);
        }
        Assert.Equal(Ticks(50), window.Ticks, Ticks(0.01));
    }

    [Fact]
    public void AfterLongWorkTheWindowStretchesWithItUpToSixteenTimes()
    {
        var window = new PollWindow(TimeSpan.FromMicroseconds(50));
        // Work no longer than the maximum: the window as it is.
        Assert.Equal(Ticks(50), window.After(0), Ticks(0.01));
        Assert.Equal(Ticks(50), window.After(Ticks(40)), Ticks(0.01));
        // A 1 MiB request's 200 µs: four times the window.
        Assert.Equal(Ticks(200), window.After(Ticks(200)), Ticks(0.05));
        Assert.Equal(Ticks(50) * PollWindow.LongestStretch, window.After(Ticks(1_000_000)), Ticks(0.5));
        // A halved window stretches by as much.
        window.Waited(Ticks(51), 0);
        Assert.Equal(Ticks(100), window.After(Ticks(200)), Ticks(0.05));
    }

    [Fact]
    public void AWaitAfterLongWorkIsJudgedAgainstTheStretchedWindow()
    {
        var window = new PollWindow(TimeSpan.FromMicroseconds(50));
        // 150 µs after 200 µs of work is within the stretched 200 µs: the window stays.
        window.Waited(Ticks(150), Ticks(200));
        Assert.Equal(Ticks(50), window.Ticks, Ticks(0.01));
        // The same wait after short work is longer than the maximum: halved.
        window.Waited(Ticks(150), Ticks(10));
        Assert.Equal(Ticks(25), window.Ticks, Ticks(0.01));
        // Again 150 µs after 200 µs of work: longer than the halved window stretched (100 µs),
        // within the maximum stretched (200 µs): the window doubles back.
        window.Waited(Ticks(150), Ticks(200));
        Assert.Equal(Ticks(50), window.Ticks, Ticks(0.01));
        // Longer than the stretched maximum: halved.
        window.Waited(Ticks(250), Ticks(200));
        Assert.Equal(Ticks(25), window.Ticks, Ticks(0.01));
    }

    [Fact]
    public void AZeroMaximumNeverPolls()
    {
        var window = new PollWindow(TimeSpan.Zero);
        Assert.Equal(0, window.Ticks);
        window.Waited(0, 0);
        Assert.Equal(0, window.Ticks);
        window.Waited(Ticks(1), 0);
        Assert.Equal(0, window.Ticks);
        Assert.Equal(0, window.After(Ticks(1000)));
        window.Waited(Ticks(1), Ticks(1000));
        Assert.Equal(0, window.Ticks);
    }
}
