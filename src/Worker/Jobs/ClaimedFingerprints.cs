using MassTransit;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// The fingerprints a delivery's latest inbox claim worked with (ADR 0011): its command's
/// (<see cref="Storage.PayloadFingerprint"/>, computed for the inbox row) and the job's first command's
/// as the claim read the job row under its lock (<c>COALESCE(original_payload_hash, payload_hash)</c>;
/// null when there was no row yet, or one from before fingerprints were kept). A consumer that needs them
/// (<see cref="RemoteIdempotencyKeys"/>) neither queries the row again, a round trip per message outside
/// the inbox's batch, nor serializes and hashes its command a second time. Kept on the receive context
/// like <see cref="ClaimedAttempt"/>; every claim that lets a consumer run sets them. Absent where no claim
/// set them (the lease inbox, a consumer run without an inbox).
/// </summary>
public sealed class ClaimedFingerprints
{
    private byte[]? _command;
    private byte[]? _first;

    public static bool TryGet(ConsumeContext context, out byte[]? command, out byte[]? first)
    {
        if (context.ReceiveContext.TryGetPayload<ClaimedFingerprints>(out var claimed))
        {
            (command, first) = (claimed._command, claimed._first);
            return true;
        }

        (command, first) = (null, null);
        return false;
    }

    public static void Set(ConsumeContext context, byte[]? command, byte[]? first)
    {
        var claimed = context.ReceiveContext.GetOrAddPayload(() => new ClaimedFingerprints());
        (claimed._command, claimed._first) = (command, first);
    }
}
