namespace Conveyor.Api.Security;

/// <summary>
/// Failed authentications per client address, and the lockouts they caused, for one kind (sign-in or
/// API key). Bounded: an entry is dropped when its window ends, or a <see cref="AuthThrottleLimits.Window"/>
/// after its last lockout ends, and beyond <c>maxEntries</c> the entries closest to expiring are dropped
/// first. Only unknown keys reach the table at all (a valid key never consults it); counting one takes
/// the lock, while <see cref="RetryAfter"/> reads an immutable snapshot of the lockouts without one, and
/// costs one volatile read while that is empty (an ended lockout leaves it at the next failure's sweep).
/// </summary>
internal sealed class FailureTable(AuthThrottleLimits limits, int maxEntries, TimeProvider clock)
{
    private readonly Dictionary<UInt128, Entry> _entries = [];
    private readonly Lock _gate = new();

    // Replaced (never mutated) under the gate: readers see a consistent snapshot without locking.
    private volatile IReadOnlyDictionary<UInt128, long> _locks = new Dictionary<UInt128, long>();
    private long _nextSweepTicks;

    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>How long the address stays locked out (its unknown keys refused with 429); null when it is not.</summary>
    public TimeSpan? RetryAfter(System.Net.IPAddress? address)
    {
        var locks = _locks;
        if (locks.Count == 0 || !locks.TryGetValue(ClientAddresses.Key(address), out var lockedUntil))
        {
            return null;
        }

        var left = lockedUntil - clock.GetUtcNow().UtcTicks;
        return left > 0 ? TimeSpan.FromTicks(left) : null;
    }

    /// <summary>Counts a failure; returns the lockout it started, if it started one.</summary>
    public TimeSpan? Fail(UInt128 address)
    {
        var now = clock.GetUtcNow().UtcTicks;
        lock (_gate)
        {
            if (now >= _nextSweepTicks || (_entries.Count >= maxEntries && !_entries.ContainsKey(address)))
            {
                Sweep(now);
            }

            if (!_entries.TryGetValue(address, out var entry) || Expiry(entry) <= now)
            {
                // New, or expired and not swept yet: its past lockouts are forgotten too.
                entry = new Entry { WindowStartTicks = now };
                _entries[address] = entry;
            }

            if (entry.LockedUntilTicks > now)
            {
                // Checked before the lock began: it is counted once, not extended.
                return null;
            }

            if (now - entry.WindowStartTicks >= limits.Window.Ticks)
            {
                entry.WindowStartTicks = now;
                entry.Failures = 0;
            }

            if (++entry.Failures < limits.MaxFailures)
            {
                return null;
            }

            entry.Lockouts++;
            var lockout = TimeSpan.FromTicks(Math.Min(
                limits.Lockout.Ticks * (1L << Math.Min(entry.Lockouts - 1, 20)),
                limits.MaxLockout.Ticks));
            entry.LockedUntilTicks = now + lockout.Ticks;
            // The next window opens when the lockout ends; the entry (and its count of lockouts) is
            // remembered for a window after that.
            entry.WindowStartTicks = entry.LockedUntilTicks;
            entry.Failures = 0;
            PublishLocks(now);
            return lockout;
        }
    }

    /// <summary>Drops expired entries; when the table is still full, the tenth closest to expiring.</summary>
    private void Sweep(long now)
    {
        _nextSweepTicks = now + Math.Min(limits.Window.Ticks, TimeSpan.TicksPerMinute);
        foreach (var (address, entry) in _entries)
        {
            if (Expiry(entry) <= now)
            {
                _entries.Remove(address);
            }
        }

        if (_entries.Count >= maxEntries)
        {
            var evict = _entries.OrderBy(pair => Expiry(pair.Value)).Take(Math.Max(1, maxEntries / 10)).Select(pair => pair.Key).ToList();
            foreach (var address in evict)
            {
                _entries.Remove(address);
            }
        }

        PublishLocks(now);
    }

    private long Expiry(Entry entry) => entry.WindowStartTicks + limits.Window.Ticks;

    private void PublishLocks(long now) =>
        _locks = _entries.Where(pair => pair.Value.LockedUntilTicks > now).ToDictionary(pair => pair.Key, pair => pair.Value.LockedUntilTicks);

    private sealed class Entry
    {
        public long WindowStartTicks;
        public int Failures;
        public int Lockouts;
        public long LockedUntilTicks;
    }
}
