using Conveyor.Storage;
using MassTransit;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// The <c>Idempotency-Key</c> a job sends to a remote side (the payment gateway, a webhook receiver): the
/// job's business id, unless the command is a corrected one that took a dead-lettered job over (ADR 0011,
/// amendment); then the business id, a colon and the command's fingerprint in hexadecimal. A remote side
/// keeps what it answered a key (Stripe keeps a decline as it keeps a charge, and refuses a key reused
/// with other parameters; a receiver following the IETF Idempotency-Key draft answers 422), so under the
/// first command's key the corrected one could only get the first one's answer. Every delivery of one
/// command gets the same key, whichever attempt and whichever pod: the key follows from the command and
/// from what the job row says was its first command, which a later takeover keeps
/// (<c>jobs.original_payload_hash</c>).
/// </summary>
public sealed class RemoteIdempotencyKeys(IDbContextFactory<ConveyorDbContext> dbFactory)
{
    /// <summary>The key for the command <paramref name="context"/> delivers, the job of <paramref name="kind"/> and <paramref name="businessKey"/>.</summary>
    /// <param name="context">
    /// The delivery; what its inbox claim worked with (<see cref="ClaimedFingerprints"/>) is used when there
    /// is one, else the command is fingerprinted and the job row read here.
    /// </param>
    public async Task<string> ForAsync<T>(ConsumeContext<T> context, string kind, string businessKey)
        where T : class
    {
        if (ClaimedFingerprints.TryGet(context, out var command, out var claimed))
        {
            return For(businessKey, claimed, command);
        }

        // Read as committed, outside any inbox transaction: before a takeover commits, the row still
        // holds the first command's fingerprint; after it, the original column does.
        await using var db = await dbFactory.CreateDbContextAsync(context.CancellationToken);
        var job = await db.Jobs.AsNoTracking()
            .Where(j => j.Kind == kind && j.BusinessKey == businessKey)
            .Select(j => new { j.PayloadHash, j.OriginalPayloadHash })
            .FirstOrDefaultAsync(context.CancellationToken);
        return For(businessKey, job?.OriginalPayloadHash ?? job?.PayloadHash, PayloadFingerprint.Of(context.Message));
    }

    /// <summary>
    /// The key for a command with <paramref name="fingerprint"/> under a job first created for a
    /// command with <paramref name="first"/>. Without either (a job not written yet, rows from before
    /// fingerprints were kept) the business id, as for every first command. A job row holding the
    /// command's legacy fingerprint (written before objects were fingerprinted in name order) is the same
    /// command: a key of its own there would let the remote side apply it twice.
    /// </summary>
    public static string For(string businessKey, byte[]? first, byte[]? fingerprint) =>
        !PayloadFingerprint.Conflicts(first, fingerprint)
            ? businessKey
            : $"{businessKey}:{Convert.ToHexStringLower(fingerprint)}";
}
