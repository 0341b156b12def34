using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Payments;

/// <summary>
/// The gateway's <c>Idempotency-Key</c> for a charge: the <c>PaymentId</c>, unless the command is a
/// corrected one that took a dead-lettered payment's job over (ADR 0011, amendment); then the
/// <c>PaymentId</c>, a colon and the command's fingerprint in hexadecimal. A gateway keeps what it
/// answered a key (Stripe keeps a decline as it keeps a charge, and refuses a key reused with other
/// parameters), so under the first command's key the corrected one could only get the first one's
/// answer. Every delivery of one command gets the same key, whichever attempt and whichever pod: the
/// key follows from the command and from what the job row says was its first command, which a later
/// takeover keeps (<c>jobs.original_payload_hash</c>).
/// </summary>
public sealed class ChargeIdempotencyKeys(IDbContextFactory<ConveyorDbContext> dbFactory)
{
    public async Task<string> ForAsync(ChargePayment payment, CancellationToken cancellationToken)
    {
        var paymentId = payment.PaymentId.ToString();
        // Read as committed, outside the inbox's transaction: before a takeover commits, the row still
        // holds the first command's fingerprint; after it, the original column does.
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var job = await db.Jobs.AsNoTracking()
            .Where(j => j.Kind == JobKinds.ChargePayment && j.BusinessKey == paymentId)
            .Select(j => new { j.PayloadHash, j.OriginalPayloadHash })
            .FirstOrDefaultAsync(cancellationToken);
        return For(paymentId, job?.OriginalPayloadHash ?? job?.PayloadHash, PayloadFingerprint.Of(payment));
    }

    /// <summary>
    /// The key for a command with <paramref name="fingerprint"/> under a job first created for a
    /// command with <paramref name="first"/>. Without either (a job not written yet, rows from before
    /// fingerprints were kept) the <c>PaymentId</c>, as for every first command.
    /// </summary>
    public static string For(string paymentId, byte[]? first, byte[]? fingerprint) =>
        first is null || fingerprint is null || first.AsSpan().SequenceEqual(fingerprint)
            ? paymentId
            : $"{paymentId}:{Convert.ToHexStringLower(fingerprint)}";
}
