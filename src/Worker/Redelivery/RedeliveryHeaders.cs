using System.Collections.Frozen;
using System.Globalization;
using System.Text;
using Conveyor.Worker.Messaging;

namespace Conveyor.Worker.Redelivery;

/// <summary>The transport headers Conveyor adds to redelivered and dead-lettered messages.</summary>
public static class RedeliveryHeaders
{
    /// <summary>How many delayed redeliveries this copy has had (absent = none).</summary>
    public const string Attempt = "Conveyor-Redelivery-Attempt";

    /// <summary>When the first attempt failed, ISO 8601 UTC.</summary>
    public const string FirstFailureAt = "Conveyor-First-Failure-At";

    /// <summary>The error that caused the latest redelivery.</summary>
    public const string LastError = "Conveyor-Last-Error";

    /// <summary>
    /// How many times a long job's copy was parked, in its current attempt, because another worker held its lease. It
    /// counts only with its seal (<see cref="RedeliverySeal.LeaseDeferralsHeader"/>), and a copy parked
    /// <c>MaxLeaseDeferrals</c> times goes to <c>_error</c> the next time it meets a lease. Only a parked copy carries it
    /// on: a retry's stored copy and an error-queue move's start from none.
    /// </summary>
    public const string Deferrals = "Conveyor-Lease-Deferrals";

    /// <summary>
    /// How many times a webhook delivery was set aside, in its current attempt, because its receiver's origin was at
    /// its limit. Only a set-aside copy carries it on: a retry's stored copy and an error-queue move's start from none.
    /// It counts only with its seal (<see cref="RedeliverySeal.OriginDeferralsHeader"/>).
    /// </summary>
    public const string OriginDeferrals = "Conveyor-Origin-Deferrals";

    /// <summary>
    /// The most the worker's own headers (<see cref="IsOwn"/>) take on a copy before they count against
    /// an endpoint's <c>MaxHeaderBytes</c>. All of them together take at most 3,696 bytes
    /// (<c>RedeliveryHeaderBudgetTests</c>): the attempt, the first failure time, the seal (about 290
    /// bytes with a GUID key, 530 with a 200-character one), the last error (500 characters, up to
    /// 1,500 bytes), the endpoint's count of deferrals and its seal (a little less than the attempt's: a long
    /// job's times parked behind another worker's lease, or a webhook's times set aside for its origin's
    /// limit, never both on one copy), a note of dropped headers (1 KiB) and the publish sequence number.
    /// </summary>
    public const int OwnAllowance = 4_096;

    /// <summary>
    /// The most an error-queue move's headers take on a copy it moved back before they count against
    /// an endpoint's <c>MaxHeaderBytes</c>: the fault history (at most
    /// <see cref="Contracts.JobHeaders.MaxFaultHistoryBytes"/>), the queue it came from (a queue name is at
    /// most 255 bytes) and the operation's id, with their table entries. Without it, a command that came
    /// just under the limit was refused for its headers when an operator moved it back, and went
    /// straight back to <c>_error</c>.
    /// </summary>
    public const int MoveAllowance = Contracts.JobHeaders.MaxFaultHistoryBytes + 512;

    /// <summary>
    /// The headers the worker writes on a copy it publishes again (a delayed redelivery, a lease
    /// deferral, a copy trimmed to fit), and the one its AMQP client adds to every publish under
    /// confirms. Matched ignoring case, as they are read.
    /// </summary>
    private static readonly FrozenSet<string> OwnNames = new[]
    {
        Attempt, FirstFailureAt, LastError, Deferrals, RedeliverySeal.LeaseDeferralsHeader, OriginDeferrals, RedeliverySeal.OriginDeferralsHeader, RedeliverySeal.Header, OversizedHeaders.DroppedHeader,
        RabbitMQ.Client.Constants.PublishSequenceNumberHeader,
    }.ToFrozenSet(StringComparer.OrdinalIgnoreCase);

    /// <summary>The headers an error-queue move writes on the copy it moves back (see <see cref="MoveAllowance"/>).</summary>
    private static readonly FrozenSet<string> MoveNames = new[]
    {
        Contracts.JobHeaders.FaultHistory, Contracts.JobHeaders.MovedFrom, Contracts.JobHeaders.MovedByOperation,
    }.ToFrozenSet(StringComparer.OrdinalIgnoreCase);

