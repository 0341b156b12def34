using System.Buffers.Binary;
using System.Diagnostics.Metrics;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Conveyor.Storage;
using Conveyor.Worker.Jobs;
using Npgsql;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// An origin's webhook slots across every worker: slot <c>n</c> of an origin is a PostgreSQL session-level
/// advisory lock, held by the worker delivering in it for as long as the delivery runs. Each worker holds its
/// slots on one connection of its own (<see cref="LockSessions"/>), so a worker that dies or loses its
/// database gives its slots back with its session. Takes and releases queue up for that session and go out
/// together, one round trip for all that arrived while the last one ran.
/// <para>
/// The limit must never stop webhooks: when the session cannot be opened or does not answer within
/// <see cref="AnswerTimeout"/>, a take answers <see cref="OriginLease.Unknown"/> and the delivery goes ahead
/// under this worker's own limit (<see cref="WebhookOriginSlots"/>); the session is opened again
/// <see cref="ReopenAfter"/> after it failed (and then every <see cref="ReopenAfter"/> until it opens), by
/// the next take or, with none, by the worker itself. Operators see it (meter <c>Conveyor.Worker</c>): the
/// counter <c>conveyor.webhooks.admitted_locally</c> (tag <c>reason</c>, <see cref="OriginSlotsUnread"/>)
/// counts the takes answered so, and the gauge <c>conveyor.webhooks.origin_session.up</c> reads 0 from a
/// failure of the session until it is open again.
/// </para>
/// <para>
/// A lock key is one <c>bigint</c> (<c>pg_try_advisory_lock(bigint)</c>): from the top, the class byte
/// <see cref="LockClass"/> ("W"), <see cref="HashBits"/> bits of the origin's SHA-256 and <see cref="SlotBits"/> bits
/// of slot number. PostgreSQL keeps the one-<c>bigint</c> keys apart from the two-<c>int</c> keys of every other
/// advisory lock in Conveyor (the classes "CJKY", "CDSS", "CJID", "CQOP"; <c>pg_locks.objsubid</c> 1, not
/// 2), and the class byte keeps them apart from any other one-<c>bigint</c> key that does not start with it. Two
/// origins share slots only if 46 bits of their hashes agree: among 10,000 origins, a chance of about one in a
/// million that any two do (the 22 bits of the earlier two-<c>int</c> key made it likely among a few thousand).
/// </para>
/// </summary>
public sealed partial class WebhookOriginLeases : IAsyncDisposable
{
    /// <summary>Top byte of every lock key ("W"), so these locks cannot collide with another one-<c>bigint</c> advisory lock.</summary>
    internal const long LockClass = 0x57L << 56;

    /// <summary>Bits of an origin's hash in its lock keys, between the class byte and the slot number.</summary>
    internal const int HashBits = 64 - 8 - SlotBits;

    /// <summary>Low bits of a lock key that number the slot: <see cref="WebhookOptions.MaxConcurrentPerOrigin"/> is at most 1,000.</summary>
    internal const int SlotBits = 10;

    /// <summary>Counter of the takes answered <see cref="OriginLeaseState.Unknown"/>: deliveries that went by this worker's own count.</summary>
    public const string AdmittedLocallyInstrument = "conveyor.webhooks.admitted_locally";

    /// <summary>Gauge: 1, or 0 while the session that holds the slots is down.</summary>
    public const string SessionUpInstrument = "conveyor.webhooks.origin_session.up";

    /// <summary>The longest a delivery waits for its slot before it goes ahead under this worker's limit alone.</summary>
    public static readonly TimeSpan AnswerTimeout = TimeSpan.FromSeconds(5);

    /// <summary>How long after the session failed the next take tries to open another.</summary>
    public static readonly TimeSpan ReopenAfter = TimeSpan.FromSeconds(5);

    private readonly string _connectionString;
    private readonly TimeProvider _time;
    private readonly ILogger<WebhookOriginLeases> _logger;
    private readonly Counter<long> _admittedLocally;
    private readonly Channel<Request> _requests = Channel.CreateUnbounded<Request>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _stopping = new();
    private readonly Lock _startLock = new();
    private Task? _loop;

    // Touched by the loop only.
    private readonly Dictionary<long, HashSet<int>> _held = [];
    private NpgsqlConnection? _session;
    private long _generation;
    private DateTimeOffset _failedAt = DateTimeOffset.MinValue;

    // Written by the loop, read by the gauge: from a failure of the session until one is open again.
    private volatile bool _down;

    public WebhookOriginLeases(IConfiguration configuration, IMeterFactory meters, TimeProvider time, ILogger<WebhookOriginLeases> logger)
        : this(StorageServiceCollectionExtensions.ConnectionString(configuration), meters, time, logger)
    {
    }

