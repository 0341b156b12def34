using System.Globalization;
using System.Text.Json;
using Conveyor.Storage;
using MassTransit;
using Microsoft.AspNetCore.DataProtection;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Tells the worker's own redelivered copies from a sender's claim. Any sender can set
/// <see cref="RedeliveryHeaders.Attempt"/> and <see cref="RedeliveryHeaders.FirstFailureAt"/>, and the
/// copies the dispatcher publishes carry nothing else that a sender could not set as well. So when
/// the worker stores a redelivery it seals those two headers, with the consumer and the business key,
/// in <see cref="Header"/> (ASP.NET Core Data Protection: authenticated encryption under a key ring
/// every worker shares through the database, <c>data_protection_keys</c>, as the Api's replicas do,
/// ADR 0003). A received copy's headers count only when its seal opens and says exactly what they
/// say; otherwise the copy is a first delivery (<see cref="RedeliveryHistory.None"/>): a sender's
/// "4" neither spends the job's redeliveries nor, as "2147483647", overflows the count. A webhook's count of
/// times set aside for its origin's limit (<see cref="RedeliveryHeaders.OriginDeferrals"/>) is sealed the same
/// way, in <see cref="OriginDeferralsHeader"/>, under a purpose of its own, so that neither seal passes for the
/// other: a sender's count would take the delivery past the limit at once. So is a long job's count of times parked
/// behind another worker's lease (<see cref="RedeliveryHeaders.Deferrals"/>), in <see cref="LeaseDeferralsHeader"/>:
/// a sender's count would spend the copy's deferrals, or, negative or at <see cref="int.MaxValue"/>, keep it under
/// its limit for ever.
/// </summary>
public sealed class RedeliverySeal(IDataProtectionProvider dataProtection)
{
    /// <summary>The seal of a redelivered copy's attempt and first failure time.</summary>
    public const string Header = "Conveyor-Redelivery-Seal";

    /// <summary>The worker's data-protection application name (the Api's is <c>conveyor-api</c>).</summary>
    public const string ApplicationName = "conveyor-worker";

    /// <summary>The seal of a set-aside webhook's count of times aside (<see cref="RedeliveryHeaders.OriginDeferrals"/>).</summary>
    public const string OriginDeferralsHeader = "Conveyor-Origin-Deferrals-Seal";

    /// <summary>The seal of a long job's count of times parked behind another worker's lease (<see cref="RedeliveryHeaders.Deferrals"/>).</summary>
    public const string LeaseDeferralsHeader = "Conveyor-Lease-Deferrals-Seal";

    private readonly IDataProtector _protector = dataProtection.CreateProtector("Conveyor.Worker.Redelivery.Headers.v1");

    private readonly IDataProtector _originDeferrals = dataProtection.CreateProtector("Conveyor.Worker.Webhooks.OriginDeferrals.v1");

    private readonly IDataProtector _leaseDeferrals = dataProtection.CreateProtector("Conveyor.Worker.Inbox.LeaseDeferrals.v1");

    /// <summary>The seal for the headers of redelivery number <paramref name="attempt"/> of this job at this consumer.</summary>
    public string Seal(string consumerId, string businessKey, int attempt, string firstFailureAt) =>
        _protector.Protect(Sealed(consumerId, businessKey, attempt.ToString(CultureInfo.InvariantCulture), firstFailureAt));

    /// <summary>
    /// What the received copy's redelivery headers say, if its seal vouches for them: the seal opens
    /// (a key of the shared ring, not tampered with), names this consumer and job, and holds the very
    /// attempt and first failure time the headers carry. A copy moved back from <c>_error</c> has lost
    /// its attempt header, so it starts afresh. Throws when the seal cannot be checked at all: Data
    /// Protection keeps the ring in memory but reads it from the database where it has none, daily, and
    /// for a key it does not know just after starting, and that read failed (Data Protection wraps the
    /// database's error in a <see cref="System.Security.Cryptography.CryptographicException"/>).
    /// </summary>
    public RedeliveryHistory Read(ReceiveContext received, string consumerId, string businessKey)
    {
        var headers = received.TransportHeaders.GetAll().ToList();
        var attempt = RedeliveryHeaders.ReadString(headers, RedeliveryHeaders.Attempt);
        var firstFailureAt = RedeliveryHeaders.ReadString(headers, RedeliveryHeaders.FirstFailureAt);
        if (RedeliveryHeaders.ReadString(headers, Header) is not { Length: > 0 } seal || attempt is null || firstFailureAt is null
            || !int.TryParse(attempt, NumberStyles.None, CultureInfo.InvariantCulture, out var count) || count < 1)
        {
            return RedeliveryHistory.None;
        }

        try
        {
            return string.Equals(_protector.Unprotect(seal), Sealed(consumerId, businessKey, attempt, firstFailureAt), StringComparison.Ordinal)
                ? new RedeliveryHistory(count, firstFailureAt)
                : RedeliveryHistory.None;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException && !DatabaseFailures.IsDatabaseError(exception))
        {
            // Forged, garbled, or sealed with a key this ring does not hold: not ours to count. Not a ring
            // the database could not give: a genuine copy taken for a first delivery would count from 1 again.
            return RedeliveryHistory.None;
        }
    }

