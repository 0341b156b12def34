using MassTransit;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// What the job row said, when this delivery's latest inbox claim took it, was its first command
/// (<c>COALESCE(original_payload_hash, payload_hash)</c>, ADR 0011): the claim reads it under the job
/// row's lock, so a consumer that needs it (<see cref="RemoteIdempotencyKeys"/>) does not query the row
/// again on a connection of its own, one more round trip per message outside the inbox's batch. Kept
/// on the receive context like <see cref="ClaimedAttempt"/>; every claim that lets a consumer run sets
/// it (null: no row yet, or one from before fingerprints were kept). Absent where no claim set it (the
/// lease inbox, a consumer run without an inbox), and then the row is read.
/// </summary>
public sealed class FirstCommandFingerprint
{
    private byte[]? _fingerprint;

    public static bool TryGet(ConsumeContext context, out byte[]? fingerprint)
    {
        if (context.ReceiveContext.TryGetPayload<FirstCommandFingerprint>(out var first))
        {
            fingerprint = first._fingerprint;
            return true;
        }

        fingerprint = null;
        return false;
    }

    public static void Set(ConsumeContext context, byte[]? fingerprint) =>
        context.ReceiveContext.GetOrAddPayload(() => new FirstCommandFingerprint())._fingerprint = fingerprint;
}