    internal WebhookOriginLeases(string connectionString, IMeterFactory meters, TimeProvider time, ILogger<WebhookOriginLeases> logger)
    {
        _connectionString = LockSessions.ConnectionString(connectionString, "conveyor-worker-webhook-origins");
        _time = time;
        _logger = logger;
        var meter = meters.Create(JobMetrics.MeterName);
        _admittedLocally = meter.CreateCounter<long>(AdmittedLocallyInstrument, "{delivery}",
            "Webhook deliveries admitted by this worker's own count of their origin's deliveries because the slots the workers share could not be read (tag reason)");
        meter.CreateObservableGauge(SessionUpInstrument, () => _down ? 0 : 1, "{session}",
            "1 while the database session holding this worker's webhook origin slots is open or not yet needed; 0 from its failure until it is open again (the origin limit is then this worker's own)");
    }

    /// <summary>
    /// A slot of <paramref name="origin"/> among <paramref name="limit"/>, if one is free across the workers
    /// (<see cref="OriginLease.Full"/> if not); <see cref="OriginLease.Unknown"/> when the database cannot say
    /// within <see cref="AnswerTimeout"/>, counted in <see cref="AdmittedLocallyInstrument"/> (its caller, the
    /// filter, then admits the delivery by this worker's count). A taken slot is given back with <see cref="Release"/>.
    /// </summary>
    public async Task<OriginLease> TryTakeAsync(string origin, int limit)
    {
        var lease = await AskAsync(origin, limit);
        if (lease.State == OriginLeaseState.Unknown)
        {
            _admittedLocally.Add(1, new KeyValuePair<string, object?>("reason", lease.UnknownBecause));
        }

        return lease;
    }

    /// <summary>Gives back a slot <see cref="TryTakeAsync"/> took (nothing for a lease that holds none); does not wait.</summary>
    public void Release(OriginLease lease)
    {
        if (lease.Holds)
        {
            _requests.Writer.TryWrite(new Give(lease.KeyBase, lease.Slot, lease.Generation));
        }
    }