    // Broker bookkeeping, the last publisher's client bookkeeping and fault details that must not travel
    // with a fresh copy (the dispatcher's client sets a sequence number of its own).
    private static readonly string[] StrippedPrefixes =
    [
        "x-death", "x-first-death", "x-last-death", "x-delivery-count", RabbitMQ.Client.Constants.PublishSequenceNumberHeader,
        "MT-Fault-", "MT-Reason", "MT-Redelivery-Count",
    ];

    /// <summary>True for a header the worker itself writes on the copies it publishes again (see <see cref="OwnAllowance"/>).</summary>
    public static bool IsOwn(string name) => OwnNames.Contains(name);

    /// <summary>True for a header an error-queue move writes on the copy it moves back (see <see cref="MoveAllowance"/>).</summary>
    public static bool IsMove(string name) => MoveNames.Contains(name);

    /// <summary>
    /// What a header table takes as measured against an endpoint's <c>MaxHeaderBytes</c>: every entry,
    /// less the worker's own (<see cref="IsOwn"/>) up to <see cref="OwnAllowance"/> and an error-queue
    /// move's up to <see cref="MoveAllowance"/>. A copy the worker
    /// publishes again carries what the sender sent plus the worker's bookkeeping, and must be measured
    /// as the sender's message was, or a command that came just under the limit comes back over it and
    /// is refused instead of retried; so must a copy an operator moved back. Anyone can send headers under
    /// those names, so they are left out only up to the allowances: a sender gains at most their sum, and
    /// the limit keeps bounding what reaches a consumer.
    /// </summary>
    public static long CountedBytes<TValue>(IEnumerable<KeyValuePair<string, TValue>>? headers)
    {
        long own = 0;
        long moved = 0;
        long theirs = 0;
        foreach (var (name, value) in headers ?? [])
        {
            var bytes = AmqpFrame.EntryBytes(name, value);
            if (IsOwn(name))
            {
                own += bytes;
            }
            else if (IsMove(name))
            {
                moved += bytes;
            }
            else
            {
                theirs += bytes;
            }
        }

        return theirs + Math.Max(0, own - OwnAllowance) + Math.Max(0, moved - MoveAllowance);
    }

    public static string? ReadString(IEnumerable<KeyValuePair<string, object>> headers, string name)
    {
        foreach (var (key, value) in headers)
        {
            if (string.Equals(key, name, StringComparison.OrdinalIgnoreCase))
            {
                return AsText(value);
            }
        }

        return null;
    }

    /// <summary>
    /// The headers worth storing with a copy to publish later: strings only, broker headers removed.
    /// NUL characters are dropped from names and values: PostgreSQL's <c>jsonb</c> refuses them, and a
    /// header a producer filled with them must not make the message impossible to store (it would be
    /// dead-lettered for a transient failure).
    /// </summary>
    public static Dictionary<string, string> ForStorage<TValue>(IEnumerable<KeyValuePair<string, TValue>> headers)
    {
        var kept = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in headers)
        {
            if (StrippedPrefixes.Any(prefix => key.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)))
            {
                continue;
            }

            if (AsText(value) is { } text && WithoutNul(key) is { Length: > 0 } name)
            {
                kept[name] = WithoutNul(text);
            }
        }

        return kept;
    }

    private static string WithoutNul(string text) => text.Replace("\0", "", StringComparison.Ordinal);

    private static string? AsText(object? value) => value switch
    {
        null => null,
        string text => text,
        byte[] bytes => Encoding.UTF8.GetString(bytes),
        ReadOnlyMemory<byte> memory => Encoding.UTF8.GetString(memory.Span),
        DateTime time => time.ToUniversalTime().ToString("O", CultureInfo.InvariantCulture),
        DateTimeOffset time => time.ToUniversalTime().ToString("O", CultureInfo.InvariantCulture),
        IFormattable formattable => formattable.ToString(null, CultureInfo.InvariantCulture),
        System.Collections.IEnumerable => null,
        _ => value.ToString(),
    };
}