    /// <summary>The seal for a copy of this job at this consumer set aside for the <paramref name="deferrals"/>th time.</summary>
    public string SealOriginDeferrals(string consumerId, string businessKey, int deferrals) =>
        _originDeferrals.Protect(Sealed(consumerId, businessKey, deferrals.ToString(CultureInfo.InvariantCulture)));

    /// <summary>
    /// How many times the received copy was set aside for its origin's limit, if its seal vouches for the count
    /// (as <see cref="Read"/> does for the attempt); otherwise 0, as for a delivery never set aside. Copies set
    /// aside before the count was sealed carry none, and start from 0 again. Throws, as <see cref="Read"/> does,
    /// when the key ring cannot be read from the database.
    /// </summary>
    public int ReadOriginDeferrals(ReceiveContext received, string consumerId, string businessKey) =>
        ReadCount(received, RedeliveryHeaders.OriginDeferrals, OriginDeferralsHeader, _originDeferrals, consumerId, businessKey);

    /// <summary>The seal for a copy of this job at this consumer parked behind another worker's lease for the <paramref name="deferrals"/>th time.</summary>
    public string SealLeaseDeferrals(string consumerId, string businessKey, int deferrals) =>
        _leaseDeferrals.Protect(Sealed(consumerId, businessKey, deferrals.ToString(CultureInfo.InvariantCulture)));

    /// <summary>
    /// How many times the received copy was parked behind another worker's lease, if its seal vouches for the count (as
    /// <see cref="ReadOriginDeferrals"/> does); otherwise 0, as for a copy never parked: a sender's count, one that is
    /// no number, negative, or beyond <see cref="int.MaxValue"/>. Copies parked before the count was sealed start from
    /// 0 again. Throws, as <see cref="Read"/> does, when the key ring cannot be read from the database.
    /// </summary>
    public int ReadLeaseDeferrals(ReceiveContext received, string consumerId, string businessKey) =>
        ReadCount(received, RedeliveryHeaders.Deferrals, LeaseDeferralsHeader, _leaseDeferrals, consumerId, businessKey);

    private static int ReadCount(ReceiveContext received, string countHeader, string sealHeader, IDataProtector protector, string consumerId, string businessKey)
    {
        var headers = received.TransportHeaders.GetAll().ToList();
        var deferrals = RedeliveryHeaders.ReadString(headers, countHeader);
        if (RedeliveryHeaders.ReadString(headers, sealHeader) is not { Length: > 0 } seal || deferrals is null
            || !int.TryParse(deferrals, NumberStyles.None, CultureInfo.InvariantCulture, out var count) || count < 1)
        {
            return 0;
        }

        try
        {
            return string.Equals(protector.Unprotect(seal), Sealed(consumerId, businessKey, deferrals), StringComparison.Ordinal) ? count : 0;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException && !DatabaseFailures.IsDatabaseError(exception))
        {
            return 0;
        }
    }

    /// <summary>What a seal holds: its parts as a JSON array of strings (the attempt's four, since its first version).</summary>
    private static string Sealed(params string[] parts) => JsonSerializer.Serialize(parts);
}

/// <summary>
/// A received copy's redelivery history as far as the worker vouches for it (<see cref="RedeliverySeal"/>):
/// how many delayed redeliveries it has had and when its first attempt failed. The redelivery filter
/// keeps it on the receive context, where the error pipe finds it for the <c>_error</c> copy's headers.
/// </summary>
public sealed record RedeliveryHistory(int Attempt, string? FirstFailureAt)
{
    /// <summary>A first delivery, or a copy whose redelivery headers are a sender's own.</summary>
    public static readonly RedeliveryHistory None = new(0, null);
}