    public async ValueTask DisposeAsync()
    {
        _requests.Writer.TryComplete();
        await _stopping.CancelAsync();
        if (_loop is not null)
        {
            await _loop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        await CloseAsync();
        _stopping.Dispose();
    }

    /// <summary>The take itself: the loop's answer, or <see cref="OriginSlotsUnread.Timeout"/> when it does not come in time.</summary>
    private async Task<OriginLease> AskAsync(string origin, int limit)
    {
        EnsureStarted();
        var take = new Take(KeyBaseOf(origin), Math.Clamp(limit, 1, 1 << SlotBits));
        if (!_requests.Writer.TryWrite(take))
        {
            return OriginLease.Unknown(OriginSlotsUnread.Stopping);
        }

        try
        {
            return await take.Answer.Task.WaitAsync(AnswerTimeout);
        }
        catch (TimeoutException)
        {
            // Whoever sets the answer first wins: a slot the loop takes after this is given back by the loop.
            var unknown = OriginLease.Unknown(OriginSlotsUnread.Timeout);
            return take.Answer.TrySetResult(unknown) ? unknown : await take.Answer.Task;
        }
    }

    /// <summary>An origin's lock key for slot 0: its class byte and hash; the slot number fills the low <see cref="SlotBits"/>.</summary>
    internal static long KeyBaseOf(string origin) =>
        LockClass | (long)(BinaryPrimitives.ReadUInt64BigEndian(SHA256.HashData(Encoding.UTF8.GetBytes(origin))) >> (64 - HashBits) << SlotBits);

    private void EnsureStarted()
    {
        if (_loop is not null)
        {
            return;
        }

        lock (_startLock)
        {
            _loop ??= Task.Run(RunAsync);
        }
    }

    private async Task RunAsync()
    {
        var pending = new List<Request>();
        Task<bool>? arrival = null;
        try
        {
            while (true)
            {
                _stopping.Token.ThrowIfCancellationRequested();
                arrival ??= _requests.Reader.WaitToReadAsync(_stopping.Token).AsTask();
                if (!arrival.IsCompleted && _down)
                {
                    // Down and nothing asked: opened again once the pause is over all the same, so that the gauge
                    // says when the limit is shared again (a worker without webhooks would otherwise read 0 for good).
                    var pause = _failedAt + ReopenAfter - _time.GetUtcNow();
                    if (pause > TimeSpan.Zero)
                    {
                        await Task.WhenAny(arrival, Task.Delay(pause, _time, _stopping.Token));
                    }
                    else
                    {
                        await ReopenAsync();
                    }

                    continue;
                }

                if (!await arrival)
                {
                    break;
                }

                arrival = null;
                while (pending.Count < 512 && _requests.Reader.TryRead(out var request))
                {
                    pending.Add(request);
                }

                await RunRoundAsync(pending);
                pending.Clear();
            }
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
        }
        finally
        {
            Answer(pending.OfType<Take>(), OriginLease.Unknown(OriginSlotsUnread.Stopping));
        }
    }

    /// <summary>Opens the session while no round asks for it (<see cref="RunAsync"/>); a failure is noted as a round's is.</summary>
    private async Task ReopenAsync()
    {
        try
        {
            _session = await OpenAsync();
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            await FailedAsync(exception);
        }
    }

    /// <summary>One round trip: the releases first, then as many slots of each origin as were asked for.</summary>
    private async Task RunRoundAsync(List<Request> requests)
    {
        var gives = requests.OfType<Give>().Where(g => g.Generation == _generation).ToList();
        var takes = requests.OfType<Take>().Where(t => !t.Answer.Task.IsCompleted).GroupBy(t => t.KeyBase).ToList();
        if (gives.Count == 0 && takes.Count == 0)
        {
            return;
        }

        if (_session is null && _time.GetUtcNow() - _failedAt < ReopenAfter)
        {
            // Gives are of the session that failed (it took its locks with it). Opened again only after a pause.
            Answer(takes.SelectMany(t => t), OriginLease.Unknown(OriginSlotsUnread.SessionDown));
            return;
        }

        try
        {
            _session ??= await OpenAsync();
            await using var batch = new NpgsqlBatch(_session);
            foreach (var give in gives)
            {
                if (_held.TryGetValue(give.KeyBase, out var slots) && slots.Remove(give.Slot) && slots.Count == 0)
                {
                    _held.Remove(give.KeyBase);
                }
            }

            if (gives.Count > 0)
            {
                batch.BatchCommands.Add(new NpgsqlBatchCommand("SELECT pg_advisory_unlock(k) FROM unnest($1::bigint[]) AS k")
                {
                    Parameters = { new NpgsqlParameter<long[]> { TypedValue = [.. gives.Select(g => g.KeyBase | (long)g.Slot)] } },
                });
            }

            foreach (var origin in takes)
            {
                // A session takes a lock it holds again (counted: one unlock would then leave it held), so the slots
                // this worker holds are skipped, before the lock is tried: a CASE, since the planner may order the
                // parts of an AND as it likes. LIMIT stops the scan once enough were taken.
                batch.BatchCommands.Add(new NpgsqlBatchCommand("""
                    SELECT s FROM generate_series(0, $2 - 1) AS s
                     WHERE CASE WHEN s = ANY($3::int[]) THEN false ELSE pg_try_advisory_lock($1 | s::bigint) END
                     LIMIT $4
                    """)
                {
                    Parameters =
                    {
                        new NpgsqlParameter<long> { TypedValue = origin.Key },
                        new NpgsqlParameter<int> { TypedValue = origin.Max(t => t.Limit) },
                        new NpgsqlParameter<int[]> { TypedValue = [.. _held.GetValueOrDefault(origin.Key) ?? []] },
                        new NpgsqlParameter<int> { TypedValue = origin.Count() },
                    },
                });
            }

            // Not given Npgsql's cancellation (it waits for the server to answer the cancel): a round that does not
            // end in time is left, and its session closed, which ends whatever it was doing.
            var taken = await ReadSlotsAsync(batch, gives.Count > 0, takes.Count).WaitAsync(AnswerTimeout);
            for (var i = 0; i < takes.Count; i++)
            {
                HandOut(takes[i], taken[i]);
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            await FailedAsync(exception);
            Answer(takes.SelectMany(t => t), OriginLease.Unknown(exception is TimeoutException ? OriginSlotsUnread.Timeout : OriginSlotsUnread.SessionDown));
        }
    }

    /// <summary>
    /// The session failed, or could not be opened: closed, and down until <see cref="ReopenAfter"/> has passed. Logged
    /// as a warning once per outage (each later try to open it, at debug level), and when it is back.
    /// </summary>
    private async Task FailedAsync(Exception exception)
    {
        if (_down)
        {
            LogReopenFailed(_logger, exception);
        }
        else
        {
            LogSessionLost(_logger, exception);
        }

        await CloseAsync();
        _failedAt = _time.GetUtcNow();
        _down = true;
    }

    /// <summary>Runs a round's <paramref name="batch"/>: past the releases' result, then each origin's slots taken.</summary>
    private static async Task<List<List<int>>> ReadSlotsAsync(NpgsqlBatch batch, bool releases, int origins)
    {
        var taken = new List<List<int>>(origins);
        await using var reader = await batch.ExecuteReaderAsync();
        if (releases)
        {
            await reader.NextResultAsync();
        }

        for (var i = 0; i < origins; i++)
        {
            var slots = new List<int>();
            while (await reader.ReadAsync())
            {
                slots.Add(reader.GetInt32(0));
            }

            taken.Add(slots);
            await reader.NextResultAsync();
        }

        return taken;
    }

    /// <summary>The slots taken go to the takes in their order, the rest answer Full; a slot whose taker gave up waiting is given back.</summary>
    private void HandOut(IGrouping<long, Take> origin, List<int> slots)
    {
        var held = _held.TryGetValue(origin.Key, out var set) ? set : _held[origin.Key] = [];
        var next = 0;
        foreach (var take in origin)
        {
            if (next == slots.Count)
            {
                take.Answer.TrySetResult(OriginLease.Full);
                continue;
            }

            var slot = slots[next++];
            held.Add(slot);
            if (!take.Answer.TrySetResult(new OriginLease(OriginLeaseState.Taken, origin.Key, slot, _generation)))
            {
                _requests.Writer.TryWrite(new Give(origin.Key, slot, _generation));
            }
        }

        for (; next < slots.Count; next++)
        {
            // More taken than asked for cannot happen (LIMIT); given back all the same if it ever does.
            held.Add(slots[next]);
            _requests.Writer.TryWrite(new Give(origin.Key, slots[next], _generation));
        }

        if (held.Count == 0)
        {
            _held.Remove(origin.Key);
        }
    }

    private async Task<NpgsqlConnection> OpenAsync()
    {
        var connection = new NpgsqlConnection(_connectionString);
        try
        {
            await connection.OpenAsync().WaitAsync(AnswerTimeout);
            if (_down)
            {
                _down = false;
                LogSessionBack(_logger);
            }

            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    /// <summary>Ends the session (and so every slot it holds) and forgets them; releases queued for it are dropped.</summary>
    private async Task CloseAsync()
    {
        var session = _session;
        _session = null;
        _held.Clear();
        _generation++;
        if (session is not null)
        {
            // Not awaited without bound: a session whose server does not answer is dropped all the same.
            await session.DisposeAsync().AsTask().WaitAsync(AnswerTimeout).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    private static void Answer(IEnumerable<Take> takes, OriginLease answer)
    {
        foreach (var take in takes)
        {
            take.Answer.TrySetResult(answer);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Webhook origin slots: the database session holding them failed; deliveries count against this worker's own limit until it is back")]
    private static partial void LogSessionLost(ILogger logger, Exception exception);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Webhook origin slots: the database session holding them could not be opened again; deliveries still count against this worker's own limit")]
    private static partial void LogReopenFailed(ILogger logger, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "Webhook origin slots: the database session holding them is open again; the limit holds across workers")]
    private static partial void LogSessionBack(ILogger logger);

    private abstract record Request;

    private sealed record Take(long KeyBase, int Limit) : Request
    {
        public TaskCompletionSource<OriginLease> Answer { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private sealed record Give(long KeyBase, int Slot, long Generation) : Request;
}

/// <summary>What <see cref="WebhookOriginLeases.TryTakeAsync"/> answered.</summary>
public enum OriginLeaseState
{
    /// <summary>The database could not say: the delivery goes by this worker's own limit.</summary>
    Unknown,

    /// <summary>Every slot of the origin is held, by this worker or others.</summary>
    Full,

    /// <summary>A slot is held for the delivery.</summary>
    Taken,
}

/// <summary>
/// A slot of an origin across the workers, or why there is none (<see cref="State"/>; for
/// <see cref="OriginLeaseState.Unknown"/>, also <see cref="UnknownBecause"/>, one of <see cref="OriginSlotsUnread"/>).
/// </summary>
public readonly record struct OriginLease(OriginLeaseState State, long KeyBase, int Slot, long Generation, string? UnknownBecause = null)
{
    public static readonly OriginLease Full = new(OriginLeaseState.Full, 0, 0, 0);

    /// <summary>The database could not say, for <paramref name="reason"/> (<see cref="OriginSlotsUnread"/>).</summary>
    public static OriginLease Unknown(string reason) => new(OriginLeaseState.Unknown, 0, 0, 0, reason);

    /// <summary>Whether a slot is held, to be given back.</summary>
    public bool Holds => State == OriginLeaseState.Taken;
}

/// <summary>Why the slots the workers share could not be read: the <c>reason</c> tag of <c>conveyor.webhooks.admitted_locally</c>.</summary>
public static class OriginSlotsUnread
{
    /// <summary>The database did not answer within <see cref="WebhookOriginLeases.AnswerTimeout"/> (slow, or out of reach).</summary>
    public const string Timeout = "timeout";

    /// <summary>The session failed (ended by the server, refused, not opened) or waits out <see cref="WebhookOriginLeases.ReopenAfter"/> before it is opened again.</summary>
    public const string SessionDown = "session_down";

    /// <summary>The worker is stopping.</summary>
    public const string Stopping = "stopping";
}
